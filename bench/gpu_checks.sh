#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (one H200, 16 cores, no network;
# the device tool's KINDS.md says what it holds: python3 with torch, nvcc, cmake, ninja,
# nanobind, scikit-build-core, pytest, compute-sanitizer; no pycocotools).
#
# 1. Here, on a machine with the network and /work/parity (once per session):
#      bash bench/gpu_checks.sh --prepare
#    It fills .gpu_carry/ (ignored by git): a copy of the official models/ops to build the
#    official op from, and the pycocotools wheel the demo's COCO evaluation needs.
# 2. On the GPU machine, from the repository root, in one call of at most 10 minutes:
#      bash bench/gpu_checks.sh            (the device tool: carry [".gpu_carry"])
#    Everything lands in $OUT (or the folder given as $1), in at most 8 files: summary.txt (each
#    step, its time and PASS/FAIL, and the device), build.txt, pytest_cuda.txt (the sanitizers'
#    runs too), bench.txt, official_op.txt, model_step.txt, demo.txt, demo_drawing.png. Exits
#    non-zero if any step failed or was skipped for lack of time; every step still runs, so one
#    call gives the whole picture.
#    What it prints belongs in bench/RESULTS.md, with the device and the date.
#    GPU_CHECKS_SKIP=REGEX skips the steps whose names match (a rerun of some steps, e.g.
#    'demo|peak memory'); GPU_CHECKS_SECONDS sets the deadline (default 480).
#
# Steps: build with CUDA (the official op compiles alongside); `pytest -m cuda` with
# CUDA_LAUNCH_BLOCKING=1 (a fault is reported against its own call); compute-sanitizer memcheck
# and initcheck of the attention tests (with the demo on the GPU meanwhile: nothing is
# timed then); the attention benchmark in float32/float16/bfloat16 at batch 8; the official CUDA
# op beside ours on the encoder and decoder shapes; a multi_scale training step and inference at
# 800x1066 in float32 and under bf16 autocast, with peak memory; the memory knobs' peak memory
# (deformdetr bench memory) at 800x1066.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$repo/.gpu_carry"

prepare() {
  local exclude
  exclude="$(git -C "$repo" rev-parse --git-path info/exclude)"
  grep -qx '/.gpu_carry/' "$exclude" 2>/dev/null || echo '/.gpu_carry/' >>"$exclude"
  rm -rf "$carry" && mkdir -p "$carry/wheels"
  cp -r "${OFFICIAL_OPS_SOURCE:-/work/parity/Deformable-DETR/models/ops}" "$carry/official_ops"
  # The GPU machine's python3 is CPython 3.12 on x86-64 (KINDS.md).
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$carry/wheels" "pycocotools==2.0.11"
  du -sh "$carry"
}
if [[ "${1:-}" == "--prepare" ]]; then
  prepare
  exit $?
fi

out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
cd "$repo"
started=$(date +%s)
# The device tool allows 600 s per call and 900 s of device time a session: leave time for a
# machine's start and one shorter rerun. Steps are not started past the deadline.
deadline=$((started + ${GPU_CHECKS_SECONDS:-480}))
fail=0
summary="$out/summary.txt"

# step NAME CAP_SECONDS LOG COMMAND...: runs the command with at most CAP seconds (less if the
# deadline is nearer), appends its output to LOG, records the outcome in the summary and returns
# non-zero if it failed (for steps run in the background, whose `fail` is their own).
step() {
  local name="$1" cap="$2" log="$3"
  shift 3
  if [[ -n "${GPU_CHECKS_SKIP:-}" && "$name" =~ $GPU_CHECKS_SKIP ]]; then
    printf '%-18s %4s     %s\n' "SKIPPED (asked)" "-" "$name" | tee -a "$summary"
    return 0
  fi
  local left=$((deadline - $(date +%s)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 20)); then
    printf '%-18s %4s     %s\n' "SKIPPED (no time)" "-" "$name" | tee -a "$summary"
    fail=1
    return 1
  fi
  echo "== $name (limit ${limit}s)" >>"$log"
  local t0 rc status=PASS
  t0=$(date +%s)
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  ((rc == 124)) && status="FAIL (timed out)"
  ((rc != 0 && rc != 124)) && status="FAIL (exit $rc)"
  printf '%-18s %4ss     %s\n' "$status" "$(($(date +%s) - t0))" "$name" | tee -a "$summary"
  [[ "$status" == PASS ]] || { fail=1; return 1; }
}

