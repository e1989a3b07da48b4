"""NAMES: every producer's checkpoint layout reaches the canonical scale parameters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadspec.conformance.assertions import assert_equal, fail
from loadspec.conformance.drivers import (
    SELF_ATTN_ONLY_PRODUCERS,
    built,
    graphs_for,
    heavy,
    is_must_producer,
    must_kv_scales,
)
from loadspec.conformance.oracle import assert_same_as_reference
from loadspec.conformance.reproducers import Case, record_case
from loadspec.reference.vocabulary import QUANT_METHODS, SCALE_KINDS
from loadspec.strategies.layouts import checkpoint_layouts
from loadspec.strategies.producers import PRODUCERS

STACKED = {".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"), ".v_proj.": (".qkv_proj.", "v"),
           ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1)}
MUST_PRODUCERS = [p for p in PRODUCERS.values() if is_must_producer(p.id)]


def name_case(producer, container, methods=None, *, case_id=None):
    """One mapping case; under ``mixer`` a self_attn-only producer is NAMES-14's (SHOULD), not its own rule's."""
    rule = "NAMES-14" if container == "mixer" and producer.id in SELF_ATTN_ONLY_PRODUCERS else producer.rule
    return pytest.param(producer.id, methods or (producer.quant_method,), container, rule,
                        marks=pytest.mark.rule(rule), id=f"{case_id or producer.id}-{container}")


NAME_CASES = [name_case(p, container) for container in ("self_attn", "mixer")
              for p in PRODUCERS.values() if p.id != "canonical"] + [
    name_case(PRODUCERS["compressed-tensors-legacy"], container, QUANT_METHODS,
              case_id="legacy-output-scale-every-config") for container in ("self_attn", "mixer")]


@pytest.mark.requires("primitives")
@pytest.mark.parametrize("producer_id, methods, container, rule", NAME_CASES)
@pytest.mark.parametrize("prefix", ["model.", "language_model.model."])
def test_names_map_to_canonical(impl, producer_id, methods, container, rule, prefix):
    producer = PRODUCERS[producer_id]
    base = f"{prefix}layers.3.{container}."
    for method in methods:
        mapper = impl.compose_mappers(impl.make_mapper(stacked=STACKED), impl.cache_scale_mapper(method))
        for kind in SCALE_KINDS:
            name = producer.scale_name(base, kind)
            if name is None:
                continue
            target = f"{base}attn.{'k' if producer.fused_kv else kind}_scale"
            assert_equal(f"{method} mapper({name!r})", impl.map_name(mapper, name), (target, None), rule)


@pytest.mark.rule("NAMES-12")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("method", QUANT_METHODS)
@pytest.mark.parametrize("suffix", ["q_proj.weight", "k_proj.weight_scale", "o_proj.input_scale", "qkv_proj.weight"])
def test_non_scale_names_pass_unchanged(impl, method, suffix):
    name = f"model.layers.0.self_attn.{suffix}"
    assert_equal(f"{method} cache-scale mapper({name!r})", impl.map_name(impl.cache_scale_mapper(method), name),
                 (name, None), "NAMES-12")


@pytest.mark.rule("NAMES-13")
@pytest.mark.requires("model", "nested_wrappers")
@heavy()
@given(data=st.data())
def test_values_load_under_any_prefix(impl, ref, request, data):
    check_producer_values(impl, ref, request, data, producers=[p.id for p in MUST_PRODUCERS],
                          rule="NAMES-13", allow_wrappers=True)


BASE_PREFIX = "model.layers.0."
OUT_OF_SCOPE = "NAMES-13 scopes out a name with no prefix at all (the engine's entries match from a leading dot)"
PREFIXES = [pytest.param(p, id=p) for p in ("language_model.model.layers.3.", "model.decoder.layers.11.",
                                            "layers.7.", "decoder.")]
PREFIXES.append(pytest.param("", id="no-prefix", marks=pytest.mark.skip(reason=OUT_OF_SCOPE)))
CONTAINERS = ["self_attn", pytest.param("mixer", marks=pytest.mark.requires("mixer_container"))]


@pytest.mark.rule("NAMES-13")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_cache_scale_mappers_ignore_the_prefix(impl, prefix, container):
    """Each MUST producer's names map under ``prefix`` as under ``model.layers.0.`` (one module is the least)."""
    for producer in MUST_PRODUCERS:
        if container == "mixer" and producer.id in SELF_ATTN_ONLY_PRODUCERS:
            continue  # NAMES-14
        mapper = impl.cache_scale_mapper(producer.quant_method)
        for kind in SCALE_KINDS:
            relative = producer.scale_name(f"{container}.", kind)
            if relative is None:
                continue
            at_base = impl.map_name(mapper, BASE_PREFIX + relative)
            expected = at_base and (prefix + at_base[0].removeprefix(BASE_PREFIX), at_base[1])
            assert_equal(f"{producer.quant_method} cache-scale mapper({prefix + relative!r}) (maps "
                         f"{BASE_PREFIX + relative!r} to {at_base!r})", impl.map_name(mapper, prefix + relative),
                         expected, "NAMES-13")


