"""What a checkpoint's quantization config says, read the way engines read it [STATIC-1, HEADS-1, E2E-1].

``infer_scheme(config, hf_quant_config)`` reads ``config.json``'s ``quantization_config`` (and
ModelOpt's ``hf_quant_config.json``, which vLLM's ``ModelOptFp8Config.from_config`` reads when
``quantization_config`` is absent) into a ``Scheme``: FP8 weights per tensor or per channel,
activations static (``input_scale`` per linear) or dynamic (or weight-only), the KV-cache scale
strategy (``tensor`` or compressed-tensors ``attn_head``), the modules left unquantized, and
the checkpoint's dtype (``dtype``, transformers >= 5; ``torch_dtype`` before), in which the
model is built. Every unknown or unsupported field is collected and raised at once in one
``SchemeError``. Whether activations are static, the KV-scale strategy and the dtype are the
reference's decisions (``reference.quant_config.activation_scheme_of``, ``kv_scale_strategy_of``,
``checkpoint_dtype_of``); this module adds every other field and the all-at-once listing.

Facts per format (vLLM 0.33.0, ``model_executor/layers/quantization/``):

* compressed-tensors (``compressed_tensors/compressed_tensors.py``
  ``CompressedTensorsConfig.from_config``): ``config_groups.*.{targets, weights,
  input_activations, output_activations, format}``, ``ignore``, ``kv_cache_scheme``;
  ``_is_fp8_w8a8`` wants float/8-bit symmetric static weights, strategy tensor or channel,
  and input activations either dynamic (per token or tensor) or static per tensor; no input
  activations is weight-only FP8 (``CompressedTensorsW8A16Fp8``). Written by llm-compressor
  0.14.0.1 / compressed-tensors 0.19.0 as ``reports/e2e/real-tools/*.json`` records it;
* fp8 (``fp8.py`` ``Fp8Config.from_config``): ``activation_scheme`` ``static``/``dynamic``,
  ``ignored_layers``, ``weight_block_size`` (block-wise: not covered here);
* modelopt (``modelopt.py`` ``ModelOptFp8Config``): ``quant_algo: FP8`` is always static W8A8,
  ``kv_cache_quant_algo``, ``exclude_modules``;
* quark (``quark/quark.py`` ``QuarkConfig``): ``global_quant_config.{weight, input_tensors,
  output_tensors}``, ``layer_quant_config``, ``exclude``, ``export.kv_cache_group``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadspec.reference.errors import UnsupportedSchemeError
from loadspec.reference.quant_config import activation_scheme_of, checkpoint_dtype_of, kv_scale_strategy_of
from loadspec.reference.spec import ModelSpec

HF_QUANT_CONFIG = "hf_quant_config.json"
"""ModelOpt's own quantization file beside ``config.json``."""
UNQUANTIZED_MODULES = ("lm_head",)
"""The only modules a checkpoint may leave unquantized here: the built model has no FP8 ``lm_head`` (it is tied or
float), so ignoring it changes nothing; any other ignore entry would need a partly quantized model."""

# compressed-tensors QuantizationArgs fields (compressed-tensors 0.19.0) and the ones engines never read
_CT_ARGS = {"num_bits", "type", "symmetric", "group_size", "strategy", "block_structure", "dynamic", "actorder",
            "observer", "observer_kwargs", "scale_dtype", "zp_dtype"}
_CT_TOP = {"quant_method", "format", "config_groups", "ignore", "kv_cache_scheme", "quantization_status", "version",
           "global_compression_ratio", "sparsity_config", "transform_config"}
_CT_GROUP = {"targets", "weights", "input_activations", "output_activations", "format"}
_FP8_TOP = {"quant_method", "activation_scheme", "ignored_layers", "modules_to_not_convert", "weight_block_size",
            "kv_cache_scheme", "kv_cache_quant_targets", "is_checkpoint_fp8_serialized",
            "weight_strategy"}  # weight_strategy: loadspec's own per-channel fixture field, not AutoFP8's
_MODELOPT_TOP = {"quant_method", "quant_algo", "kv_cache_quant_algo", "exclude_modules", "kv_cache_scheme", "producer",
                 "ignore", "group_size"}
_QUARK_TOP = {"quant_method", "global_quant_config", "layer_quant_config", "layer_type_quant_config", "exclude",
              "export", "algo_config", "quant_mode", "version", "softmax_quant_spec", "kv_cache_group"}
