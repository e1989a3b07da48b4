"""The public strategies generate what they claim: buildable specs, loadable layouts, faithful files, valid scales."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from dataclasses import replace

import pytest
import torch
from hypothesis import assume, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument, NoSuchExample
from safetensors import safe_open

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.conformance.assertions import assert_same_state
from loadspec.reference import api
from loadspec.reference.auto_loader import AutoWeightsLoader
from loadspec.reference.checkpoint import INDEX_FILE, iter_checkpoint, read_config, shard_files
from loadspec.reference.errors import MissingWeightsError, ScaleShapeError, UnknownWeightError
from loadspec.reference.scales import check_scale_shape
from loadspec.reference.spec import ModelSpec
from loadspec.reference.vocabulary import (
    ATTENTION_KINDS,
    CONTAINERS,
    KV_CACHE_DTYPES,
    PARAM_DTYPES,
    QUANT_METHODS,
    SCALE_KINDS,
    SENTINEL,
)
from loadspec.strategies import (
    CheckpointLayout,
    checkpoint_layouts,
    kv_scale_sets,
    layer_graphs,
    make_strategies_namespace,
    scale_dtypes,
    scale_shapes,
    scale_tensors,
    scale_values,
)
from loadspec.strategies.layouts import ORDERS
from loadspec.strategies.producers import PRODUCERS

pytestmark = pytest.mark.filterwarnings("ignore::loadspec.reference.kv_cache.MissingKVScalesWarning")

KV_SCALE_NAME = re.compile(r"(_scale|output_scale)$")


def subsets(values) -> st.SearchStrategy[tuple]:
    """Non-empty sub-tuples of ``values``, in their order."""
    return st.sets(st.sampled_from(values), min_size=1).map(lambda s: tuple(v for v in values if v in s))


def is_valid_float32_scale(value: float) -> bool:
    stored = float(torch.tensor(value, dtype=torch.float32))
    return stored == value and math.isfinite(stored) and stored > 0.0


# --------------------------------------------------------------- layer_graphs
@given(spec=layer_graphs())
def test_every_graph_builds(spec):
    model = api.build(spec)
    assert sum(1 for name, _ in model.named_modules() if name.endswith(".attn")) == len(spec.layers)
    if spec.quant_method is None:
        assert all(q == "none" for layer in spec.layers for q in layer.linear_quants().values())
    assert spec.hidden_size % spec.num_heads == 0 and spec.num_heads % spec.num_kv_heads == 0
    assert spec.kv_cache_dtype != "fp8_e5m2"  # not in the default choices


@given(spec=layer_graphs(kv_cache_dtypes=("fp8_e5m2", "fp8_e4m3")))
def test_e5m2_graphs_have_no_quant_method_and_build(spec):
    api.build(spec)
    if spec.kv_cache_dtype == "fp8_e5m2":
        assert spec.quant_method is None, f"quant_method={spec.quant_method!r} with fp8_e5m2 raises at build"
        with pytest.raises(ValueError, match="fp8_e5m2"):
            api.build(spec.with_(quant_method="fp8"))


@given(data=st.data())
def test_graphs_respect_their_arguments(data):
    min_layers = data.draw(st.integers(1, 3), label="min_layers")
    kw = dict(
        min_layers=min_layers,
        max_layers=data.draw(st.integers(min_layers, 4), label="max_layers"),
        attention=data.draw(subsets(ATTENTION_KINDS), label="attention"),
        kv_cache_dtypes=data.draw(subsets(KV_CACHE_DTYPES), label="kv_cache_dtypes"),
        quant_methods=data.draw(subsets(QUANT_METHODS), label="quant_methods"),
        containers=data.draw(subsets(CONTAINERS), label="containers"),
        params_dtypes=data.draw(subsets(PARAM_DTYPES), label="params_dtypes"),
        allow_unquantized=data.draw(st.booleans(), label="allow_unquantized"),
        allow_tied=data.draw(st.booleans(), label="allow_tied"),
        allow_wrappers=data.draw(st.booleans(), label="allow_wrappers"),
        max_hidden=data.draw(st.integers(1, 40), label="max_hidden"),
    )
    if kw["kv_cache_dtypes"] == ("fp8_e5m2",):
        kw["allow_unquantized"] = True
    spec = data.draw(layer_graphs(**kw), label="spec")
    assert kw["min_layers"] <= len(spec.layers) <= kw["max_layers"]
    assert spec.attention in kw["attention"] and spec.container in kw["containers"]
    assert spec.kv_cache_dtype in kw["kv_cache_dtypes"] and spec.params_dtype in kw["params_dtypes"]
    assert spec.quant_method in kw["quant_methods"] or (kw["allow_unquantized"] and spec.quant_method is None)
    assert spec.hidden_size <= kw["max_hidden"]
    assert kw["allow_tied"] or not spec.tie_embeddings
    assert kw["allow_wrappers"] or spec.wrapper == ()
    api.build(spec)


@given(spec=layer_graphs())
def test_spec_json_round_trip(spec):
    assert ModelSpec.from_json(spec.to_json()) == spec


# ---------------------------------------------------------- checkpoint_layouts
@given(data=st.data())
def test_graph_first_loads_its_own_layouts(data):
    spec = data.draw(layer_graphs(), label="spec")
    layout = data.draw(checkpoint_layouts(spec), label="layout")
    model = api.build(spec)
    mapper = AutoWeightsLoader(model).effective_mapper(model.mapper)
    tensors = layout.tensors()
    loaded = api.first_load(model, tensors)
    assert loaded == {mapper.map_name(name) for name, _ in tensors}
    names = [name for name, _ in tensors]
    assert len(names) == len(set(names)), "a layout repeats a name"


@given(data=st.data())
def test_reload_of_another_layout_equals_its_fresh_load(data):
    spec = data.draw(layer_graphs(), label="spec")
    first = data.draw(checkpoint_layouts(spec), label="first")
    second = data.draw(checkpoint_layouts(spec), label="second")
    # An attention layer that gets no scale in a reload keeps the old ones [RELOAD-4].
    assume(second.kv_scale_names or not first.kv_scale_names)
    model = api.build(spec)
    api.first_load(model, first.tensors())
    api.reload(model, second.tensors())
    fresh = api.build(spec)
    api.first_load(fresh, second.tensors())
    assert_same_state("kernel state after the reload", api.export(model), api.export(fresh), "RELOAD-2")


@given(data=st.data())
def test_missing_or_extra_tensors_make_the_first_load_fail(data):
    spec = data.draw(layer_graphs(max_layers=2), label="spec")
    layout = data.draw(checkpoint_layouts(spec, allow_missing=True, allow_extra=True), label="layout")
    assume(layout.missing or layout.extra)
    assert not set(layout.missing) & set(layout.kv_scale_names), "only required tensors are left out"
    error = UnknownWeightError if layout.extra else MissingWeightsError
    with pytest.raises(error):
        api.first_load(api.build(spec), layout.tensors())


@given(data=st.data())
def test_unquantized_graphs_write_no_kv_scales(data):
    spec = data.draw(layer_graphs(quant_methods=()), label="spec")
    layout = data.draw(checkpoint_layouts(spec, producers=tuple(PRODUCERS)), label="layout")
    assert spec.quant_method is None and layout.kv_scales == {} and layout.kv_scale_names == ()
    assert not [name for name, _ in layout.tensors() if KV_SCALE_NAME.search(name)]
    assert "quantization_config" not in layout.config()


@given(data=st.data())
def test_layouts_respect_their_arguments(data):
    spec = data.draw(layer_graphs(max_layers=2), label="spec")
    orders = data.draw(subsets(ORDERS), label="orders")
    producers = data.draw(subsets(tuple(PRODUCERS)), label="producers")
    layout = data.draw(checkpoint_layouts(spec, producers=producers, orders=orders, allow_sharding=False,
                                          kv_scales=kv_scale_sets(kinds=("k",))), label="layout")
    assert layout.producer in producers and layout.order in orders and layout.max_shard_size is None
    assert not layout.missing and not layout.extra
    assert set(layout.kv_scales) <= {"k"}


@given(data=st.data())
def test_orders_permute_the_file_order(data):
    spec = data.draw(layer_graphs(), label="spec")
    layout = data.draw(checkpoint_layouts(spec, allow_extra=True), label="layout")
    names = {order: [n for n, _ in replace(layout, order=order).tensors()] for order in ORDERS}
    file_order = names["file"]
    for order, got in names.items():
        assert sorted(got) == sorted(file_order), f"order={order} is not a permutation of the file order"
    assert names["sorted"] == sorted(file_order) and names["reversed"] == file_order[::-1]
    layers = [re.search(r"\.layers\.(\d+)\.", n) for n in names["interleaved"]]
    groups = [m.group(1) if m else None for m in layers]
    head = groups[: len(set(groups))]
    assert len(set(head)) == len(head), f"interleaved order should start with one name per group: {head}"


@given(data=st.data())
def test_layout_json_round_trip(data):
    spec = data.draw(layer_graphs(max_layers=2), label="spec")
    layout = data.draw(checkpoint_layouts(spec, allow_missing=True, allow_extra=True), label="layout")
    again = CheckpointLayout.from_json(layout.to_json())
    assert again == layout and again.to_json() == layout.to_json()
    assert isinstance(layout.summary(), str) and "\n" not in layout.summary()


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).contiguous().view(torch.uint8)


@given(data=st.data())
def test_written_layout_reads_back_exactly(data, tmp_path_factory):
    spec = data.draw(layer_graphs(max_layers=2), label="spec")
    layout = data.draw(checkpoint_layouts(spec, allow_missing=True, allow_extra=True), label="layout")
    directory = layout.write(tmp_path_factory.mktemp("layout"))
    expected, got = dict(layout.tensors()), dict(iter_checkpoint(directory))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (got[name].dtype, got[name].shape) == (tensor.dtype, tensor.shape), name
        assert torch.equal(_bits(got[name]), _bits(tensor)), f"{name} changed on disk"
    config = read_config(directory)
    assert config == json.loads(json.dumps(layout.config()))
    assert config["num_hidden_layers"] == len(spec.layers) and config["tie_word_embeddings"] == spec.tie_embeddings
    if spec.quant_method is None:
        assert "quantization_config" not in config
    else:
        assert config["quantization_config"]["quant_method"] == PRODUCERS[layout.producer].quant_method


@given(data=st.data())
def test_sharded_layout_has_several_files_and_a_consistent_index(data, tmp_path_factory):
    spec = data.draw(layer_graphs(max_layers=2), label="spec")
    layout = data.draw(checkpoint_layouts(spec), label="layout")
    assume(layout.max_shard_size is not None)
    directory = layout.write(tmp_path_factory.mktemp("sharded"))
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(files) > 1, f"max_shard_size={layout.max_shard_size} gave {files}"
    index = json.loads((directory / INDEX_FILE).read_text())
    order = [name for name, _ in layout.tensors()]
    assert list(index["weight_map"]) == order and sorted(set(index["weight_map"].values())) == files
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for _, t in layout.tensors())
    for path in directory.glob("*.safetensors"):
        in_file = {name for name, file in index["weight_map"].items() if file == path.name}
        with safe_open(str(path), framework="pt") as handle:
            assert set(handle.keys()) == in_file, f"{path.name} holds other tensors than the index says"
            assert handle.metadata() == {"format": "pt"}
        size = sum(t.numel() * t.element_size() for n, t in layout.tensors() if n in in_file)
        assert size <= layout.max_shard_size or len(in_file) == 1, f"{path.name} is {size} bytes"
    assert sorted(p.name for p in shard_files(directory)) == files
    model = api.build(spec)
    api.first_load(model, directory)  # the engine reads the sharded directory
    fresh = api.build(spec)
    api.first_load(fresh, layout.tensors())
    assert_same_state("kernel state loaded from the shards", api.export(model), api.export(fresh), "no rule: reader")


# -------------------------------------------------------------------- scales
@given(shape=scale_shapes())
def test_valid_scale_shapes_have_one_element(shape):
    assert math.prod(shape) == 1
    check_scale_shape(torch.ones(shape))


@given(shape=scale_shapes(valid=False))
def test_invalid_scale_shapes_do_not_have_one_element(shape):
    assert math.prod(shape) != 1
    with pytest.raises(ScaleShapeError):
        check_scale_shape(torch.ones(shape))


@given(dtype=scale_dtypes())
def test_scale_dtypes_are_float(dtype):
    assert dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@given(value=scale_values(allow_sentinel=False))
def test_valid_scale_values_are_finite_positive_float32(value):
    assert is_valid_float32_scale(value), f"value={value!r}"


@given(value=scale_values())
def test_sentinel_is_the_only_other_default_value(value):
    assert value == SENTINEL or is_valid_float32_scale(value)


@given(value=scale_values(allow_sentinel=False, allow_invalid=True))
def test_no_sentinel_unless_allowed(value):
    assert value != SENTINEL


@pytest.mark.parametrize("kind, predicate", [
    ("nan", math.isnan), ("+inf", lambda v: v == math.inf), ("-inf", lambda v: v == -math.inf),
    ("+0", lambda v: v == 0 and math.copysign(1, v) > 0), ("-0", lambda v: v == 0 and math.copysign(1, v) < 0),
    ("negative", lambda v: -math.inf < v < 0 and v != SENTINEL),
])
def test_invalid_scale_values_cover_every_kind(kind, predicate):
    find(scale_values(allow_invalid=True), predicate)


@pytest.mark.parametrize("kind, predicate", [
    ("subnormal", lambda v: 0 < v < torch.finfo(torch.float32).tiny), ("huge", lambda v: v > 1e38),
    ("sentinel", lambda v: v == SENTINEL),
])
def test_valid_scale_values_reach_the_float32_edges(kind, predicate):
    find(scale_values(), predicate)


@given(tensor=scale_tensors())
def test_scale_tensors_hold_one_valid_value(tensor):
    assert tensor.numel() == 1 and tensor.dtype.is_floating_point
    value = tensor.item()
    assert value == SENTINEL or (math.isfinite(value) and value > 0)


@given(tensor=scale_tensors(valid_shape=False, values=scale_values(allow_invalid=True)))
def test_invalid_shape_scale_tensors(tensor):
    assert tensor.numel() != 1


@given(scales=kv_scale_sets(kinds=("k", "v")))
def test_kv_scale_sets_draw_only_their_kinds(scales):
    assert set(scales) == {"k", "v"}
    assert all(v is None or is_valid_float32_scale(v) or v == SENTINEL for v in scales.values())


@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_kv_scale_sets_draw_each_kind_present_and_absent(kind):
    find(kv_scale_sets(), lambda s: s[kind] is None)
    find(kv_scale_sets(), lambda s: s[kind] is not None)


@given(scales=kv_scale_sets(kinds=("q", "k", "v"), required=("k", "v")))
def test_required_kinds_are_always_present(scales):
    assert set(scales) == {"q", "k", "v"} and scales["k"] is not None and scales["v"] is not None


def test_other_kinds_stay_optional_beside_required_ones():
    find(kv_scale_sets(kinds=("q", "k"), required=("k",)), lambda s: s["q"] is None)


# ----------------------------------------------- README "Using the strategies in your own tests"
README_EXAMPLE = '''
import torch
from hypothesis import given, settings, strategies as st

from loadspec import reference
from loadspec.strategies import make_strategies_namespace
from myengine.testing import MyAdapter  # your loadspec adapter

engine = MyAdapter()
ls = make_strategies_namespace(engine)  # draws only what engine.capabilities declare


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_modelopt_checkpoints_load_like_the_reference(data):
    graphs = ls.layer_graphs(quant_methods=("modelopt",), allow_unquantized=False, kv_cache_dtypes=("fp8",))
    spec = data.draw(graphs, label="graph")
    layout = data.draw(ls.checkpoint_layouts(spec, producers=("modelopt",)), label="checkpoint")
    model, oracle = engine.build_model(spec, device="cpu"), reference.build(spec)
    engine.first_load(model, layout.tensors())
    reference.first_load(oracle, layout.tensors())
    got, expected = engine.export_kernel_state(model), reference.export(oracle)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name].float(), tensor.float()) for name, tensor in expected.items())
'''


class DropsKVScales(ReferenceAdapter):
    """An engine whose loader never maps ModelOpt's k_proj.k_scale / v_proj.v_scale: its kernels use 1.0."""

    def first_load(self, model, weights):
        return super().first_load(model, [(n, t) for n, t in weights if not n.endswith(("k_scale", "v_scale"))])