def check_producer_values(impl, ref, request, data, *, producers, rule, kv_scales=None, exact_in_model_dtype=True,
                          **graph_options):
    __tracebackhide__ = True
    producer_id = data.draw(st.sampled_from(producers), label="producer")
    producer = PRODUCERS[producer_id]
    options = dict(allow_unquantized=False, quant_methods=(producer.quant_method,),  # bf16/fp16 models too
                   kv_cache_dtypes=("fp8", "fp8_e4m3"))  # quantized: what KVPROC-9 says of auto is not a NAMES matter
    if producer_id in SELF_ATTN_ONLY_PRODUCERS:
        options["containers"] = ("self_attn",)
    options.update(graph_options)
    spec = data.draw(graphs_for(impl, **options), label="graph")
    # every kind the producer names is present (q and prob too), so only names decide the values (not
    # KVPROC-4's v-follows-k, nor KVPROC-6's default), and a loader that drops any of them fails
    named = tuple(kind for kind in SCALE_KINDS if kind in producer.scale_names)
    layout = data.draw(checkpoint_layouts(spec, producers=(producer_id,),
                                          kv_scales=kv_scales or must_kv_scales(
                                              spec.params_dtype if exact_in_model_dtype else "float32",
                                              required=named)), label="checkpoint")
    record_case(request, Case(request.node.nodeid, layouts={"base": layout}))
    got = impl.export_kernel_state(built(impl, spec, layout.tensors()))
    expected = ref.export_kernel_state(built(ref, spec, layout.tensors()))
    names = [f"{spec.attention_prefix(index)}{kind}_scale" for index in range(len(spec.layers)) for kind in SCALE_KINDS]
    assert_same_as_reference(f"KV-cache scales loaded from {producer_id} names ({layout.summary()})",
                             {name: got[name] for name in names if name in got},
                             {name: expected[name] for name in names}, rule, request=request)


@pytest.mark.requires("model")
@pytest.mark.parametrize("producer_id", [pytest.param(p.id, marks=pytest.mark.rule(p.rule), id=p.id)
                                         for p in PRODUCERS.values()])
@heavy()
@given(data=st.data())
def test_producer_values_reach_the_kernel(impl, ref, request, producer_id, data):
    rule = PRODUCERS[producer_id].rule
    check_producer_values(impl, ref, request, data, producers=[producer_id], rule=rule, attention=("mha",))


@pytest.mark.rule("SCALE-2")
@pytest.mark.requires("model", "reduced_precision_params")
@heavy()
@given(data=st.data())
def test_producer_values_in_reduced_precision_models(impl, ref, request, data):
    """Every MUST producer's scales in a bf16/fp16 model, with values the model dtype cannot hold (0.3): the
    scale parameters are float32 whatever the model's dtype [SCALE-2], so the kernel gets the reference's."""
    check_producer_values(impl, ref, request, data, producers=[p.id for p in MUST_PRODUCERS], rule="SCALE-2",
                          params_dtypes=("bfloat16", "float16"), attention=("mha",),
                          exact_in_model_dtype=False)


@pytest.mark.rule("NAMES-2")
@pytest.mark.requires("model")
@heavy()
@given(data=st.data())
def test_legacy_output_scales_under_every_config(impl, ref, request, data):
    method = data.draw(st.sampled_from(QUANT_METHODS), label="quant_method")
    check_producer_values(impl, ref, request, data, producers=["compressed-tensors-legacy"], rule="NAMES-2",
                          quant_methods=(method,), attention=("mha",))


@pytest.mark.rule("NAMES-8")
@pytest.mark.requires("model", "mla")
@heavy()
@given(data=st.data())
def test_mla_scales_load_under_every_config(impl, ref, request, data):
    method = data.draw(st.sampled_from(QUANT_METHODS), label="quant_method")
    check_producer_values(impl, ref, request, data, producers=["compressed-tensors"], rule="NAMES-8",
                          quant_methods=(method,), attention=("mla",))


@pytest.mark.rule("NAMES-9")
@pytest.mark.requires("model", "mixer_container")
@heavy()
@given(data=st.data())
def test_mixer_names(impl, ref, request, data):
    check_producer_values(impl, ref, request, data, producers=["modelopt"], rule="NAMES-9", containers=("mixer",),
                          attention=("mha",))


@pytest.mark.rule("NAMES-10")
@pytest.mark.requires("primitives")
def test_automatic_loader_merges_the_cache_scale_mapper(impl):
    import torch

    module = torch.nn.Module()
    module.self_attn = torch.nn.Module()
    module.self_attn.attn = torch.nn.Module()
    module.self_attn.attn.k_scale = torch.nn.Parameter(torch.tensor(-1.0), requires_grad=False)
    model_mapper = impl.make_mapper(prefix={"old.": ""})
    loaded = impl.auto_load(module, [("old.self_attn.k_proj.k_scale", torch.tensor(0.5))], mapper=model_mapper,
                            quant_method="modelopt")
    assert_equal("names loaded through model mapper + cache-scale mapper", set(loaded), {"self_attn.attn.k_scale"},
                 "NAMES-10")
    assert_equal("self_attn.attn.k_scale", module.self_attn.attn.k_scale.item(), 0.5, "NAMES-10")


