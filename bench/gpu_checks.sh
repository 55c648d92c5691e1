#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (run from the repository root):
# build with CUDA, run the CUDA tests, run them again under compute-sanitizer, then the GPU
# benchmarks. Everything it prints belongs in bench/RESULTS.md (with the device and the date).
#   bash bench/gpu_checks.sh [output-folder]
# Exits non-zero when any step failed; every step still runs, so one call gives the whole picture.
set -uo pipefail
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
fail=0
step() {  # step NAME COMMAND...: run it, remember a failure
  local name="$1"
  shift
  echo "== $name"
  "$@" || { echo "!! $name failed"; fail=1; }
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  nvcc --version | tail -2
  cmake --version | head -1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/device.txt"

# The lent machines have no network but hold torch, scikit-build-core, nanobind, pytest, scipy,
# hypothesis (see the device tool's KINDS.md): build against them, fetch nothing.
# (No pycocotools there: the CUDA tests live in tests/ops and tests/models, which do not need it.)
if ! python3 -m pip install -v --no-build-isolation --no-deps . >"$out/build.txt" 2>&1; then
  tail -40 "$out/build.txt"
  echo "build failed"
  exit 1
fi
python3 -c "import deformdetr, torch; assert deformdetr.cuda_compiled and torch.cuda.is_available()" \
  || { echo "no CUDA build or no GPU"; exit 1; }

step "CUDA tests" bash -c "python3 -m pytest -q -m cuda tests/ops tests/models 2>&1 \
  | tee '$out/pytest_cuda.txt' | tail -15"

if command -v compute-sanitizer >/dev/null; then
  # Without torch's caching allocator every tensor is its own allocation, so a read just past
  # one is outside any allocation and memcheck sees it. (Only here: it would skew the timings.)
  # initcheck: every output comes from torch.empty, so an element a kernel fails to write shows.
  # (racecheck is left out: the kernels use no shared memory.)
  for tool in memcheck initcheck; do
    step "compute-sanitizer $tool" bash -c "PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 240 \
      compute-sanitizer --tool $tool --error-exitcode 1 python3 -m pytest -q -m cuda \
      tests/ops/test_ms_deform_attn.py 2>&1 | tee '$out/sanitizer_$tool.txt' | tail -8"
  done
else
  echo "no compute-sanitizer on this machine" | tee "$out/sanitizer_memcheck.txt"
fi

for args in "--dtype float32" "--dtype float16" "--dtype bfloat16" "--batch 8"; do
  step "bench attention $args" bash -c "python3 -m deformdetr.cli bench attention --device cuda \
    $args --repeat 20 2>&1 | tee -a '$out/bench.txt'"
done
exit $fail
