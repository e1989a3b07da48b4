"""Quantize a float HF Llama checkpoint with the real llm-compressor (``oneshot``) on CPU: the real-tool recipes.

Runs in ``.venv-producers`` (torch, llmcompressor, compressed-tensors; no loadspec), offline
(``HF_HUB_OFFLINE=1``: the model is a local directory, the calibration set a list of sentences).
``make real-checkpoints`` drives it through ``loadspec.conformance.e2e.real_tools``; the
recipes are named there and here alike:

* ``fp8-static-tensor``: llm-compressor's ``FP8`` preset (static W8A8: per-tensor weights,
  static per-tensor input scales) with ``kv_cache_scheme`` strategy ``tensor``;
* ``fp8-static-attn-head``: the same with ``kv_cache_scheme`` strategy ``attn_head`` (one
  k/v scale per KV head);
* ``fp8-dynamic-channel-bf16``: ``FP8_DYNAMIC`` (per-channel weights, dynamic per-token
  activations) on the model in bfloat16, with per-tensor KV scales.

Usage: ``python producers/llmcompressor_fp8.py SRC OUT RECIPE CALIBRATION_FILE``; writes the
compressed checkpoint (``save_pretrained(save_compressed=True)``) and the tokenizer into OUT,
and ``OUT/producer-run.json``: tool versions, recipe, calibration samples, seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

KV_SCHEME = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False}
RECIPES = {
    "fp8-static-tensor": {"scheme": "FP8", "kv_strategy": "tensor", "dtype": "float32"},
    "fp8-static-attn-head": {"scheme": "FP8", "kv_strategy": "attn_head", "dtype": "float32"},
    "fp8-dynamic-channel-bf16": {"scheme": "FP8_DYNAMIC", "kv_strategy": "tensor", "dtype": "bfloat16"},
}


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[2] not in RECIPES:
        print(__doc__.strip().split("\n\n")[-1], file=sys.stderr)
        print(f"recipes: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    src, out, name, calibration_file = Path(argv[0]), Path(argv[1]), argv[2], Path(argv[3])
    recipe_args = RECIPES[name]
    started = time.perf_counter()

    import compressed_tensors
    import llmcompressor
    import torch
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, recipe_args["dtype"])
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    sentences = [line.strip() for line in calibration_file.read_text().splitlines() if line.strip()]
    encoded = [tokenizer(text) for text in sentences]
    dataset = Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded],
                                 "attention_mask": [e["attention_mask"] for e in encoded]})
    recipe = QuantizationModifier(targets="Linear", scheme=recipe_args["scheme"], ignore=["lm_head"],
                                  kv_cache_scheme=dict(KV_SCHEME, strategy=recipe_args["kv_strategy"]))
    loaded = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(sentences),
            shuffle_calibration_samples=False, max_seq_length=128, pipeline="basic")
    quantized = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))
    saved = time.perf_counter()
    run = {"recipe": name, **recipe_args, "kv_cache_scheme": dict(KV_SCHEME, strategy=recipe_args["kv_strategy"]),
           "calibration_samples": len(sentences), "calibration_tokens": sum(len(e["input_ids"]) for e in encoded),
           "versions": {"llmcompressor": llmcompressor.__version__,
                        "compressed-tensors": compressed_tensors.__version__, "transformers": transformers.__version__,
                        "torch": torch.__version__},
           "seconds": {"load": round(loaded - started, 2), "oneshot": round(quantized - loaded, 2),
                       "save": round(saved - quantized, 2), "total": round(saved - started, 2)}}
    (out / "producer-run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(json.dumps(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
