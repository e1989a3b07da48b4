#!/usr/bin/env bash
# One device call (how reports/benchmarks/reference-cuda was made, 2026-12-01): the CUDA suite and the reload
# tests on the reference, the CUDA benchmarks at full size, a device profile, then the benchmarks again with the
# previous reload ($BEFORE_RELOAD, e.g. `git show bd5d521~1:reference/reload.py`) on a subset. Run from the
# repository root on the GPU machine with $OUT set; results: $OUT/results.tgz, re-packed after every step.
set -u
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
ROOT=$PWD; R=/tmp/res; mkdir -p $R/after $R/before /tmp/site/loadspec
for p in reference strategies conformance; do ln -sfn $ROOT/$p /tmp/site/loadspec/$p; done
export PYTHONPATH=/tmp/site
pack() { tar czf $OUT/results.tgz -C $R . ; }
python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.get_num_threads())'
start=$(date +%s); el() { echo "[$(( $(date +%s) - start )) s] $*"; }
if [ "${SUITE:-1}" = 1 ]; then
  timeout 140 python3 -m pytest conformance --impl=reference --device cuda --loadspec-report=$R/suite -q -p no:warnings \
    -m "not e2e" 2>&1 | tail -4
  timeout 50 python3 -m pytest tests/test_copy_counter.py tests/test_reload.py tests/test_reload_kept_tensors.py \
    tests/test_transactional_reload.py --device cuda -q -p no:warnings --loadspec-report=none 2>&1 | tail -2
  el suite; pack
fi
timeout 250 python3 -m pytest conformance/benchmarks --impl=reference --device cuda --loadspec-bench-size=full \
  --loadspec-bench-dir=$R/after --benchmark-json=$R/after/benchmark.json -q -p no:warnings 2>&1 | tail -3
el after; pack
timeout 80 python3 reports/benchmarks/profiles/gpuprof.py fp8_per_tensor fp8_per_channel bf16 > $R/gpuprof.txt 2>&1; grep "==" $R/gpuprof.txt
el prof; pack
cp reference/reload.py /tmp/reload_after.py; cp "${BEFORE_RELOAD:-.h1-gpu/reload_before.py}" reference/reload.py
timeout 120 python3 -m pytest conformance/benchmarks --impl=reference --device cuda --loadspec-bench-size=full \
  -k "test_throughput or test_per_tensor or shuffled" --loadspec-bench-dir=$R/before -q -p no:warnings 2>&1 | tail -2
cp /tmp/reload_after.py reference/reload.py
el before; pack
