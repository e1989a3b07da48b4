"""LOAD-9, LOAD-15, reference internals: ``loadable_tensors`` / ``output_buffer_names`` walk the module tree by its
``_modules`` dicts in one pass (issue 12) instead of torch's ``named_*`` walks, and ``plan`` memoizes the mapper per
checkpoint name on the model. Each test changes the model's structure between two calls and compares with the
definition, torch's own walks (``named_parameters(remove_duplicate=False)`` and each module's persistent
``named_buffers``), checks what a load then writes, and that nothing the model dropped is kept alive (a cache of
the tensors themselves, tried first, kept a first load's checkpoint-format weights alive after processing
replaced them).
"""

from __future__ import annotations

import pytest
import torch

from loadspec.conformance.assertions import assert_equal
from loadspec.reference import api, auto_loader
from loadspec.reference.auto_loader import AutoWeightsLoader, loadable_tensors, output_buffer_names
from loadspec.reference.errors import UnknownWeightError
from loadspec.reference.spec import DEFAULT_SPEC


def by_definition(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    targets = dict(module.named_parameters(remove_duplicate=False))
    for owner_name, owner in module.named_modules():
        for name, buffer in owner.named_buffers(recurse=False):
            if name not in owner._non_persistent_buffers_set and not auto_loader.processing_owned(owner, name):
                targets[f"{owner_name}.{name}" if owner_name else name] = buffer
    return targets


def owned_by_definition(module: torch.nn.Module) -> set[str]:
    return {f"{owner_name}.{name}" if owner_name else name for owner_name, owner in module.named_modules()
            for name, _ in owner.named_buffers(recurse=False) if auto_loader.processing_owned(owner, name)}


def assert_current(module: torch.nn.Module) -> None:
    got, expected = loadable_tensors(module), by_definition(module)
    assert_equal("loadable names (in order)", list(got), list(expected), rule="LOAD-9")
    stale = [name for name in expected if got[name] is not expected[name]]
    assert_equal("names resolved to a tensor the model no longer holds", stale, [], rule="LOAD-9")
    assert_equal("output buffer names", output_buffer_names(module), owned_by_definition(module), rule="LOAD-15")


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Block()
        self.b = Block()
        self.shared = self.a  # one module under two paths: parameters under both, buffers under the first
        self.head = torch.nn.Linear(2, 2, bias=False)
        self.tail = torch.nn.Linear(2, 2, bias=False)
        self.tail.weight = self.head.weight  # tied


def load(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    AutoWeightsLoader(module).load_weights(list(weights.items()))


CHANGES = {
    "parameter replaced by an equal scalar": lambda net: net.a.proj.register_parameter(
        "bias", torch.nn.Parameter(net.a.proj.bias.detach().clone())),
    "parameter replaced": lambda net: setattr(net.b.proj, "weight", torch.nn.Parameter(torch.ones(2, 3))),
    "parameter deleted": lambda net: delattr(net.b.proj, "bias"),
    "parameter set to None": lambda net: net.b.proj.register_parameter("bias", None),
    "parameter added": lambda net: net.b.register_parameter("extra", torch.nn.Parameter(torch.zeros(4))),
    "buffer replaced": lambda net: net.b.register_buffer("running", torch.ones(2)),
    "buffer made non-persistent": lambda net: net.b.register_buffer("running", net.b.running, persistent=False),
    "buffer made persistent": lambda net: net.b.register_buffer("scratch", net.b.scratch),
    "submodule replaced": lambda net: setattr(net, "b", Block()),
    "submodule deleted": lambda net: delattr(net, "shared"),
    "submodule added deep": lambda net: net.a.proj.add_module("inner", Block()),
    "tie broken": lambda net: setattr(net, "tail", torch.nn.Linear(2, 2, bias=False)),
    "parameters renamed": lambda net: net.head._parameters.update({"w2": net.head._parameters.pop("weight")}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_structural_change_is_seen_by_the_next_call(change):
    net = Net()
    assert_current(net)  # fills the cache
    assert_current(net)  # served from it
    CHANGES[change](net)
    assert_current(net)


def test_a_replaced_parameter_receives_the_load():
    """A stale entry would write into the old tensor, which the model no longer holds."""
    net = Net()
    load(net, {"b.proj.weight": torch.full((2, 3), 1.0)})
    old = net.b.proj.weight
    net.b.proj.weight = torch.nn.Parameter(torch.zeros(2, 3))
    load(net, {"b.proj.weight": torch.full((2, 3), 2.0)})
    assert_equal("value of the registered parameter", net.b.proj.weight.tolist(), [[2.0] * 3] * 2, rule="LOAD-9")
    assert_equal("value of the replaced one", old.tolist(), [[1.0] * 3] * 2, rule="LOAD-9")


def test_a_deleted_parameter_is_unknown():
    net = Net()
    load(net, {"b.proj.bias": torch.zeros(2)})
    del net.b.proj.bias
    with pytest.raises(UnknownWeightError):
        load(net, {"b.proj.bias": torch.zeros(2)})


def test_a_patched_processing_owned_is_honoured(monkeypatch):
    model = api.build(DEFAULT_SPEC)
    assert_current(model)
    owned = output_buffer_names(model)
    assert owned, "DEFAULT_SPEC has attention output scales"
    monkeypatch.setattr(auto_loader, "processing_owned", lambda owner, name: False)
    assert_current(model)
    assert_equal("output buffers once processing_owned says none", output_buffer_names(model), set(), rule="LOAD-15")
    assert set(loadable_tensors(model)) >= owned


def test_a_reference_model_through_a_reload_session():
    """The session swaps parameters for meta templates and back: every call sees the current registrations."""
    model = api.build(DEFAULT_SPEC)
    api.dummy_load(model)
    assert_current(model)
    session = api.reload_session(model)
    assert_current(model)  # meta templates registered
    session.abort()
    assert_current(model)


def test_replaced_tensors_are_not_kept_alive():
    """After a first load, processing replaces the checkpoint-format FP8 weights (per channel: transposed copies);
    planning must not keep the replaced ones alive."""
    import gc
    import weakref

    from loadspec.conformance.benchmarks import harness
    from loadspec.reference.layers.linear import Linear

    spec = harness.llama_spec(harness.SIZES["quick"].throughput, "fp8_per_channel")
    model = api.build(spec)
    replaced = [weakref.ref(module.weight) for module in model.modules() if isinstance(module, Linear)]
    api.first_load(model, harness.checkpoint(spec, "cpu"))
    gc.collect()
    alive = sum(ref() is not None for ref in replaced)
    assert_equal("checkpoint-format weights alive after the first load", alive, 0, rule="LOAD-9")


def test_mapper_memo_follows_the_entries_in_order():
    """Two mappers with the same entries in another order map differently; the memo must not confuse them."""
    from loadspec.reference.mapper import WeightsMapper

    net = Net()
    first = WeightsMapper(substr={"x.": "a.", "a.proj": "b.proj"})
    second = WeightsMapper(substr={"a.proj": "b.proj", "x.": "a."})
    assert first == second  # dict equality ignores the order the entries apply in
    loader = AutoWeightsLoader(net)
    one = [load.name for load in loader.plan([("x.proj.bias", torch.zeros(2))], mapper=first)]
    two = [load.name for load in loader.plan([("x.proj.bias", torch.zeros(2))], mapper=second)]
    assert_equal("names with the entries in order", (one, two), (["b.proj.bias"], ["a.proj.bias"]), rule="MAP-1")
