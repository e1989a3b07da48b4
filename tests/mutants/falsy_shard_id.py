"""MAP-11: shard id 0 is lost: the mapper keeps a stacked entry's shard id with ``shard_id or None``.

``gate_proj -> gate_up_proj`` carries shard 0, which is falsy: the fused loader then gets no shard id
and loads the gate shard as the whole parameter (or rejects it).
"""

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant


class FalsyShardMapper(WeightsMapper):
    def map_name_with_shard(self, name):
        mapped = super().map_name_with_shard(name)
        return None if mapped is None else (mapped[0], mapped[1] or None)


class FalsyShardIdAdapter(MapperMutant):
    name = report_id = "mutant-falsy-shard-id"
    targets = ("MAP-11",)
    suite = ("test_map.py",)
    mapper_class = FalsyShardMapper
