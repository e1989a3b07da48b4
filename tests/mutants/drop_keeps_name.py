"""MAP-4: ``apply`` treats a dropped name like an unmapped one and yields the weight under its original name.

The idiom ``new = mapper.map_name(name) or name`` conflates "no entry matched" with "an entry mapped it
to None", so a weight the mapper drops is loaded anyway.
"""

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant


class DropKeepsNameMapper(WeightsMapper):
    def apply(self, weights):
        for name, tensor in weights:
            mapped = self.map_name_with_shard(name) or (name, None)
            yield mapped[0], tensor, mapped[1]


class DropKeepsNameAdapter(MapperMutant):
    name = report_id = "mutant-drop-keeps-name"
    targets = ("MAP-4",)
    suite = ("test_map.py",)
    mapper_class = DropKeepsNameMapper
