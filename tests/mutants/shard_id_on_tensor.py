"""MAP-10: applying a mapper sets ``shard_id`` on the caller's tensor (vLLM's ``WeightsMapper.apply``).

A tensor reused under another name (tied weights, a trainer's cached buffer) then carries a stale shard id.
"""

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant


class TaggingMapper(WeightsMapper):
    def apply(self, weights):
        for name, tensor, shard_id in super().apply(weights):
            tensor.shard_id = shard_id
            yield name, tensor, shard_id


class ShardIdOnTensorAdapter(MapperMutant):
    name = report_id = "mutant-shard-id-on-tensor"
    targets = ("MAP-10",)
    suite = ("test_map.py",)
    mapper_class = TaggingMapper
