"""HEADS-8: with fewer KV heads than ranks, rank r takes KV head r % num_kv_heads instead of r // replicas."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class TpModuloReplicasAdapter(ReferenceAdapter):
    name = report_id = "mutant-tp-modulo-replicas"
    targets = ("HEADS-8",)
    suite = ("test_heads.py",)

    def slice_head_scales(self, scale, *, kind, total_heads, total_kv_heads, tp_rank, tp_size):
        if total_kv_heads < tp_size:
            tp_rank, tp_size = tp_rank % total_kv_heads, total_kv_heads  # the replica's head, the wrong way
        return super().slice_head_scales(scale, kind=kind, total_heads=total_heads, total_kv_heads=total_kv_heads,
                                         tp_rank=tp_rank, tp_size=tp_size)
