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
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from loadspec.conformance.assertions import assert_equal, assert_same_state, assert_unchanged, fail, snapshot
from loadspec.conformance.drivers import built, graphs_for, layouts_for, live_pointers
from loadspec.reference.vocabulary import SCALE_KINDS

pytestmark = pytest.mark.requires("model")


class ReloadMachine(RuleBasedStateMachine):
    """One implementation model and one reference model, driven through the same steps."""

    impl = ref = None

    @initialize(data=st.data())
    def first_load(self, data):
        self.spec = data.draw(graphs_for(self.impl, params_dtypes=("float32",)), label="graph")
        layout = data.draw(layouts_for(self.spec), label="first checkpoint")
        self.model = built(self.impl, self.spec, layout.tensors())
        self.oracle = built(self.ref, self.spec, layout.tensors())
        self.pointers = live_pointers(self.impl, self.model)
        self.last_full = layout

    def _reload(self, weights):
        self.impl.reload(self.model, weights)
        self.ref.reload(self.oracle, weights)

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

    @rule(data=st.data())
    def reload_scales_only(self, data):
        if self.spec.quant_method is None:
            return
        index = data.draw(st.integers(0, len(self.spec.layers) - 1), label="layer")
        k = data.draw(st.sampled_from([0.0625, 0.5, 3.0]), label="k_scale")
        self._reload([(f"{self.spec.layer_prefix(index)}{self.spec.container}.k_scale", torch.tensor(k))])

    @invariant()
    def storage_is_kept(self):
        if hasattr(self, "model"):
            assert_equal("kernel tensors' data_ptr", live_pointers(self.impl, self.model), self.pointers, "RELOAD-1")

    @invariant()
    def scales_match_the_reference(self):
        if not hasattr(self, "model"):
            return
        got, expected = self.impl.export_kernel_state(self.model), self.ref.export_kernel_state(self.oracle)
        for index in range(len(self.spec.layers)):
            for kind in SCALE_KINDS:
                name = f"{self.spec.attention_prefix(index)}{kind}_scale"
                assert_equal(name, float(got[name]), float(expected[name]), "RELOAD-3")


class PartialReloadMachine(ReloadMachine):
    """Adds reloads missing one weight of one layer: rejected, and the model keeps its values."""

    @rule(data=st.data())
    def reload_partial(self, data):
        layout = data.draw(layouts_for(self.spec), label="reload checkpoint")
        weights = layout.tensors()
        shards = [n for n, _ in weights if n.endswith((".mlp.gate_proj.weight", ".mlp.up_proj.weight"))]
        dropped = data.draw(st.sampled_from(shards), label="weight left out")
        before = snapshot(self.impl.kernel_tensors(self.model), self.impl.host_mirrors(self.model))
        try:
            self.impl.reload(self.model, [(n, t) for n, t in weights if n != dropped])
        except ValueError:
            pass
        else:
            fail(f"reload without {dropped}", "accepted", "ValueError", "RELOAD-6")
        after = snapshot(self.impl.kernel_tensors(self.model), self.impl.host_mirrors(self.model))
        layer = dropped.rsplit(".", 2)[0] + ".gate_up_proj."  # the fused layer left partial
        kept = {n: v for n, v in before.items() if n.startswith(layer)}
        assert_unchanged(f"{layer} after a partial reload", kept, {n: after[n] for n in kept}, "RELOAD-6")
        self.ref.reload(self.oracle, self.last_full.tensors())
        self.impl.reload(self.model, self.last_full.tensors())


def machine_settings() -> settings:
    examples = max(2, settings().max_examples // 8)  # the loaded profile's value
    return settings(max_examples=examples, stateful_step_count=max(3, examples // 2), deadline=None)


def run(machine, impl, ref):
    machine.impl, machine.ref = impl, ref
    try:
        run_state_machine_as_test(machine, settings=machine_settings())
    finally:
        machine.impl = machine.ref = None


@pytest.mark.rule("RELOAD-1", "RELOAD-2", "RELOAD-3", "RELOAD-7")
def test_reload_sequences(impl, ref):
    run(type("MustMachine", (ReloadMachine,), {}), impl, ref)


@pytest.mark.rule("RELOAD-6")
def test_reload_sequences_with_partial_reloads(impl, ref):
    run(type("ShouldMachine", (PartialReloadMachine,), {}), impl, ref)
