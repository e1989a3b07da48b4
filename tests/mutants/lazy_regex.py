"""MAP-9: a mapper keeps its regex entries as strings and compiles them only when a name is mapped (vLLM).

vLLM's ``WeightsMapper`` calls ``re.sub(pattern, ...)`` per name, so a pattern that does not compile is
accepted when the mapper is built and fails on the first weight it maps.
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant


class LazyRegexMapper(WeightsMapper):
    def __init__(self, **entries):
        regex = dict(entries.pop("regex", None) or {})
        compiles = {}
        for pattern, new in regex.items():
            try:
                re.compile(pattern)
            except re.error:
                continue  # kept aside: it fails when a name is mapped
            compiles[pattern] = new
        super().__init__(regex=compiles, **entries)
        object.__setattr__(self, "uncompiled", [p for p in regex if p not in compiles])

    def map_name_with_shard(self, name):
        for pattern in self.uncompiled:
            re.compile(pattern)  # raises re.error now, not when the mapper was built
        return super().map_name_with_shard(name)


class LazyRegexAdapter(MapperMutant):
    name = report_id = "mutant-lazy-regex"
    targets = ("MAP-9",)
    suite = ("test_map.py",)
    mapper_class = LazyRegexMapper