def attention_tree():
    """A plain module tree ``model.layers.0.self_attn.attn`` holding the four scales at -1.0, and its attn."""
    import torch

    attn = torch.nn.Module()
    for name in ("q_scale", "k_scale", "v_scale", "prob_scale"):
        setattr(attn, name, torch.nn.Parameter(torch.tensor(-1.0), requires_grad=False))
    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    layer.self_attn.attn = attn
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList([layer])
    return root, attn


MERGE_CASES = [pytest.param(p.id, kind, id=f"{p.id}-{kind}") for p in MUST_PRODUCERS if p.id != "canonical"
               for kind in p.scale_names]


def assert_merged_load(impl, name: str, target: str, model_mapper, quant_method: str, what: str) -> None:
    """``auto_load`` of ``name`` (0.5) with ``model_mapper`` under ``quant_method`` loads exactly
    ``model.layers.0.self_attn.attn.<target>`` with that value [NAMES-10]."""
    import torch

    module, attn = attention_tree()
    try:
        loaded = impl.auto_load(module, [(name, torch.tensor(0.5))], mapper=model_mapper, quant_method=quant_method)
    except Exception as exc:  # noqa: BLE001 - shown, not handled
        fail(what, f"{type(exc).__name__}: {exc}", f"loads model.layers.0.self_attn.attn.{target}", "NAMES-10")
    assert_equal(f"names loaded by {what}", sorted(loaded), [f"model.layers.0.self_attn.attn.{target}"],
                 "NAMES-10")
    assert_equal(f"attn.{target} after {what}", getattr(attn, target).item(), 0.5, "NAMES-10")


DECOYS = {"regex": ".decoy_scale", "substr": ".decoy.", "prefix": "decoy.", "suffix": ".decoy_scale"}
"""What a model's mapper entry sharing a cache-scale key maps to: a name no module has (stacked: none to share)."""


def mapping_entry(impl, mapper, name: str) -> tuple[str, object] | None:
    """The first ``(stage, key)`` of ``mapper`` that alone renames ``name`` (its stages in the engine's order)."""
    for stage, entries in impl.mapper_entries(mapper).items():
        if stage not in DECOYS:
            continue
        for key in entries:
            alone = impl.make_mapper(**{stage: {key: entries[key]}})
            if impl.map_name(alone, name) != (name, None):
                return stage, key
    return None


@pytest.mark.rule("NAMES-10")
@pytest.mark.requires("primitives", "mapper_entries")
@pytest.mark.parametrize("producer_id, kind", MERGE_CASES)
def test_cache_scale_entry_wins_on_a_shared_key(impl, producer_id, kind):
    """The model's mapper has an entry with the very key of the cache-scale entry that maps the producer's name,
    mapping it to a decoy; merged on the right, the cache-scale entry wins and the scale loads. Merged on the
    left, the model's decoy wins and the scale is lost (``dict`` merge: the right side's value) [NAMES-10]."""
    producer = PRODUCERS[producer_id]
    name = producer.scale_name("model.layers.0.self_attn.", kind)
    target = f"{'k' if producer.fused_kv else kind}_scale"
    found = mapping_entry(impl, impl.cache_scale_mapper(producer.quant_method), name)
    if found is None:  # the engine maps the name nowhere: NAMES-1..9 say so
        pytest.skip(f"{impl.name}'s {producer.quant_method} cache-scale mapper has no entry renaming {name!r}")
    stage, key = found
    model_mapper = impl.make_mapper(**{stage: {key: DECOYS[stage]}})
    what = (f"auto_load({name!r}) under {producer.quant_method} with the model's mapper {{{stage}: {{{key!r}: "
            f"{DECOYS[stage]!r}}}}} (the cache-scale mapper's own key)")
    assert_merged_load(impl, name, target, model_mapper, producer.quant_method, what)


@pytest.mark.rule("NAMES-10")
@pytest.mark.requires("primitives")
@pytest.mark.parametrize("producer_id, kind", MERGE_CASES)
def test_cache_scale_mapper_runs_after_the_models_mapper(impl, producer_id, kind):
    """The model's regex renames its HF attention module ``attention`` to ``self_attn``; the cache-scale mapper,
    merged on its right, then maps the producer's name. Merged on the left, its entries run first, on the
    un-renamed name, and the scale is lost [NAMES-10]."""
    producer = PRODUCERS[producer_id]
    name = producer.scale_name("model.layers.0.attention.", kind)
    target = f"{'k' if producer.fused_kv else kind}_scale"
    model_mapper = impl.make_mapper(regex={r"\.attention\.": ".self_attn."})
    what = f"auto_load({name!r}) under {producer.quant_method} with the model's mapper {{'\\.attention\\.': " \
           "'.self_attn.'}"
    assert_merged_load(impl, name, target, model_mapper, producer.quant_method, what)