def run_readme_example(monkeypatch, adapter_class) -> None:
    """Run the README example as a test module whose ``myengine.testing.MyAdapter`` is ``adapter_class``."""
    package, module = types.ModuleType("myengine"), types.ModuleType("myengine.testing")
    module.MyAdapter, package.testing = adapter_class, module
    monkeypatch.setitem(sys.modules, "myengine", package)
    monkeypatch.setitem(sys.modules, "myengine.testing", module)
    scope = {"__name__": "test_myengine_loading"}
    exec(compile(README_EXAMPLE, "test_myengine_loading.py", "exec"), scope)
    scope["test_modelopt_checkpoints_load_like_the_reference"]()


def test_readme_strategies_example_passes_for_a_conforming_engine(monkeypatch):
    run_readme_example(monkeypatch, ReferenceAdapter)


def test_readme_strategies_example_fails_an_engine_that_drops_kv_scales(monkeypatch):
    previous = settings.get_current_profile_name()
    settings.load_profile("loadspec-meta")  # the example's @settings inherit it: no shrinking, no database
    try:
        with pytest.raises(AssertionError) as info:
            run_readme_example(monkeypatch, DropsKVScales)
    finally:
        settings.load_profile(previous)
    compared = next(n for n, line in enumerate(README_EXAMPLE.splitlines(), 1) if "torch.equal" in line)
    assert info.traceback[-1].lineno + 1 == compared, "the example failed, but not on its kernel-state comparison"


