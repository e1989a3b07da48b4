"""MAP-7: ``a | b`` returns ``a`` when ``b`` adds nothing, but "nothing" ignores the stacked stage.

``__or__`` starts with ``if not other: return self``, and ``__bool__`` was not updated when the stacked
stage was added (vllm#44589 added ``orig_to_new_stacked``): it checks regex, substr, prefix and suffix
only. A mapper holding only stacked (fused-shard) entries vanishes from ``a | b`` yet survives in
``b | c``, so ``(a | b) | c`` and ``a | (b | c)`` map names differently.
"""

from loadspec.reference.mapper import WeightsMapper
from mutants._mappers import MapperMutant, stages_of


def counted(mapper: WeightsMapper) -> bool:
    return any(getattr(mapper, stage) for stage in ("regex", "substr", "prefix", "suffix"))


class FalsyOperandShortcutAdapter(MapperMutant):
    name = report_id = "mutant-falsy-operand-shortcut"
    targets = ("MAP-7",)
    suite = ("test_map.py",)

    def compose_mappers(self, left, right):
        if not counted(right):
            return left
        return self.mapper_class(**stages_of(left | right))
