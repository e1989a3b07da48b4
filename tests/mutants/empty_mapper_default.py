"""MAP-6: an empty mapper falls back to the engine's default mapper (``mapper or default``), so it renames names.

An empty ``WeightsMapper`` is falsy; a loader written as ``mapper = mapper or DEFAULT_MAPPER`` applies the
default cache-scale remap (``self_attn.k_scale -> self_attn.attn.k_scale``) where no mapping was asked for.
"""

from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant


class DefaultingMapper(WeightsMapper):
    def map_name_with_shard(self, name):
        return super().map_name_with_shard(name) if self else cache_scale_mapper().map_name_with_shard(name)


class EmptyMapperDefaultAdapter(MapperMutant):
    name = report_id = "mutant-empty-mapper-default"
    targets = ("MAP-6",)
    suite = ("test_map.py",)
    mapper_class = DefaultingMapper
