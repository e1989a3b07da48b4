"""LOAD-19: the duplicate check knows a name given twice but not a tied model's two names of one tensor, so a
checkpoint carrying lm_head.weight beside embed_tokens.weight loads with the one that comes last (the result
depends on file order; the reference before c04c42c, and vLLM for a model that does not skip 'lm_head.')."""

from loadspec.reference.auto_loader import AutoWeightsLoader
from mutants._base import ScopedPatchMutant

_plan = AutoWeightsLoader.plan


def _plan_lm_head_apart(self, weights, *, mapper=None, guard=None):
    weights = list(weights)
    heads = [i for i, (name, _) in enumerate(weights) if name.endswith("lm_head.weight")]
    rest = _plan(self, [w for i, w in enumerate(weights) if i not in heads], mapper=mapper, guard=guard)
    at = {name: i for i, (name, _) in enumerate(weights)}
    for i in heads:  # each lm_head planned on its own, written at its place in the file order
        position = sum(1 for load in rest if at[load.source] < i)
        rest[position:position] = _plan(self, [weights[i]], mapper=mapper, guard=guard)
    return rest


class TiedFileOrderAdapter(ScopedPatchMutant):
    name = report_id = "mutant-tied-file-order"
    targets = ("LOAD-19",)
    suite = ("test_load.py",)
    patches = ((AutoWeightsLoader, "plan", _plan_lm_head_apart),)