_QUARK_SPEC = {"dtype", "qscheme", "is_dynamic", "observer_cls", "symmetric", "round_method", "scale_type",
               "ch_axis", "group_size", "scale_format", "scale_calculation_mode", "mx_element_dtype", "is_scale_quant"}


class SchemeError(ValueError):
    """A quantization config this check cannot build a model of; ``problems`` lists every reason."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where, self.problems = where, list(problems)
        super().__init__(f"{where}: {len(self.problems)} unsupported or unknown field(s): " + "; ".join(self.problems))


@dataclass(frozen=True)
class Scheme:
    """What the checkpoint's config says about its linears, activations, KV-cache scales and dtype."""

    quant_method: str | None  # None: not quantized
    linear_quant: str = "none"  # "none", "fp8_per_tensor" or "fp8_per_channel"
    activation_scheme: str | None = None  # "static" (input_scale per linear), "dynamic", None (weight-only / none)
    kv_cache_strategy: str | None = None  # "tensor", "attn_head", None: the config asks for no KV-cache scales
    ignore: tuple[str, ...] = ()
    params_dtype: str = "float32"
    source: str = "config.json"

    @property
    def static_inputs(self) -> bool:
        """Whether every FP8 linear of the checkpoint must carry a static ``input_scale`` [STATIC-1]."""
        return self.activation_scheme == "static"

    def summary(self) -> dict[str, Any]:
        """The fields ``loadspec check`` prints."""
        return {"quant_method": self.quant_method, "weights": self.linear_quant,
                "activations": self.activation_scheme or ("weight-only" if self.quant_method else None),
                "kv_cache_scales": self.kv_cache_strategy, "ignore": list(self.ignore), "dtype": self.params_dtype,
                "source": self.source}

    def spec_overrides(self) -> dict[str, Any]:
        """``ModelSpec`` fields of this scheme; a ``SchemeError`` when the spec has no field for what it says."""
        fields = {f.name for f in dataclasses.fields(ModelSpec)}
        out: dict[str, Any] = {"quant_method": self.quant_method, "params_dtype": self.params_dtype}
        missing = []
        if self.activation_scheme is not None and self.quant_method is not None:
            if "activation_scheme" in fields:
                out["activation_scheme"] = self.activation_scheme
            elif self.static_inputs:
                missing.append("static activation scales (ModelSpec has no activation_scheme field)")
        if self.kv_cache_strategy not in (None, "tensor"):
            if "kv_scale_strategy" in fields:
                out["kv_scale_strategy"] = self.kv_cache_strategy
            else:
                missing.append(f"kv_cache_scheme.strategy={self.kv_cache_strategy!r} (ModelSpec has no "
                               f"kv_scale_strategy field: this loadspec builds per-tensor KV-cache scales only)")
        if missing:
            raise SchemeError("ModelSpec", missing)
        return out


