"""MAP-1: the stacked (fused-shard) renames run before the regex and substr stages.

The fused-shard rename ``k_proj -> qkv_proj`` applied before the KV-scale remap turns
``k_proj.k_scale`` into ``qkv_proj.k_scale`` (sglang#20870, vllm#32199 "qkqkv_proj": field bugs B3, B4).
"""

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant, single_stage

ORDER = ("stacked", "regex", "substr", "prefix", "suffix")


class StackedFirstMapper(WeightsMapper):
    def map_name_with_shard(self, name):
        shard_id = None
        for stage in ORDER:
            mapped = single_stage(self, stage).map_name_with_shard(name)
            if mapped is None:
                return None
            name, shard = mapped
            shard_id = shard if shard is not None else shard_id
        return name, shard_id


class StackedFirstAdapter(MapperMutant):
    name = report_id = "mutant-stacked-first"
    targets = ("MAP-1",)
    suite = ("test_map.py",)
    mapper_class = StackedFirstMapper
