"""E2E: SmolLM2-135M built with dummy weights, reloaded from FP8-KV checkpoints of every producer, scored.

The scenario lives in ``loadspec.conformance.e2e``. The quantized checkpoints are cached in
the loadspec user cache, so only a machine's first run quantizes. One run per (producer,
strategy, device) serves both E2E-1 and E2E-2 (results are kept, kernel states are not).
A user checkpoint (``$LOADSPEC_CHECKPOINT``: a local directory or a Hub id) runs E2E-1 and
E2E-2 on that checkpoint too. Select these tests with ``-m e2e`` (or ``--rule E2E``), deselect
with ``-m "not e2e"``.

The tests cite E2E rules only: citing a layout's NAMES rule too would blame that rule for any
end-to-end failure (a mutant that divides KV scales would fail NAMES-2 through the
compressed-tensors-legacy case).
"""

from __future__ import annotations

import pytest

from loadspec.conformance import e2e
from loadspec.conformance.assertions import fail, skip_unless
from loadspec.conformance.report import record_measured
from loadspec.conformance.rules import RULES_BY_ID, SHOULD
from loadspec.strategies.producers import PRODUCERS

pytestmark = [pytest.mark.requires("model"), pytest.mark.e2e]


def cases(must_rule: str) -> list:
    """Every (producer, strategy) case, citing ``must_rule``, or E2E-4 where its names rule is a SHOULD."""
    return [pytest.param(producer, strategy, id=f"{producer}-{strategy}", marks=[
        pytest.mark.requires("tied_embeddings", f"fp8_per_{strategy}"),
        pytest.mark.rule("E2E-4" if RULES_BY_ID[PRODUCERS[producer].rule].level == SHOULD else must_rule)])
        for producer, strategy in e2e.CASES]


# ------------------------------------------------------------------ fixtures and shared runs
@pytest.fixture(scope="session")
def smollm():
    """The converted float SmolLM2 checkpoint (skips when the embedded model is unavailable)."""
    pytest.importorskip("gguf", reason="the gguf package (extra 'e2e') is not installed")
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    try:
        return e2e.smollm_checkpoint()
    except FileNotFoundError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="session")
def user_checkpoint(request):
    """``--checkpoint`` (else ``$LOADSPEC_CHECKPOINT``) resolved to a directory; skips when neither is given."""
    pytest.importorskip("transformers", reason="transformers (extra 'e2e') is not installed")
    value = request.config.getoption("--checkpoint")
    path = e2e.resolve_checkpoint(value) if value else e2e.checkpoint_from_env()
    if path is None:
        pytest.skip(f"no user checkpoint: pass --checkpoint <directory or org/name> (or set {e2e.CHECKPOINT_ENV})")
    return path


_RUNS: dict[tuple, object] = {}


def _shared(key: tuple, run):
    """``run()`` once per key for the whole session: its result, or the same exception again."""
    if key not in _RUNS:
        try:
            _RUNS[key] = run()
        except Exception as exc:  # noqa: BLE001 - re-raised by every test that shares the run
            _RUNS[key] = exc
    result = _RUNS[key]
    if isinstance(result, Exception):
        raise result
    return result


def smollm_run(impl, producer: str, strategy: str, device: str, *, multiplier: float = 1.0,
               fresh: bool = True) -> e2e.E2EResult:
    return _shared((id(impl), producer, strategy, multiplier, device, fresh), lambda: e2e.run_producer(
        impl, producer, device=device, weight_strategy=strategy, scale_multiplier=multiplier, fresh=fresh))


def user_run(impl, path, device: str) -> e2e.E2EResult:
    try:  # a checkpoint the check cannot score is a skip listing every reason, never the implementation failing
        info = e2e.inspect_checkpoint(path)
        spec = e2e.spec_for(info)
    except e2e.CheckpointError as exc:
        pytest.skip(f"the checkpoint cannot be scored (not a failure of {impl.name}): {exc}")
    skip_unless(impl, *e2e.required_capabilities(spec, device))
    return _shared((id(impl), str(path), device), lambda: e2e.run_reload(impl, path, device=device, spec=spec,
                                                                         info=info))


