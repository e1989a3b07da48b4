"""MAP-3: substr and stacked entries rewrite every occurrence (``str.replace`` without ``count=1``).

A rename ``x -> y`` on ``x.x.x`` gives ``y.y.y``; with fused-shard renames this is how names get
mangled (vllm#32199: ``layers.3.self_attn.qkqkv_proj.k_scale``, field bug B3).
"""

from loadspec.reference.mapper import STAGES, WeightsMapper
from mutants._mappers import MapperMutant, single_stage


class ReplaceAllMapper(WeightsMapper):
    def map_name_with_shard(self, name):
        shard_id = None
        for stage in STAGES:
            if stage in ("substr", "stacked"):
                for old, new in getattr(self, stage).items():
                    if old not in name:
                        continue
                    if stage == "stacked":
                        new, shard_id = new
                    elif new is None:
                        return None
                    name = name.replace(old, new)
                continue
            mapped = single_stage(self, stage).map_name_with_shard(name)
            if mapped is None:
                return None
            name = mapped[0]
        return name, shard_id


class ReplaceAllAdapter(MapperMutant):
    name = report_id = "mutant-replace-all"
    targets = ("MAP-3",)
    suite = ("test_map.py",)
    mapper_class = ReplaceAllMapper
