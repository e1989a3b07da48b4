"""MAP-2: within a stage only the first matching entry applies (a remap loop that returns on its first hit).

Hand-written remaps such as SGLang's ``maybe_remap_kv_scale_name`` return after the first rule that
matches; a mapper built that way never lets a later entry see an earlier one's result.
"""

from loadspec.reference.mapper import STAGES, WeightsMapper
from mutants._mappers import MapperMutant, single_entry


class FirstMatchMapper(WeightsMapper):
    def map_name_with_shard(self, name):
        shard_id = None
        for stage in STAGES:
            for key, value in getattr(self, stage).items():
                entry = single_entry(stage, key, value)
                mapped = entry.map_name_with_shard(name)
                if mapped is None:
                    return None
                if mapped[0] != name or mapped[1] is not None:
                    name, shard_id = mapped[0], mapped[1] if mapped[1] is not None else shard_id
                    break
        return name, shard_id


class FirstMatchOnlyAdapter(MapperMutant):
    name = report_id = "mutant-first-match-only"
    targets = ("MAP-2",)
    suite = ("test_map.py",)
    mapper_class = FirstMatchMapper
