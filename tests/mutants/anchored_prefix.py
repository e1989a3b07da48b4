"""NAMES-13: the cache-scale rules are anchored at ``^model.layers.N.``.

Written for a plain Llama checkpoint, they miss the same names under a wrapper prefix
(``language_model.model.layers.N.`` of a VLM, ``model.decoder.layers.N.``): the scales of
multimodal and encoder-decoder checkpoints are never mapped.
"""

import re

from loadspec.reference.mapper import WeightsMapper
from mutants._base import CACHE_SCALE_MAPPER, CacheScaleMapperMutant


def shifted(replacement: str) -> str:
    """``replacement`` with every backreference moved up one group (the anchor is group 1)."""
    return re.sub(r"\\(\d)", lambda m: "\\" + str(int(m.group(1)) + 1), replacement)


ANCHORED = WeightsMapper(regex={re.compile(r"^(model\.layers\.\d+)" + p.pattern): r"\1" + shifted(v)
                                for p, v in CACHE_SCALE_MAPPER.regex.items()})


class AnchoredPrefixAdapter(CacheScaleMapperMutant):
    name = report_id = "mutant-anchored-prefix"
    targets = ("NAMES-13",)
    suite = ("test_names.py",)

    @staticmethod
    def mapper_for(quant_method):
        return ANCHORED
