"""E2E-1, E2E-3: every KV-cache k/v scale the loader receives is divided by 16 before it is loaded.

One bug, on every loading path (first load, reload, reload sessions): a checkpoint tensor
whose name the cache-scale mapper maps to ``<container>.attn.k_scale`` or ``.attn.v_scale``
(any producer's layout, the legacy fused ``kv_scale`` included) is loaded as ``tensor / 16``.
K and V then saturate at +-448 in an FP8 KV cache. Reload and first load agree, so E2E-2
still holds; the perplexity (E2E-1) and the scales the model ends with (E2E-3) do not.
"""

from __future__ import annotations

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.api import weights_of
from loadspec.reference.cache_scale_mappers import cache_scale_mapper
from loadspec.reference.reload import ReloadSession

DIVISOR = 16
KV_SUFFIXES = (".attn.k_scale", ".attn.v_scale")


def divided_kv_scales(weights):
    """``weights`` with every KV-cache k/v scale divided by ``DIVISOR`` (dtype kept; 16 is exact)."""
    mapper = cache_scale_mapper()
    for name, tensor in weights:
        mapped = mapper.map_name_with_shard(name)
        if mapped is not None and mapped[0].endswith(KV_SUFFIXES):
            tensor = tensor / DIVISOR
        yield name, tensor


class DividingReloadSession(ReloadSession):
    def load(self, weights):
        return super().load(divided_kv_scales(weights))


class DividedScalesAdapter(ReferenceAdapter):
    name = report_id = "mutant-divided-scales"
    targets = ("E2E-1", "E2E-3")
    suite = ("test_e2e.py",)

    def first_load(self, model, weights):
        return super().first_load(model, divided_kv_scales(weights_of(weights)))

    def reload(self, model, weights) -> None:
        super().reload(model, divided_kv_scales(weights_of(weights)))

    def open_reload(self, model):
        return DividingReloadSession(model)


ADAPTER = DividedScalesAdapter
