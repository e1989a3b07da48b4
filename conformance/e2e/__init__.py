"""End-to-end tooling [E2E-1..3]: a real model (SmolLM2-135M, embedded) reloaded from FP8-KV checkpoints.

Modules, in the order a run uses them:

* ``cache``: the user cache and its one atomic-write protocol;
* ``smollm``: the embedded SmolLM2 GGUF converted to a Hugging Face checkpoint;
* ``quantizer``: the FP8 producer (weights, calibrated KV and input scales, each producer's layout);
* ``quantized_cache``: the quantized SmolLM2 checkpoints, written once per machine;
* ``spec_inference``: the checkpoint's config read as engines read it (weights, activations, KV strategy, dtype);
* ``checkpoints``: user checkpoints (directory or Hub id) and what the check can score;
* ``forward``: the Llama scorer over an exported kernel state, with FP8 KV-cache emulation;
* ``scales``: every scale of the file as a loader must export it (compared after each run);
* ``run``: one run through an adapter and its ``E2EResult``;
* ``real_tools``: checkpoints written by the real llm-compressor (``make real-checkpoints``);
* ``cli``: ``python -m loadspec.conformance.e2e``.

Every model is loaded through an adapter (the reference is one): there is no private reader.
"""

from loadspec.conformance.e2e.checkpoints import (
    CHECKPOINT_ENV,
    KV_CACHE_DTYPE,
    CheckpointError,
    CheckpointInfo,
    checkpoint_from_env,
    inspect_checkpoint,
    load_tokenizer,
    required_capabilities,
    resolve_checkpoint,
    smollm_spec_for,
    spec_for,
)
from loadspec.conformance.e2e.cli import format_results, main
from loadspec.conformance.e2e.quantized_cache import (
    cache_dir,
    quantized_checkpoint,
    quantizer_fingerprint,
    smollm_checkpoint,
    source_fingerprint,
)
from loadspec.conformance.e2e.run import (
    BLOWUP_PERPLEXITY,
    BROKEN_CASE,
    BROKEN_SCALE_MULTIPLIER,
    CASES,
    MAX_PERPLEXITY,
    PREFIX,
    PRODUCER_IDS,
    TEXT,
    E2EResult,
    exported_kv_scales,
    load_kernel_state,
    run_check,
    run_producer,
    run_reload,
)
from loadspec.conformance.e2e.scales import expected_scales, scale_mismatches
from loadspec.conformance.e2e.spec_inference import Scheme, SchemeError, infer_scheme, read_scheme
from loadspec.conformance.e2e.threads import THREADS_ENV, cpu_threads

__all__ = ["TEXT", "PREFIX", "KV_CACHE_DTYPE", "MAX_PERPLEXITY", "BLOWUP_PERPLEXITY", "BROKEN_SCALE_MULTIPLIER",
           "PRODUCER_IDS", "CASES", "BROKEN_CASE", "CHECKPOINT_ENV", "THREADS_ENV", "CheckpointError", "CheckpointInfo",
           "E2EResult", "cpu_threads", "inspect_checkpoint", "spec_for", "smollm_spec_for", "required_capabilities",
           "resolve_checkpoint", "checkpoint_from_env", "load_tokenizer", "smollm_checkpoint", "cache_dir",
           "source_fingerprint", "quantizer_fingerprint", "quantized_checkpoint", "exported_kv_scales",
           "load_kernel_state", "run_reload", "run_producer", "run_check", "format_results", "main",
           "Scheme", "SchemeError", "infer_scheme", "read_scheme", "expected_scales", "scale_mismatches"]