# --------------------------------------------------------------- attention sinks [RELOAD-15]
def test_graphs_draw_sinks_only_when_allowed():
    find(layer_graphs(allow_sinks=True), lambda spec: any(layer.sinks for layer in spec.layers))
    with pytest.raises(NoSuchExample):
        find(layer_graphs(), lambda spec: any(layer.sinks for layer in spec.layers),
             settings=settings(max_examples=200, database=None))


def test_sinks_flag_is_validated():
    with pytest.raises(InvalidArgument, match="allow_sinks"):
        layer_graphs(allow_sinks="yes").example()


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_sinks_layouts_write_one_logit_per_head_and_load(data):
    spec = data.draw(layer_graphs(allow_sinks=True).filter(lambda s: any(layer.sinks for layer in s.layers)))
    layout = data.draw(checkpoint_layouts(spec))
    tensors = dict(layout.tensors())
    sinks = {f"{spec.attention_prefix(i)}sinks" for i, layer in enumerate(spec.layers) if layer.sinks}
    assert {n for n in tensors if n.endswith(".sinks")} == sinks
    assert all(tuple(tensors[n].shape) == (spec.num_heads,) for n in sinks)
    model = api.build(spec)
    api.first_load(model, layout.tensors())  # every sinks tensor has a parameter, none is missing
    exported = api.export(model)
    assert all(torch.equal(exported[n], tensors[n]) for n in sinks)


