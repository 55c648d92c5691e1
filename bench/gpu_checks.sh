#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (run from the repository root):
# build with CUDA, run the CUDA tests, run them again under compute-sanitizer, then the GPU
# benchmarks. Everything it prints belongs in bench/RESULTS.md (with the device and the date).
#   bash bench/gpu_checks.sh [output-folder]
set -uo pipefail
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
# The lent machines have no network but hold torch, scikit-build-core, nanobind, pytest, scipy,
# hypothesis (see the device tool's KINDS.md): build against them, fetch nothing.
# (No pycocotools there: the CUDA tests live in tests/ops and tests/models, which do not need it.)
python3 -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -2
python3 -c "import deformdetr, torch; assert deformdetr.cuda_compiled and torch.cuda.is_available()" \
  || { echo "no CUDA build or no GPU"; exit 1; }
python3 -m pytest -q -m cuda tests/ops tests/models 2>&1 | tee "$out/pytest_cuda.txt" | tail -5
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -m cuda \
    tests/ops/test_ms_deform_attn.py 2>&1 | tee "$out/memcheck.txt" | tail -5
  compute-sanitizer --tool racecheck python3 -m pytest -q -m cuda -k "matches_cpu" \
    tests/ops/test_ms_deform_attn.py 2>&1 | tee "$out/racecheck.txt" | tail -5
fi
for dtype in float32 float16 bfloat16; do
  python3 -m deformdetr.cli bench attention --device cuda --dtype "$dtype" --repeat 20 2>&1 | tee "$out/bench_attention_$dtype.txt"
done
python3 -m deformdetr.cli bench attention --device cuda --batch 8 --repeat 20 2>&1 | tee "$out/bench_attention_batch8.txt"
