"""MAP-5: ``a | b`` lets the left operand win on an equal key."""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class LeftWinsAdapter(ReferenceAdapter):
    name = report_id = "mutant-left-wins"
    targets = ("MAP-5",)
    suite = ("test_map.py",)

    def compose_mappers(self, left, right):
        return right | left