def test_namespace_draws_sinks_only_for_an_adapter_declaring_them():
    class NoSinks(ReferenceAdapter):
        capabilities = frozenset(ReferenceAdapter.capabilities) - {"attention_sinks"}

    with pytest.raises(InvalidArgument, match="attention_sinks"):
        make_strategies_namespace(NoSinks()).layer_graphs(allow_sinks=True).example()
    find(make_strategies_namespace(ReferenceAdapter()).layer_graphs(allow_sinks=True),
         lambda spec: any(layer.sinks for layer in spec.layers))


@pytest.mark.parametrize("producer_id, channel_shape", [("compressed-tensors", lambda out: (out, 1)),
                                                        ("quark", lambda out: (out,))])
def test_per_channel_weight_scales_take_each_producer_s_shape(producer_id, channel_shape):
    """compressed-tensors writes (out, 1) per-channel weight scales, Quark (out,) (vLLM 0.33.0's
    ``QuarkW8A8Fp8.create_weights`` makes a 1-d ``ChannelQuantScaleParameter``, so an (out, 1) file fails its
    ``load_qkv_weight`` shape assert); the reference loads both to the same kernel state."""
    from loadspec.reference.spec import DEFAULT_SPEC
    from loadspec.strategies.synthetic import synthetic_checkpoint

    spec = ModelSpec(quant_method=PRODUCERS[producer_id].quant_method, layers=DEFAULT_SPEC.layers)
    written = synthetic_checkpoint(spec, producer=producer_id)
    channel = {n: t for n, t in written.items() if n.endswith("down_proj.weight_scale")}  # down: fp8_per_channel
    assert channel and all(t.shape == channel_shape(written[n.replace("_scale", "")].shape[0])
                           for n, t in channel.items()), {n: tuple(t.shape) for n, t in channel.items()}
    kernels = []
    for reshape in (lambda t: t, lambda t: t.reshape(-1, 1) if t.dim() == 1 else t.reshape(-1)):
        model = api.build(spec)
        api.first_load(model, [(n, reshape(t) if n in channel else t) for n, t in written.items()])
        kernels.append(ReferenceAdapter().export_kernel_state(model))
    assert_same_state(f"{producer_id} per-channel scales in the other shape", kernels[1], kernels[0], "LOAD-17")


