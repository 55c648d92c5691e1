#!/usr/bin/env python
"""deformdetr's CUDA attention op beside the official one (fundamentalvision/Deformable-DETR's
models/ops), on the standard encoder and decoder shapes: times of the forward and the backward
pass, and the largest differences of the output and the three gradients.

The official op is compiled here from a copy of its sources (never from this repository: it is
not part of it), with the torch of this environment. Its sources predate torch 2's C++ API, so
the copy is brought up to date first (Tensor.type() -> scalar_type()/is_cuda(), data<T>() ->
data_ptr<T>()); nothing else changes.

    python bench/official_op_side_by_side.py --official-ops DIR [--build-dir DIR] [--batch 8]
        [--repeat 20] [--build-only]

DIR is a copy of models/ops (holding src/); bench/gpu_checks.sh --prepare makes one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys

import torch

# The C++ API renames the official sources need with torch 2.x, as (pattern, replacement).
_API_UPDATES = [
    (r"\.type\(\)\.is_cuda\(\)", ".is_cuda()"),
    (r"AT_DISPATCH_FLOATING_TYPES\((\w+)\.type\(\)", r"AT_DISPATCH_FLOATING_TYPES(\1.scalar_type()"),
    (r"\.data<", ".data_ptr<"),
]


def updated_copy(official_ops: str, build_dir: str) -> str:
    """Copies official_ops/src into build_dir with the API updates applied; returns the copy."""
    source = os.path.join(official_ops, "src")
    if not os.path.isfile(os.path.join(source, "vision.cpp")):
        sys.exit(f"--official-ops {official_ops}: no src/vision.cpp (want a copy of models/ops)")
    target = os.path.join(build_dir, "src")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    for folder, _, files in os.walk(target):
        for name in files:
            if not name.endswith((".cpp", ".cu", ".cuh", ".h")):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                text = f.read()
            for pattern, replacement in _API_UPDATES:
                text = re.sub(pattern, replacement, text)
            with open(path, "w") as f:
                f.write(text)
    return target


def build_official(official_ops: str, build_dir: str):
    from torch.utils.cpp_extension import load

    src = updated_copy(official_ops, build_dir)
    sources = [os.path.join(src, "vision.cpp"), os.path.join(src, "cpu", "ms_deform_attn_cpu.cpp"),
               os.path.join(src, "cuda", "ms_deform_attn_cuda.cu")]
    # The flags of the official setup.py.
    return load(
        name="MultiScaleDeformableAttention", sources=sources, extra_include_paths=[src],
        extra_cflags=["-O3", "-DWITH_CUDA"],
        extra_cuda_cflags=["-O3", "-DWITH_CUDA", "-DCUDA_HAS_FP16=1", "-D__CUDA_NO_HALF_OPERATORS__",
                           "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"],
        build_directory=build_dir, verbose=False,
    )


def median_ms(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    scale = b.abs().max().item()
    return f"{(a.double() - b.double()).abs().max().item():.2e} (max |x| {scale:.2e})"


def compare(official, case: str, queries, batch: int, repeat: int) -> None:
    from deformdetr.bench.ms_deform_attn import make_inputs
    from deformdetr.ops import ms_deform_attn

    im2col_step = 64  # the official model's
    value, shapes, starts, locations, weights = make_inputs(batch, queries, "cuda", torch.float32)
    grad_output = torch.randn(batch, locations.shape[1], value.shape[2] * value.shape[3],
                              device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    inputs = (value, shapes, starts, locations, weights)
    backward_op = torch.ops.deformdetr.ms_deform_attn_backward

    with torch.no_grad():
        ours_out = ms_deform_attn(*inputs)
        ours_grads = backward_op(*inputs, grad_output)
        official_out = official.ms_deform_attn_forward(*inputs, im2col_step)
        official_grads = official.ms_deform_attn_backward(*inputs, grad_output, im2col_step)
        times = {
            "ours fwd": median_ms(lambda: ms_deform_attn(*inputs), repeat),
            "official fwd": median_ms(lambda: official.ms_deform_attn_forward(*inputs, im2col_step), repeat),
            "ours bwd": median_ms(lambda: backward_op(*inputs, grad_output), repeat),
            "official bwd": median_ms(
                lambda: official.ms_deform_attn_backward(*inputs, grad_output, im2col_step), repeat),
        }
    print(f"{case} (batch {batch}, Lq {locations.shape[1]}, S {value.shape[1]}): "
          f"forward {times['ours fwd']:.3f} ms vs official {times['official fwd']:.3f} ms "
          f"({times['official fwd'] / times['ours fwd']:.2f}x); "
          f"backward {times['ours bwd']:.3f} ms vs official {times['official bwd']:.3f} ms "
          f"({times['official bwd'] / times['ours bwd']:.2f}x)")
    print(f"  max |ours - official|: output {max_difference(ours_out, official_out)}")
    for name, ours, theirs in zip(("grad value", "grad locations", "grad weights"), ours_grads,
                                  official_grads):
        print(f"  max |ours - official|: {name} {max_difference(ours, theirs)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-ops", required=True, help="a copy of the official models/ops")
    parser.add_argument("--build-dir", default="/tmp/official_ops_build")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--build-only", action="store_true", help="compile the official op and stop")
    args = parser.parse_args(argv)
    os.makedirs(args.build_dir, exist_ok=True)
    official = build_official(os.path.abspath(args.official_ops), args.build_dir)
    if args.build_only:
        print(f"official op built in {args.build_dir}")
        return
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; float32; "
          f"median of {args.repeat} (CUDA events)")
    for case, queries in (("encoder", "encoder"), ("decoder", 300)):
        compare(official, case, queries, args.batch, args.repeat)


if __name__ == "__main__":
    main()
