"""Peak memory of a training step of one variant, plain and with each memory knob: activations
recomputed in the backward (model.checkpoint_activations) and the batch taken a part at a time
(train.accumulate_steps: each part's forward and backward before the next's). Each case runs in
a fresh process, so that one case's allocations cannot hide another's.

    deformdetr bench memory [--variant multi_scale] [--size 800x1066] [--batch 2] [--device cpu]

A first step allocates the optimizer's state; the second is measured, from a start where the
model, its inputs and the optimizer's state are there and no gradients: on the CPU, the process's
peak resident memory (Linux: VmHWM, reset through /proc/self/clear_refs, freed heap returned
first with malloc_trim) above its resident memory at the start; on CUDA, torch's peak
allocation above the allocation at the start.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time

import torch

from deformdetr.bench import image_size, positive_int

CASES = ("plain", "checkpoint_activations", "accumulate")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f"no {field} in /proc/self/status (the CPU measurement needs Linux)")


def _start_cpu_peak() -> int:
    """Resident bytes now, with freed heap returned and the peak reset to now."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to VmRSS
    return _status_bytes("VmRSS")


def measure_case(case: str, variant: str, size: tuple, batch: int, device: str) -> dict:
    """Peak bytes above the start and seconds of one training step of ``batch`` images: at once,
    with recomputed activations, or one image at a time (``accumulate``)."""
    from deformdetr.bench.model import build, random_targets
    from deformdetr.engine.tasks.base import to_device

    model, criterion = build(variant)
    model.transformer.set_activation_checkpointing(case == "checkpoint_activations")
    model.train().to(device)
    generator = torch.Generator().manual_seed(1)
    height, width = size
    images = torch.randn(batch, 3, height, width, generator=generator).to(device)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    targets = to_device(random_targets(batch, generator), device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    parts = [slice(i, i + 1) for i in range(batch)] if case == "accumulate" else [slice(0, batch)]
    num_boxes = sum(len(t["labels"]) for t in targets)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for part in parts:
            losses = criterion(model(images[part], mask[part]), targets[part], num_boxes=num_boxes)
            criterion.total(losses).backward()
        optimizer.step()

    step()  # the optimizer's state
    optimizer.zero_grad(set_to_none=True)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = _start_cpu_peak()
    started = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
    else:
        peak = _status_bytes("VmHWM") - start
    return {"case": case, "peak_bytes": peak, "seconds": time.perf_counter() - started}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deformdetr bench memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="multi_scale",
                        choices=["single_scale", "single_scale_dc5", "multi_scale", "box_refine", "two_stage"])
    parser.add_argument("--size", type=image_size, default=(800, 1066), help="HEIGHTxWIDTH (default 800x1066)")
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(measure_case(args.case, args.variant, args.size, args.batch, args.device)))
        return
    height, width = args.size
    print(f"{args.variant}, a training step of batch {args.batch} of {height}x{width} on {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | peak memory above the step's start | step s |")
    print("|---|---|---|")
    for case in CASES:
        command = [sys.executable, "-m", "deformdetr.bench.memory", "--case", case, "--variant", args.variant,
                   "--size", f"{height}x{width}", "--batch", str(args.batch), "--device", args.device]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        label = {"plain": "plain", "checkpoint_activations": "model.checkpoint_activations=true",
                 "accumulate": f"train.accumulate_steps={args.batch} (batch 1 a part)"}[case]
        print(f"| {label} | {result['peak_bytes'] / 2**30:.2f} GiB | {result['seconds']:.2f} |")


if __name__ == "__main__":
    main()