{
  echo "gpu_checks $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
} >"$summary" 2>&1

# pycocotools (the demo's COCO evaluation) is not on the machine: install the carried wheel.
if ! python3 -c "import pycocotools" 2>/dev/null && ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/wheels/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The official op compiles (CPU-bound) while ours builds; its exit status lands in a file.
official_build=/tmp/official_ops_build
official_rc=/tmp/official_ops_build.rc
rm -f "$official_rc"
if [[ -d "$carry/official_ops" ]]; then
  ( python3 bench/official_op_side_by_side.py --official-ops "$carry/official_ops" \
      --build-dir "$official_build" --build-only >"$out/official_op.txt" 2>&1
    echo $? >"$official_rc" ) &
else
  echo "no .gpu_carry/official_ops: run bash bench/gpu_checks.sh --prepare first" >"$out/official_op.txt"
fi

# Hopper's own machine code only (the default adds sm_80 and PTX: a minute more of nvcc), all cores.
step "build with CUDA" 240 "$out/build.txt" env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install -v \
  --no-build-isolation --no-deps -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90-real .
python3 -m deformdetr.cli info >>"$summary" 2>&1
step "CUDA kernels and a GPU" 30 "$out/build.txt" python3 -c \
  "import deformdetr, torch; assert deformdetr.cuda_compiled and torch.cuda.is_available()"

step "pytest -m cuda, CUDA_LAUNCH_BLOCKING=1" 180 "$out/pytest_cuda.txt" \
  env CUDA_LAUNCH_BLOCKING=1 python3 -m pytest -q -m cuda tests/ops tests/models

# Neither the sanitizers nor the demo is a timing, so they share the GPU.
pids=()
step "demo on the GPU, 2 minutes" 240 "$out/demo.txt" python3 -m deformdetr.cli demo \
  --output-dir /tmp/gpu_demo --minutes 2 device=cuda &
pids+=($!)
# Without torch's caching allocator every tensor is its own allocation, so a read just past one
# is outside any allocation and memcheck sees it; initcheck: every output comes from
# torch.empty, so an element a kernel fails to write shows. (No racecheck: no shared memory.)
# Left out for time: gradcheck (hundreds of calls), the stream test's long sleep kernel, the
# 2^31-element test (8 GiB under the sanitizer).
for tool in memcheck initcheck; do
  step "compute-sanitizer $tool" 180 "/tmp/sanitizer_$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -m pytest -q -m cuda \
    tests/ops/test_ms_deform_attn.py tests/ops/test_ms_deform_attn_cuda.py -k "not gradcheck and not current_stream and not 2_31" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
cat /tmp/sanitizer_memcheck.log /tmp/sanitizer_initcheck.log >>"$out/pytest_cuda.txt" 2>/dev/null
# One of the demo's drawings, to look at.
drawing="$(find /tmp/gpu_demo -name '*.png' ! -name 'curves.png' 2>/dev/null | sort | head -1)"
[[ -n "$drawing" ]] && cp "$drawing" "$out/demo_drawing.png"

for dtype in float32 float16 bfloat16; do
  step "bench attention $dtype, batch 8" 90 "$out/bench.txt" python3 -m deformdetr.cli bench \
    attention --device cuda --dtype "$dtype" --batch 8 --repeat 20
done

step "official op compiled" 120 "$out/official_op.txt" bash -c \
  "while [[ -d $carry/official_ops && ! -f $official_rc ]]; do sleep 2; done; [[ -f $official_rc ]] && exit \$(cat $official_rc); exit 1"
step "official op side by side" 120 "$out/official_op.txt" python3 bench/official_op_side_by_side.py \
  --official-ops "$carry/official_ops" --build-dir "$official_build" --batch 8 --repeat 20

step "model step, multi_scale 800x1066" 150 "$out/model_step.txt" python3 bench/model_step.py \
  --device cuda --size 800x1066 --batch 1 --repeat 5
step "peak memory, knobs, 800x1066" 120 "$out/model_step.txt" python3 -m deformdetr.cli bench memory \
  --device cuda --size 800x1066 --batch 2

echo "total $(($(date +%s) - started)) s: $( ((fail)) && echo 'SOME STEPS FAILED' || echo 'all passed')" \
  | tee -a "$summary"
exit $fail