# ------------------------------------------------------------------ helpers
def _unknown(obj: dict[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    problems.extend(f"{where}.{key}: unknown field" for key in sorted(set(obj) - known))


def _obj(value: object, where: str, problems: list[str]) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{where} is a {type(value).__name__}, but should be an object")
        return None
    return value


def _ignore(value: object, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}={value!r}, but should be a list of module names")
        return ()
    for name in value:
        if name.removeprefix("re:").strip(".*$^") not in UNQUANTIZED_MODULES:
            problems.append(f"{where} lists {name!r}: only {UNQUANTIZED_MODULES} may stay unquantized (a partly "
                            f"quantized model is not built)")
    return tuple(value)


def dtype_of(config: dict[str, Any], problems: list[str]) -> str:
    """The checkpoint's dtype name (``reference.quant_config.checkpoint_dtype_of``: ``dtype``, else ``torch_dtype``,
    else float32) [DTYPE-1]; an unsupported one is added to ``problems`` and read as float32."""
    try:
        return checkpoint_dtype_of(config)
    except UnsupportedSchemeError as exc:
        problems.append(str(exc))
        return "float32"


# ------------------------------------------------------------------ compressed-tensors
def _ct_args(args: dict[str, Any], where: str, problems: list[str], *, strategies: tuple[str, ...],
             dynamic: bool | None) -> None:
    """Check one compressed-tensors ``QuantizationArgs``: float 8-bit symmetric, ``strategy`` in ``strategies``."""
    _unknown(args, _CT_ARGS, where, problems)
    if args.get("type") != "float" or args.get("num_bits") != 8:
        problems.append(f"{where}: {args.get('type')}/{args.get('num_bits')} bits, but only float/8 (FP8 e4m3)")
    if args.get("symmetric", True) is not True:
        problems.append(f"{where}.symmetric={args.get('symmetric')!r}: asymmetric FP8 is not supported")
    if args.get("strategy") not in strategies:
        problems.append(f"{where}.strategy={args.get('strategy')!r}, but should be one of {strategies}")
    if dynamic is not None and args.get("dynamic", False) is not dynamic:
        problems.append(f"{where}.dynamic={args.get('dynamic')!r}, but should be {dynamic}")
    for key in ("group_size", "block_structure", "actorder", "scale_dtype", "zp_dtype"):
        if args.get(key) is not None:
            problems.append(f"{where}.{key}={args[key]!r}: not supported (only null)")


def _compressed_tensors(q: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    _unknown(q, _CT_TOP, "quantization_config", problems)
    if q.get("format", "float-quantized") != "float-quantized":
        problems.append(f"quantization_config.format={q.get('format')!r}, but only 'float-quantized'")
    for key in ("sparsity_config", "transform_config"):
        if q.get(key):
            problems.append(f"quantization_config.{key} is not empty: sparse or transformed models are not supported")
    groups = _obj(q.get("config_groups"), "quantization_config.config_groups", problems) or {}
    if not groups:
        problems.append("quantization_config.config_groups is empty: no quantized linears")
    seen: set[tuple[str, str | None]] = set()
    for name, raw in sorted(groups.items()):
        where = f"config_groups.{name}"
        group = _obj(raw, where, problems)
        if group is None:
            continue
        _unknown(group, _CT_GROUP, where, problems)
        if group.get("targets") != ["Linear"]:
            problems.append(f"{where}.targets={group.get('targets')!r}, but only ['Linear'] (every linear)")
        if group.get("format") not in (None, "float-quantized"):
            problems.append(f"{where}.format={group.get('format')!r}, but only 'float-quantized'")
        if group.get("output_activations") is not None:
            problems.append(f"{where}.output_activations: output quantization is not supported")
        weights = _obj(group.get("weights"), f"{where}.weights", problems)
        if weights is None:
            problems.append(f"{where}.weights is absent: activation-only quantization is not supported")
            continue
        _ct_args(weights, f"{where}.weights", problems, strategies=("tensor", "channel"), dynamic=False)
        inputs = _obj(group.get("input_activations"), f"{where}.input_activations", problems)
        activation = None
        if inputs is not None:
            dynamic = inputs.get("dynamic")
            if dynamic not in (True, False):
                problems.append(f"{where}.input_activations.dynamic={dynamic!r}, but should be true or false")
            activation = "dynamic" if dynamic is not False else "static"
            _ct_args(inputs, f"{where}.input_activations", problems,
                     strategies=("token", "tensor") if dynamic is not False else ("tensor",), dynamic=None)
        seen.add((str(weights.get("strategy")), activation))
    if len(seen) > 1:
        problems.append(f"config_groups disagree ({sorted(seen, key=str)}): mixed schemes are not supported")
    strategy, activation = next(iter(seen)) if seen else ("tensor", None)
    kv = _obj(q.get("kv_cache_scheme"), "quantization_config.kv_cache_scheme", problems)
    kv_strategy = None
    if kv is not None:
        _ct_args(kv, "kv_cache_scheme", problems, strategies=("tensor", "attn_head"), dynamic=False)
        kv_strategy = kv.get("strategy") if kv.get("strategy") in ("tensor", "attn_head") else None
    return dict(linear_quant="fp8_per_channel" if strategy == "channel" else "fp8_per_tensor",
                activation_scheme=activation, kv_cache_strategy=kv_strategy,
                ignore=_ignore(q.get("ignore"), "quantization_config.ignore", problems))


# ------------------------------------------------------------------ fp8, modelopt, quark
def _fp8(q: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    _unknown(q, _FP8_TOP, "quantization_config", problems)
    scheme = q.get("activation_scheme", "dynamic")
    if scheme not in ("static", "dynamic"):
        problems.append(f"quantization_config.activation_scheme={scheme!r}, but should be 'static' or 'dynamic'")
    if q.get("weight_block_size"):
        problems.append(f"quantization_config.weight_block_size={q['weight_block_size']!r}: block-wise FP8 weights "
                        f"are not supported")
    strategy = q.get("weight_strategy", "tensor")
    if strategy not in ("tensor", "channel"):
        problems.append(f"quantization_config.weight_strategy={strategy!r}, but should be 'tensor' or 'channel'")
    ignore = _ignore(q.get("ignored_layers", q.get("modules_to_not_convert")), "quantization_config.ignored_layers",
                     problems)
    return dict(linear_quant="fp8_per_channel" if strategy == "channel" else "fp8_per_tensor",
                activation_scheme=scheme if scheme in ("static", "dynamic") else None, kv_cache_strategy="tensor",
                ignore=ignore)


def _modelopt(q: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    _unknown(q, _MODELOPT_TOP, "quantization_config", problems)
    if q.get("quant_algo") != "FP8":
        problems.append(f"quant_algo={q.get('quant_algo')!r}, but only 'FP8' (per-tensor static W8A8)")
    kv_algo = q.get("kv_cache_quant_algo")
    if kv_algo not in (None, "FP8"):
        problems.append(f"kv_cache_quant_algo={kv_algo!r}, but only 'FP8' or null")
    ignore = _ignore(q.get("exclude_modules", q.get("ignore")), "quantization_config.exclude_modules", problems)
    return dict(linear_quant="fp8_per_tensor", activation_scheme="static",
                kv_cache_strategy="tensor" if kv_algo == "FP8" or q.get("kv_cache_scheme") else None, ignore=ignore)


def _quark_spec(spec: dict[str, Any], where: str, problems: list[str], *, qschemes: tuple[str, ...]) -> None:
    _unknown(spec, _QUARK_SPEC, where, problems)
    if spec.get("dtype") != "fp8_e4m3":
        problems.append(f"{where}.dtype={spec.get('dtype')!r}, but only 'fp8_e4m3'")
    if spec.get("qscheme") not in qschemes:
        problems.append(f"{where}.qscheme={spec.get('qscheme')!r}, but should be one of {qschemes}")


def _quark(q: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    _unknown(q, _QUARK_TOP, "quantization_config", problems)
    glob = _obj(q.get("global_quant_config"), "global_quant_config", problems) or {}
    weight = _obj(glob.get("weight"), "global_quant_config.weight", problems) or {}
    _quark_spec(weight, "global_quant_config.weight", problems, qschemes=("per_tensor", "per_channel"))
    if weight.get("is_dynamic", False) is not False:
        problems.append("global_quant_config.weight.is_dynamic is true: dynamic weights are not supported")
    inputs = _obj(glob.get("input_tensors"), "global_quant_config.input_tensors", problems)
    activation = None
    if inputs is not None:
        dynamic = inputs.get("is_dynamic", False)
        activation = "dynamic" if dynamic else "static"
        _quark_spec(inputs, "global_quant_config.input_tensors", problems,
                    qschemes=("per_tensor", "per_channel") if dynamic else ("per_tensor",))
    if glob.get("output_tensors") is not None:
        problems.append("global_quant_config.output_tensors: output quantization of every linear is not supported")
    kv_group = (_obj(q.get("export"), "export", problems) or {}).get("kv_cache_group") or []
    layer = _obj(q.get("layer_quant_config"), "layer_quant_config", problems) or {}
    for pattern, raw in sorted(layer.items()):
        entry = _obj(raw, f"layer_quant_config.{pattern}", problems) or {}
        if pattern not in kv_group:
            problems.append(f"layer_quant_config.{pattern}: per-layer overrides outside export.kv_cache_group are "
                            f"not supported")
        out = _obj(entry.get("output_tensors"), f"layer_quant_config.{pattern}.output_tensors", problems)
        if out is not None:
            _quark_spec(out, f"layer_quant_config.{pattern}.output_tensors", problems, qschemes=("per_tensor",))
    return dict(linear_quant="fp8_per_channel" if weight.get("qscheme") == "per_channel" else "fp8_per_tensor",
                activation_scheme=activation, kv_cache_strategy="tensor" if kv_group else None,
                ignore=_ignore(q.get("exclude"), "quantization_config.exclude", problems))


_READERS = {"compressed-tensors": _compressed_tensors, "fp8": _fp8, "modelopt": _modelopt, "quark": _quark}


def _from_hf_quant_config(hf: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """ModelOpt's ``hf_quant_config.json`` (``{"producer": ..., "quantization": {...}}``) as a quantization_config."""
    raw_producer = hf.get("producer")
    producer: dict[str, Any] = raw_producer if isinstance(raw_producer, dict) else {}
    quantization = _obj(hf.get("quantization"), f"{HF_QUANT_CONFIG}.quantization", problems)
    if quantization is None:
        problems.append(f"{HF_QUANT_CONFIG} has no 'quantization' object")
        return None
    if producer.get("name", "modelopt") != "modelopt":
        problems.append(f"{HF_QUANT_CONFIG}.producer.name={producer.get('name')!r}, but only 'modelopt'")
    return dict(quantization, quant_method="modelopt")


def infer_scheme(config: dict[str, Any], hf_quant_config: dict[str, Any] | None = None) -> Scheme:
    """The ``Scheme`` of a checkpoint from ``config.json`` (and ``hf_quant_config.json``); one ``SchemeError``
    lists every unknown or unsupported field."""
    problems: list[str] = []
    params_dtype = dtype_of(config, problems)
    qconfig, source = config.get("quantization_config"), "config.json"
    if not qconfig and hf_quant_config is not None:
        qconfig, source = _from_hf_quant_config(hf_quant_config, problems), HF_QUANT_CONFIG
    if qconfig is not None and not isinstance(qconfig, dict):
        problems.append(f"quantization_config is a {type(qconfig).__name__}, but should be an object")
        qconfig = None
    scheme = Scheme(quant_method=None, params_dtype=params_dtype, source=source)
    if qconfig:
        method = qconfig.get("quant_method")
        reader = _READERS.get(method) if isinstance(method, str) else None
        if reader is None:
            problems.append(f"quant_method={method!r}, but should be one of {tuple(_READERS)}")
        else:
            fields = reader(qconfig, problems)
            try:  # the reference's decisions are the ones [STATIC-1, HEADS-1]; this module adds the listing
                if fields["activation_scheme"] is not None:
                    fields["activation_scheme"] = activation_scheme_of(qconfig)
                if fields["kv_cache_strategy"] is not None:
                    fields["kv_cache_strategy"] = kv_scale_strategy_of(qconfig)
            except UnsupportedSchemeError as exc:
                if not any(str(exc) in p or p in str(exc) for p in problems):
                    problems.append(str(exc))
            scheme = Scheme(quant_method=method, params_dtype=params_dtype, source=source, **fields)
    if problems:
        raise SchemeError(source, problems)
    return scheme


def kv_strategy_hint(config: dict[str, Any], scheme: Scheme | None) -> str | None:
    """The KV-scale strategy to judge scale tensors by: the scheme's, else (the config has other problems) what
    ``kv_cache_scheme.strategy`` says, so one bad field elsewhere does not turn every per-head scale into a problem."""
    if scheme is not None:
        return scheme.kv_cache_strategy
    qconfig = config.get("quantization_config")
    kv = qconfig.get("kv_cache_scheme") if isinstance(qconfig, dict) else None
    return kv.get("strategy") if isinstance(kv, dict) and kv.get("strategy") in ("tensor", "attn_head") else None


def read_scheme(path: str | Path, config: dict[str, Any]) -> Scheme:
    """``infer_scheme`` of checkpoint directory ``path`` whose ``config.json`` is ``config``."""
    hf_file = Path(path) / HF_QUANT_CONFIG
    hf = None
    if hf_file.is_file():
        try:
            hf = json.loads(hf_file.read_text())
        except (OSError, ValueError) as exc:
            raise SchemeError(str(hf_file), [f"unreadable: {exc}"]) from None
        if not isinstance(hf, dict):
            raise SchemeError(str(hf_file), [f"is a JSON {type(hf).__name__}, not an object"])
    return infer_scheme(config, hf)


__all__ = ["HF_QUANT_CONFIG", "UNQUANTIZED_MODULES", "Scheme", "SchemeError", "infer_scheme", "read_scheme",
           "dtype_of", "kv_strategy_hint"]
