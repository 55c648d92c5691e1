#!/usr/bin/env python
"""Time and peak memory of one Deformable DETR training step and one inference, in float32 and
under bfloat16 autocast: the official multi_scale model (ResNet-50, random weights) on a batch of
800x1066 images, the official criterion against a few random targets per image, AdamW.

    python bench/model_step.py [--device cuda] [--size 800x1066] [--batch 1] [--repeat 5]
        [--variant multi_scale]

Prints one line per (precision, pass): the median seconds over --repeat runs after one warm-up,
and on CUDA the peak memory allocated during them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from deformdetr.models import build_criterion, deformable_detr


def random_targets(batch: int, per_image: int, num_classes: int, device, generator):
    targets = []
    for _ in range(batch):
        centres = 0.2 + 0.6 * torch.rand(per_image, 2, generator=generator)
        sizes = 0.05 + 0.3 * torch.rand(per_image, 2, generator=generator)
        labels = torch.randint(1, num_classes, (per_image,), generator=generator)
        targets.append({"labels": labels.to(device), "boxes": torch.cat([centres, sizes], 1).to(device)})
    return targets


def measure(run, device: torch.device, repeat: int) -> tuple[float, float]:
    """(median seconds, peak GiB allocated; 0 on the CPU) of run() after one warm-up."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return statistics.median(times), peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="800x1066", help="HEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variant", default="multi_scale")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    height, width = (int(v) for v in args.size.lower().split("x"))
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = deformable_detr(args.variant, num_classes=91, pretrained_backbone=False).to(device)
    criterion = build_criterion(num_classes=91)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    images = torch.randn(args.batch, 3, height, width, generator=generator).to(device)
    targets = random_targets(args.batch, 7, 91, device, generator)

    # The precision's context covers the forward pass and the loss, as in training with AMP.
    def train_step(context):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with context():
            loss = criterion.total(criterion(model(images), targets))
        loss.backward()
        optimizer.step()

    def inference(context):
        model.eval()
        with torch.no_grad(), context():
            model(images)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.variant}, batch {args.batch} of {height}x{width}, {device_name}, "
          f"torch {torch.__version__}; median of {args.repeat} after a warm-up")
    precisions = {"float32": contextlib.nullcontext}
    if device.type == "cuda":
        precisions["bf16 autocast"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    for precision, context in precisions.items():
        for name, run in (("training step", train_step), ("inference", inference)):
            seconds, peak = measure(lambda: run(context), device, args.repeat)
            memory = f"; peak memory {peak:.2f} GiB" if device.type == "cuda" else ""
            print(f"{precision:<14} {name:<14} {seconds * 1e3:9.1f} ms{memory}")


if __name__ == "__main__":
    main()
