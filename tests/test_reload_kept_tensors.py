"""RELOAD-15..17, reference internals: what a reload must keep that the suite's drawn models did not have.

Issue 15 item 2: (a) an attention layer that owns a parameter besides its KV-cache scales
(attention sinks, ``LayerSpec(sinks=True)``) kept its ``meta`` template after any reload, delivered or
not; (latent 1) a layout-preserving layer whose processing replaced its Parameter subclass had the
recorded loader replayed into the plain kernel tensor (a raw ``AttributeError``); (latent 2) a layer
whose processing left a plain tensor attribute where a Parameter was recorded made ``ReloadSession``
raise ``KeyError`` when it began. Each test failed on the reference before the fix (commit bd5d521~1).
"""

from __future__ import annotations

import gc

import pytest
import torch

from loadspec.conformance.assertions import assert_equal, assert_same_state, assert_unchanged
from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.errors import ScaleValueError
from loadspec.reference.lifecycle import process_weights_after_loading
from loadspec.reference.reload import ReloadSession, record_model_format
from loadspec.reference.spec import DEFAULT_SPEC, LayerSpec
from loadspec.strategies.synthetic import synthetic_checkpoint

SINKS = {"mha": DEFAULT_SPEC.with_(layers=tuple(LayerSpec(qkv_quant="fp8_per_tensor", sinks=True) for _ in range(2))),
         "mla": DEFAULT_SPEC.with_(attention="mla", layers=(LayerSpec(sinks=True), LayerSpec()))}


def sinks_names(spec) -> list[str]:
    return [f"{spec.attention_prefix(i)}sinks" for i, layer in enumerate(spec.layers) if layer.sinks]


def checkpoint(spec, seed: int, **kw) -> dict[str, torch.Tensor]:
    """``synthetic_checkpoint(spec)`` plus a ``sinks`` tensor for every layer that has them (the synthetic
    checkpoint does not write them yet)."""
    weights = synthetic_checkpoint(spec, seed=seed, **kw)
    generator = torch.Generator().manual_seed(seed)
    for name in sinks_names(spec):
        weights.setdefault(name, torch.randn(spec.num_heads, generator=generator))
    return weights


def sinks_of(model, spec) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name] for name in sinks_names(spec)}


