"""``--device`` (the suite's one device) and the benchmark summary's regression compare."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loadspec.conformance.benchmarks import harness, summary
from loadspec.conformance.report import RuleReport

SUITE_TEST = """
import pytest
from loadspec.conformance.drivers import run_device

@pytest.mark.rule("SCALE-1")
def test_scale(impl, device):
    assert device == run_device()
    assert impl.new_scale_parameter(device=device).device.type == device
"""


def run(pytester, *args, env=None):
    pytester.makepyfile(test_suite=SUITE_TEST)
    for key, value in (env or {}).items():
        pytester._monkeypatch.setenv(key, value)
    return pytester.runpytest_subprocess("-p", "loadspec.conformance.plugin", "-p", "no:cacheprovider", *args)


@pytest.mark.slow
def test_unknown_device_is_a_usage_error(pytester):
    result = run(pytester, "--device=tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loadspec: --device='tpu': not a device; choose one of cpu, cuda*"])


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error_naming_the_device(pytester):
    result = run(pytester, env={"LOADSPEC_DEVICE": "cuda"})
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*loadspec: $LOADSPEC_DEVICE=cuda: no CUDA device on this machine*"])


@pytest.mark.slow
def test_cuda_needs_the_adapters_capability(pytester, monkeypatch):
    pytester.makepyfile(cpu_only="""
from loadspec.conformance.adapters.reference import ReferenceAdapter

class Adapter(ReferenceAdapter):
    name = "cpu-only"
    capabilities = frozenset(ReferenceAdapter.capabilities) - {"cuda"}
""")
    pytester.makeconftest("""
import torch
torch.cuda.is_available = lambda: True  # a GPU, as far as the plugin can tell
""")
    result = run(pytester, "--impl=cpu_only", "--device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device=cuda: cpu-only does not declare capability 'cuda'*"])


@pytest.mark.slow
def test_header_and_report_record_the_device(pytester):
    result = run(pytester, "--loadspec-report", str(pytester.path / "out"))
    result.stdout.fnmatch_lines(["loadspec: device: cpu"])
    document = json.loads((pytester.path / "out" / "conformance.json").read_text())
    assert document["platform"]["device"] == "cpu"
    assert "Device: cpu." in (pytester.path / "out" / "conformance.md").read_text()


def test_report_names_the_gpu():
    report = RuleReport({"name": "x"}, {"device": "cuda", "gpu": "NVIDIA H200", "cuda": "13.0"})
    assert report.as_json()["platform"]["gpu"] == "NVIDIA H200"
    assert "Device: cuda (NVIDIA H200, CUDA 13.0)." in report.as_markdown()


# ------------------------------------------------------------------ benchmarks
def _document(ratio=0.5, gib_s=20.0, peak=0, gpu="NVIDIA H200"):
    case = {"case": "throughput", "variant": "bf16", "tensors": 10, "bytes": harness.GIB, "seconds": 1 / gib_s,
            "gib_s": gib_s, "ratio": ratio, "peak_extra_bytes": peak, "correct": True}
    return {"device": {"device": "cuda", "gpu": gpu}, "size": "full", "cases": [case]}


def test_compare_passes_within_the_threshold_and_fails_beyond_it():
    base = _document()
    assert summary.compare(base, _document(ratio=0.45, gib_s=18.5), 0.25)[0] == []
    regressions, _ = summary.compare(base, _document(ratio=0.3, gib_s=12.0), 0.25)
    assert [r.split(":")[0] for r in regressions] == ["throughput[bf16] ratio to ceiling", "throughput[bf16] GiB/s"]
    assert summary.compare(base, _document(peak=harness.GIB), 0.25)[0]  # memory grew
    assert summary.compare(base, _document(gib_s=5.0, gpu="other"), 0.25)[0] == []  # GiB/s only on one GPU


def test_compare_fails_on_a_case_missing_unless_allowed():
    base, new = _document(), copy.deepcopy(_document())
    new["cases"] = []
    assert summary.compare(base, new, 0.25)[0]
    assert summary.compare(base, new, 0.25, allow_missing=True)[0] == []


def test_fit_recovers_a_line():
    line = summary.fit([(x, 2e-4 * x + 0.01) for x in (100, 200, 400, 800)])
    assert line is not None and abs(line["slope"] - 2e-4) < 1e-12 and abs(line["intercept"] - 0.01) < 1e-9


def test_buckets_cut_at_the_size_and_keep_order():
    weights = [(f"t{i}", torch.zeros(harness.MIB // 4, dtype=torch.uint8)) for i in range(9)]
    parts = harness.buckets(weights, 1)
    assert [len(p) for p in parts] == [4, 4, 1]
    assert [name for part in parts for name, _ in part] == [name for name, _ in weights]


@pytest.mark.slow
def test_the_suite_does_not_collect_the_benchmarks_unless_named():
    root = Path(__file__).resolve().parents[1]

    def collected(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--loadspec-report=none", *args],
                              cwd=root, capture_output=True, text=True, timeout=300).stdout

    assert "conformance/benchmarks" not in collected("conformance", "-k", "test_scale or benchmark")
    assert "conformance/benchmarks/test_reload_benchmarks.py::test_throughput" in collected("conformance/benchmarks")


def test_largest_layer_bytes_counts_fused_projections_as_one_layer():
    dims = harness.Dims(hidden=16, intermediate=32, heads=2, kv_heads=1, head_dim=8, vocab=8, layers=1)
    spec = harness.llama_spec(dims, params_dtype="float32")
    weights = harness.checkpoint(spec, "cpu")
    gate_up = sum(t.nbytes for n, t in weights if n.endswith(("gate_proj.weight", "up_proj.weight")))
    assert harness.largest_layer_bytes(spec, weights) == gate_up == 2 * 32 * 16 * 4  # [issue 12: peak memory]


def test_summary_shows_peak_memory_against_the_largest_layer():
    result = harness.Result("delivery", "shuffled", 3, 1024, 0.5, 0.25, "copy", peak_extra_bytes=512,
                            state_bytes=1024, correct=True, largest_layer_bytes=256)
    case = result.as_json()
    assert case["peak_extra_per_largest_layer"] == 2.0
    document = {"device": {"device": "cpu"}, "versions": {}, "implementation": {"name": "x", "version": "1"},
                "size": "quick", "generated": "now", "cases": [case], "fits": {}}
    assert "(0.50×; 2.00× layer)" in summary.markdown(document)


def test_interleaved_times_every_adapter_and_the_copy_loop_on_the_same_cases():
    from loadspec.conformance.adapters.reference import ReferenceAdapter
    from loadspec.conformance.benchmarks import interleaved

    document = interleaved.measure(["reference"], "quick", rounds=1, cases=("bf16",))
    (case,) = document["cases"]
    assert sorted(case["min_seconds"]) == ["copy loop", f"reference {ReferenceAdapter().version}"]
    assert "| bf16 | 25 |" in interleaved.markdown(document)