def test_a_layout_stores_linear_scales_in_its_linear_scale_dtype():
    """``linear_scale_dtype`` converts every weight_scale and input_scale, nothing else, and survives JSON (the
    DTYPE-2 reproducer); an unknown dtype is a ValueError naming the field."""
    from loadspec.reference.spec import DEFAULT_SPEC
    from loadspec.strategies.static import as_static

    plain = CheckpointLayout(as_static(DEFAULT_SPEC), producer="autofp8", kv_scales={"k": 0.5})
    stored = replace(plain, linear_scale_dtype="bfloat16")
    before, after = dict(plain.tensors()), dict(stored.tensors())
    assert before.keys() == after.keys()
    linear = [n for n in before if n.endswith((".weight_scale", ".input_scale"))]
    assert any(n.endswith(".input_scale") for n in linear) and any(n.endswith(".weight_scale") for n in linear)
    for name, tensor in after.items():
        if name in linear:
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, before[name].to(torch.bfloat16)), name
        else:
            assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
    assert CheckpointLayout.from_json(stored.to_json()) == stored
    assert "linear-scales=bfloat16" in stored.summary()
    with pytest.raises(ValueError, match=r"linear_scale_dtype='fp8'.*should be None or one of"):
        replace(plain, linear_scale_dtype="fp8")