def same_objects(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    for name, tensor in before.items():
        assert_equal(f"id({name}) (the same tensor object)", id(after[name]), id(tensor), "RELOAD-15")
        assert_equal(f"{name} device", after[name].device.type, tensor.device.type, "RELOAD-15")


@pytest.mark.parametrize("attention", list(SINKS))
@pytest.mark.parametrize("delivery", ["all", "all but sinks", "sinks only", "scales only"])
def test_attention_sinks_survive_every_reload(attention, delivery, device):
    spec = SINKS[attention]
    model = api.build(spec, device=device)
    api.first_load(model, checkpoint(spec, seed=0).items())
    kept = sinks_of(model, spec)
    old = {name: tensor.detach().clone() for name, tensor in kept.items()}
    pointers = {name: tensor.data_ptr() for name, tensor in kept.items()}
    new = checkpoint(spec, seed=5, kv_scales={"k": 2.0, "v": 4.0})
    pick = {"all": lambda n: True, "all but sinks": lambda n: not n.endswith(".sinks"),
            "sinks only": lambda n: n.endswith(".sinks"), "scales only": lambda n: n.endswith(("k_scale", "v_scale"))}
    api.reload(model, [(n, t) for n, t in new.items() if pick[delivery](n)])
    after = sinks_of(model, spec)
    same_objects(kept, after)
    for name, tensor in after.items():
        assert_equal(f"{name}.device after a reload ({delivery})", tensor.device.type, device, "RELOAD-15")
        assert_equal(f"{name}.data_ptr after a reload ({delivery})", tensor.data_ptr(), pointers[name], "RELOAD-15")
        expected = new[name] if delivery in ("all", "sinks only") else old[name]
        assert_equal(f"{name} values after a reload ({delivery})", tensor.detach().cpu().tolist(),
                     expected.tolist(), "RELOAD-15")
    assert_equal("sinks in the export", sorted(n for n in api.export(model) if n.endswith(".sinks")),
                 sorted(sinks_names(spec)), "RELOAD-15")


def test_attention_sinks_reload_equals_a_fresh_load():
    spec = SINKS["mha"]
    new = checkpoint(spec, seed=3)
    model = api.build(spec)
    api.dummy_load(model)
    api.reload(model, new.items())
    fresh = api.build(spec)
    api.first_load(fresh, new.items())
    got, want = api.export(model), api.export(fresh)
    assert_equal("exported names", sorted(got), sorted(want), "RELOAD-2")
    assert_same_state("kernel state after dummy load + reload vs a fresh load", got, want, "RELOAD-2")


@pytest.mark.parametrize("ending", ["abort", "gc", "rejected"])
def test_attention_sinks_kept_by_an_unfinished_or_rejected_reload(ending, model_state):
    spec = SINKS["mha"]
    model = api.build(spec)
    api.first_load(model, checkpoint(spec, seed=0).items())
    kept = sinks_of(model, spec)
    before = model_state(model)
    new = checkpoint(spec, seed=6)
    if ending == "rejected":
        bad = dict(new)
        bad[f"{spec.attention_prefix(1)}k_scale"] = torch.tensor(float("nan"))
        with pytest.raises(ScaleValueError):
            api.reload(model, bad.items())
    else:
        session = ReloadSession(model)
        session.load([(n, t) for n, t in new.items() if n.endswith(".sinks")])
        if ending == "abort":
            session.abort()
        else:
            del session
            gc.collect()
    same_objects(kept, sinks_of(model, spec))
    assert_unchanged(f"model after a {ending} reload delivering sinks", before, model_state(model), "RELOAD-15")


# ------------------------------------------------------------ processing that replaces what was recorded
class MergedParameter(torch.nn.Parameter):
    """A vLLM-style Parameter subclass whose loader is one of its methods."""

    def load_merged(self, loaded_weight: torch.Tensor) -> None:
        self.data.copy_(loaded_weight)


def merged_loader(param, loaded_weight, shard_id=None) -> None:
    param.load_merged(loaded_weight)  # AttributeError on a plain Parameter


class ReplacesClass:
    """Keeps the layout, but registers a plain Parameter in place of the subclass (vLLM's replace_parameter)."""

    preserves_layout = True

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        layer.weight = torch.nn.Parameter(layer.weight.data * 2, requires_grad=False)


class LeavesPlainTensor:
    """Leaves a plain tensor attribute (not a Parameter, not a buffer) where ``weight`` was recorded."""

    preserves_layout = False

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        processed = layer.weight.data * 2
        del layer.weight
        layer.weight = processed


def one_layer_model(method) -> torch.nn.Module:
    root = torch.nn.Module()
    root.layer = torch.nn.Module()
    weight = MergedParameter(torch.zeros(3, 4), requires_grad=False)
    weight.weight_loader = merged_loader
    root.layer.weight = weight
    root.layer.quant_method = method
    record_model_format(root)
    AutoWeightsLoader(root).load_weights([("layer.weight", torch.ones(3, 4))])
    process_weights_after_loading(root)
    return root


@pytest.mark.parametrize("method", [ReplacesClass, LeavesPlainTensor], ids=["replaced-subclass", "plain-tensor"])
@pytest.mark.parametrize("transactional", [False, True], ids=["streaming", "transactional"])
def test_reload_after_processing_replaced_the_recorded_parameter(method, transactional):
    model = one_layer_model(method())
    kernel = model.layer.weight
    new = torch.arange(12.0).reshape(3, 4)
    session = ReloadSession(model, transactional=transactional)  # latent 2: KeyError here
    session.load([("layer.weight", new)])
    session.finish()  # latent 1: AttributeError here (the recorded loader replayed into the plain kernel tensor)
    rule = "RELOAD-16" if method is ReplacesClass else "RELOAD-17"
    assert_equal("id(kernel tensor) after a reload (the same object)", id(model.layer.weight), id(kernel), rule)
    assert_equal("kernel values after a reload", model.layer.weight.tolist(), (new * 2).tolist(), rule)
    assert_equal("parameters registered after the reload", list(model.layer._parameters),
                 ["weight"] if method is ReplacesClass else [], rule)


def test_an_aborted_session_puts_a_plain_tensor_attribute_back():
    model = one_layer_model(LeavesPlainTensor())
    kernel = model.layer.weight
    session = ReloadSession(model)
    assert_equal("device of the template registered during the session", model.layer.weight.device.type, "meta",
                 "RELOAD-17")
    session.abort()
    assert_equal("id(weight) after abort (the plain kernel tensor)", id(model.layer.weight), id(kernel), "RELOAD-17")
    assert_equal("no parameter left registered", list(model.layer._parameters), [], "RELOAD-17")