# ------------------------------------------------------------------ checks
def measured(request, result: e2e.E2EResult) -> e2e.E2EResult:
    """``result``, its perplexities and compared scales recorded for the report's E2E rows."""
    record_measured(request, result.measured())
    return result


def _what(result: e2e.E2EResult) -> str:
    what = f"perplexity after dummy load + reload of the {result.label()} checkpoint ({result.device})"
    mismatches = result.kv_scale_mismatches()
    if mismatches:
        name, got, expected = mismatches[0]
        what += f" [{len(mismatches)} exported k/v scales are not the checkpoint's, e.g. {name} x{got / expected:g}]"
    return what


def check_low_perplexity(result: e2e.E2EResult) -> None:
    __tracebackhide__ = True
    mismatches = result.scale_mismatches()  # every k/v, weight and input scale vs the file: a silent 1.0 fails
    if mismatches:
        name, got, expected = mismatches[0]
        fail(f"{name} after dummy load + reload of the {result.label()} checkpoint ({len(mismatches)} of the scales "
             f"compared ({result.scales_compared}) differ from the file's)", got, expected, "E2E-1")
    if not result.perplexity < e2e.MAX_PERPLEXITY:
        fail(_what(result), round(result.perplexity, 4), f"< {e2e.MAX_PERPLEXITY}", "E2E-1")


def check_same_as_fresh(result: e2e.E2EResult) -> None:
    __tracebackhide__ = True
    if result.differences:
        name, how = next(iter(result.differences.items()))
        fail(f"{name} after dummy load + reload of the {result.label()} checkpoint "
             f"({len(result.differences)} kernel tensors differ from a fresh load)", how,
             "bit-identical to a fresh load", "E2E-2")
    if result.perplexity != result.fresh_perplexity:
        fail(f"perplexity after dummy load + reload of the {result.label()} checkpoint", result.perplexity,
             result.fresh_perplexity, "E2E-2")


# ------------------------------------------------------------------ SmolLM2, every producer layout
@pytest.mark.parametrize("producer, strategy", cases("E2E-1"))
def test_reloaded_model_scores_low_perplexity(impl, smollm, producer, strategy, device, request):
    check_low_perplexity(measured(request, smollm_run(impl, producer, strategy, device)))


@pytest.mark.parametrize("producer, strategy", cases("E2E-2"))
def test_reload_equals_a_fresh_load(impl, smollm, producer, strategy, device, request):
    check_same_as_fresh(measured(request, smollm_run(impl, producer, strategy, device)))


@pytest.mark.rule("E2E-3")
@pytest.mark.requires("tied_embeddings", "fp8_per_tensor")
def test_kv_scales_divided_by_16_blow_up(impl, smollm, device):
    producer, strategy = e2e.BROKEN_CASE
    result = smollm_run(impl, producer, strategy, device, multiplier=e2e.BROKEN_SCALE_MULTIPLIER, fresh=False)
    mismatches = result.kv_scale_mismatches()
    if mismatches:
        name, got, expected = mismatches[0]
        fail(f"{name} after dummy load + reload of the {result.label()} checkpoint ({len(mismatches)} of "
             f"{2 * len(result.kv_scales)} k/v scales differ from the checkpoint's)", got, expected, "E2E-3")
    if not result.perplexity > e2e.BLOWUP_PERPLEXITY:
        fail(_what(result), round(result.perplexity, 4), f"> {e2e.BLOWUP_PERPLEXITY}", "E2E-3")


# ------------------------------------------------------------------ a user checkpoint
@pytest.mark.rule("E2E-1")
def test_user_checkpoint_scores_low_perplexity(impl, user_checkpoint, device, request):
    check_low_perplexity(measured(request, user_run(impl, user_checkpoint, device)))


@pytest.mark.rule("E2E-2")
def test_user_checkpoint_reload_equals_a_fresh_load(impl, user_checkpoint, device, request):
    check_same_as_fresh(measured(request, user_run(impl, user_checkpoint, device)))
