"""Sequences of loads and reloads, driven by a Hypothesis state machine, checked after every step.

The MUST machine only takes steps whose outcome every MUST rule defines; the
SHOULD machine adds partial reloads (RELOAD-6), so a SHOULD divergence never
marks MUST rules as failed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from loadspec.conformance.assertions import (
    assert_equal,
    assert_raises_value_error,
    assert_same_state,
    assert_unchanged,
    snapshot,
)
from loadspec.conformance.drivers import built, graphs_for, layouts_for, live_pointers, real_model_options, run_device
from loadspec.conformance.oracle import Twin

pytestmark = pytest.mark.requires("model")


class ReloadMachine(RuleBasedStateMachine):
    """One implementation model and one reference model (a ``Twin``), driven through the same steps.

    After every step the whole exported kernel state equals the reference's (LOAD-17 until the first
    reload, RELOAD-13 after it) and every host mirror equals its device scale (LOAD-18, RELOAD-14).
    """

    impl = ref = None

    @initialize(data=st.data())
    def first_load(self, data):
        self.spec = data.draw(graphs_for(self.impl, **real_model_options(self.impl)), label="graph")
        layout = data.draw(layouts_for(self.spec), label="first checkpoint")
        self.twin = Twin(self.impl, self.ref, self.spec, device=run_device()).first_load(layout.tensors)
        self.pointers = live_pointers(self.impl, self.twin.model)
        self.last_full = layout
        self.reloaded = False

    @property
    def model(self):
        return self.twin.model

    def _reload(self, weights):
        self.twin.reload(lambda: weights)
        self.reloaded = True

    @rule(data=st.data())
    def reload_full(self, data):
        layout = data.draw(layouts_for(self.spec), label="reload checkpoint")
        self._reload(layout.tensors())
        self.last_full = layout
        fresh = built(self.impl, self.spec, layout.tensors())
        assert_same_state("kernel state after a full reload vs a fresh load", self.impl.export_kernel_state(self.model),
                          self.impl.export_kernel_state(fresh), "RELOAD-2")

    @rule()
    def reload_same_twice(self):
        self._reload(self.last_full.tensors())
        once = self.impl.export_kernel_state(self.model)
        self._reload(self.last_full.tensors())
        assert_same_state("kernel state after reloading twice", self.impl.export_kernel_state(self.model), once,
                          "RELOAD-7")

    @precondition(lambda self: self.spec.quant_method is not None and self.spec.kv_cache_quantized)
    @rule(data=st.data())
    def reload_scales_only(self, data):
        index = data.draw(st.integers(0, len(self.spec.layers) - 1), label="layer")
        k = data.draw(st.sampled_from([0.0625, 0.5, 3.0]), label="k_scale")
        self._reload([(f"{self.spec.layer_prefix(index)}{self.spec.container}.k_scale", torch.tensor(k))])

    @precondition(lambda self: "reload_sessions" in self.impl.capabilities)
    @rule(data=st.data())
    def reload_in_buckets(self, data):
        layout = data.draw(layouts_for(self.spec), label="reload checkpoint, in buckets")
        weights = data.draw(st.permutations(layout.tensors()), label="delivery order")
        cuts = sorted(data.draw(st.lists(st.integers(0, len(weights)), max_size=4), label="bucket boundaries"))
        self.twin.session([list(weights[a:b]) for a, b in zip([0, *cuts], [*cuts, len(weights)], strict=True)])
        self.last_full, self.reloaded = layout, True

    @rule(data=st.data())
    def restart_from_dummy_weights(self, data):
        layout = data.draw(layouts_for(self.spec), label="reload checkpoint after a dummy load")
        self.twin = Twin(self.impl, self.ref, self.spec, device=run_device()).dummy_load()
        self.twin.check_mirrors("after a dummy load", "LOAD-18")
        self.pointers = live_pointers(self.impl, self.model)
        self._reload(layout.tensors())
        self.last_full = layout

    @invariant()
    def storage_is_kept(self):
        if hasattr(self, "twin"):
            assert_equal("kernel tensors' data_ptr", live_pointers(self.impl, self.model), self.pointers, "RELOAD-1")

    @invariant()
    def state_matches_the_reference(self):
        if hasattr(self, "twin"):
            when = "after a reload" if self.reloaded else "after the first load"
            self.twin.check(f"kernel state {when}", "RELOAD-13" if self.reloaded else "LOAD-17")

    @invariant()
    def mirrors_match_the_device_scales(self):
        if hasattr(self, "twin"):
            when = "after a reload" if self.reloaded else "after the first load"
            self.twin.check_mirrors(when, "RELOAD-14" if self.reloaded else "LOAD-18")


class PartialReloadMachine(ReloadMachine):
    """Adds reloads missing one weight of one layer: rejected, and the model keeps its values."""

    @rule(data=st.data())
    def reload_partial(self, data):
        layout = data.draw(layouts_for(self.spec), label="reload checkpoint")
        weights = layout.tensors()
        shards = [n for n, _ in weights if n.endswith((".mlp.gate_proj.weight", ".mlp.up_proj.weight"))]
        dropped = data.draw(st.sampled_from(shards), label="weight left out")
        before = snapshot(self.impl.kernel_tensors(self.model), self.impl.host_mirrors(self.model))
        self.reloaded = True
        layer = dropped.rsplit(".", 2)[0] + ".gate_up_proj."  # the fused layer left partial
        assert_raises_value_error(f"reload without {dropped}", lambda: self.impl.reload(
            self.model, [(n, t) for n, t in weights if n != dropped]), "RELOAD-6", mentions=[layer])
        after = snapshot(self.impl.kernel_tensors(self.model), self.impl.host_mirrors(self.model))
        kept = {n: v for n, v in before.items() if n.startswith(layer)}
        assert_unchanged(f"{layer} after a partial reload", kept, {n: after[n] for n in kept}, "RELOAD-6")
        self._reload(self.last_full.tensors())


def machine_settings() -> settings:
    examples = max(2, settings().max_examples // 8)  # the loaded profile's value
    return settings(max_examples=examples, stateful_step_count=max(3, examples // 2), deadline=None)


def run(machine, impl, ref):
    machine.impl, machine.ref = impl, ref
    try:
        run_state_machine_as_test(machine, settings=machine_settings())
    finally:
        machine.impl = machine.ref = None


@pytest.mark.rule("RELOAD-1", "RELOAD-2", "RELOAD-7", "RELOAD-13", "RELOAD-14", "LOAD-17", "LOAD-18")
def test_reload_sequences(impl, ref):
    run(type("MustMachine", (ReloadMachine,), {}), impl, ref)


@pytest.mark.rule("RELOAD-6")
def test_reload_sequences_with_partial_reloads(impl, ref):
    run(type("ShouldMachine", (PartialReloadMachine,), {}), impl, ref)
