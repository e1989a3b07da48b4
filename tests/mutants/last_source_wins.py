"""LOAD-14: the automatic loader plans each weight on its own, so a second source for a parameter silently wins."""

from loadspec.reference.auto_loader import AutoWeightsLoader
from mutants._patched import PatchedAdapter

_plan = AutoWeightsLoader.plan


def _plan_each(self, weights, *, mapper=None, guard=None):
    return [load for weight in weights for load in _plan(self, [weight], mapper=mapper, guard=guard)]


class LastSourceWinsAdapter(PatchedAdapter):
    name = report_id = "mutant-last-source-wins"
    targets = ("LOAD-14",)
    suite = ("test_load.py",)
    patches = ((AutoWeightsLoader, "plan", _plan_each),)
