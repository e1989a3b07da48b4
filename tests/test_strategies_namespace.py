"""``make_strategies_namespace(adapter)`` draws only what the adapter's capabilities declare, and says so.

Adapters here are duck-typed stand-ins (a name and capabilities), as the namespace
reads nothing else. Argument validation of the namespaced strategies is in
``test_strategies_validation.py``; the README's example using a namespace is in
``test_strategies.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from loadspec.conformance.adapter import CAPABILITIES
from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference import api
from loadspec.strategies import kv_scale_sets, layer_graphs, make_strategies_namespace, scale_values
from loadspec.strategies.capabilities import GRAPH_CHOICES, GRAPH_FLAGS, spec_capabilities

pytestmark = pytest.mark.filterwarnings("ignore::loadspec.reference.kv_cache.MissingKVScalesWarning")

EVERY_CAPABILITY = frozenset(CAPABILITIES)
MODEL_STRATEGIES = ("layer_graphs", "checkpoint_layouts")
PRIMITIVE_STRATEGIES = ("scale_shapes", "scale_dtypes", "scale_tensors", "weight_names", "mappers")


class Declaring:
    """An adapter as the namespace sees it: a name and capabilities."""

    def __init__(self, name: str, capabilities) -> None:
        self.name, self.capabilities = name, capabilities


def quants(spec) -> set[str]:
    return {q for layer in spec.layers for q in layer.linear_quants().values()}


USES = {  # capability -> whether a spec uses it, written out here independently of capabilities.GRAPH_CHOICES
    "mla": lambda spec: spec.attention == "mla",
    "fp8_per_tensor": lambda spec: "fp8_per_tensor" in quants(spec),
    "fp8_per_channel": lambda spec: "fp8_per_channel" in quants(spec),
    # Fp8Config and ModelOpt FP8 configs cannot state per-channel weights; compressed-tensors and Quark can
    "fp8_per_channel_any_format": lambda spec: ("fp8_per_channel" in quants(spec)
                                                and spec.quant_method in ("fp8", "modelopt")),
    "tied_embeddings": lambda spec: spec.tie_embeddings,
    "nested_wrappers": lambda spec: spec.wrapper != (),
    "mixer_container": lambda spec: spec.container == "mixer",
    "reduced_precision_params": lambda spec: spec.params_dtype != "float32",
    "per_token_head_kv": lambda spec: spec.kv_cache_dtype.endswith("_per_token_head"),
}


def test_every_gating_capability_is_a_suite_capability_and_checked_here():
    gating = set(GRAPH_FLAGS.values()) | {c for needs in GRAPH_CHOICES.values() for c in needs.values()}
    assert gating == set(USES), "a capability that gates layer_graphs has no USES entry here (or one went away)"
    assert gating | {"model", "primitives"} <= EVERY_CAPABILITY


@pytest.mark.parametrize("capability", sorted(USES))
@given(data=st.data())
def test_a_namespace_never_draws_what_its_adapter_does_not_declare(capability, data):
    ls = make_strategies_namespace(Declaring("engine", EVERY_CAPABILITY - {capability}))
    spec = data.draw(ls.layer_graphs(max_layers=2), label="spec")
    assert not USES[capability](spec), f"drew a spec using {capability!r} for an adapter without it"
    layout = data.draw(ls.checkpoint_layouts(spec), label="layout")
    api.first_load(api.build(spec), layout.tensors())


FIRST_FOUND = settings(phases=[Phase.generate], database=None)  # any example will do: no shrinking


@pytest.mark.parametrize("capability", sorted(USES))
def test_a_namespace_draws_what_its_adapter_declares(capability):
    find(make_strategies_namespace(Declaring("engine", EVERY_CAPABILITY)).layer_graphs(max_layers=1),
         USES[capability], settings=FIRST_FOUND)


@given(spec=make_strategies_namespace(Declaring("bare", {"model"})).layer_graphs())
def test_an_adapter_declaring_only_the_model_tier_gets_plain_float32_mha_specs(spec):
    assert spec.attention == "mha" and spec.container == "self_attn" and spec.params_dtype == "float32"
    assert quants(spec) == {"none"} and not spec.tie_embeddings and spec.wrapper == ()
    assert spec.kv_cache_dtype in ("auto", "bfloat16", "fp8", "fp8_e4m3")


@given(spec=make_strategies_namespace(Declaring("real-formats", EVERY_CAPABILITY - {"fp8_per_channel_any_format"}))
       .layer_graphs(linear_quants=("fp8_per_channel",), allow_unquantized=False))
def test_an_engine_reading_real_configs_gets_per_channel_only_where_a_format_states_it(spec):
    assert spec.quant_method in ("compressed-tensors", "quark") and quants(spec) == {"fp8_per_channel"}, spec


@given(spec=layer_graphs())
def test_spec_capabilities_name_what_a_spec_uses(spec):
    assert spec_capabilities(spec) == {"model"} | {c for c, uses in USES.items() if uses(spec)}


def test_tiers_decide_which_strategies_a_namespace_has():
    primitives = make_strategies_namespace(Declaring("primitives-only", {"primitives"}))
    model = make_strategies_namespace(Declaring("model-only", {"model"}))
    for name in MODEL_STRATEGIES:
        with pytest.raises(AttributeError, match=f"no '{name}': it needs the 'model' capability"):
            getattr(primitives, name)
        assert callable(getattr(model, name))
    for name in PRIMITIVE_STRATEGIES:
        with pytest.raises(AttributeError, match=f"no '{name}': it needs the 'primitives' capability"):
            getattr(model, name)
        assert callable(getattr(primitives, name))
    for ls in (primitives, model):
        assert ls.scale_values is scale_values and ls.kv_scale_sets is kv_scale_sets


def test_an_unknown_name_says_what_the_namespace_has():
    ls = make_strategies_namespace(Declaring("engine", EVERY_CAPABILITY))
    with pytest.raises(AttributeError) as info:
        ls.model_specs  # noqa: B018 - the access is the test
    message = str(info.value)
    assert "make_strategies_namespace(engine) has no attribute 'model_specs'" in message
    for name in MODEL_STRATEGIES + PRIMITIVE_STRATEGIES + ("scale_values", "kv_scale_sets"):
        assert name in message
    assert not hasattr(ls, "__wrapped__")


def test_namespaces_are_cached_per_name_and_capabilities():
    ls = make_strategies_namespace(Declaring("engine", {"model", "mla"}))
    assert make_strategies_namespace(Declaring("engine", ["mla", "model"])) is ls
    assert make_strategies_namespace(Declaring("engine", {"model"})) is not ls
    assert make_strategies_namespace(Declaring("other", {"model", "mla"})) is not ls
    assert (ls.name, ls.capabilities) == ("engine", frozenset({"model", "mla"}))


def test_a_namespace_repr_names_the_adapter():
    assert repr(make_strategies_namespace(Declaring("myengine", {"model"}))) == "make_strategies_namespace(myengine)"
    assert repr(make_strategies_namespace(ReferenceAdapter())) == "make_strategies_namespace(reference)"
