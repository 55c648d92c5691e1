#!/usr/bin/env python
"""The native CPU dropout (deformdetr.ops.dropout) against torch's: the op alone at the encoder's
largest dropout (22223 tokens x 1024 FFN channels at 800x1066), also after the FFN's ReLU and fused
with it (relu_dropout), and a multi_scale training step with the models' Dropout modules as they
are and switched back to nn.Dropout (which also takes the ReLU apart again), interleaved.

    python bench/dropout.py [--size 800x1066] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from deformdetr.bench import interleaved_comparison_args, median_seconds
from deformdetr.bench.model import build, random_targets, training_step
from deformdetr.ops import Dropout, dropout, relu_dropout


def op_alone(repeat: int) -> None:
    x = torch.randn(22223 * 1024)
    leaf = x.clone().requires_grad_()
    ops = (("torch F.dropout", F.dropout), ("deformdetr dropout", dropout),
           ("torch relu, F.dropout", lambda t, p, training: F.dropout(F.relu(t), p, training)),
           ("deformdetr relu, dropout", lambda t, p, training: dropout(F.relu(t), p, training)),
           ("deformdetr relu_dropout", relu_dropout))
    for name, fn in ops:
        forward = median_seconds(lambda: fn(x, 0.1, True), repeat)
        both = median_seconds(lambda: fn(leaf, 0.1, True).sum().backward(), repeat)
        print(f"{name:<26} forward {forward * 1e3:7.1f} ms   forward + backward {both * 1e3:7.1f} ms")


def training_steps(size: tuple, rounds: int) -> None:
    height, width = size
    model, criterion = build("multi_scale")
    model.train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(1, 3, height, width, generator=generator)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    step = training_step(model, criterion, optimizer, images, mask, random_targets(1, generator))
    modules = [m for m in model.modules() if isinstance(m, Dropout)]
    seconds: dict[str, list] = {"nn.Dropout": [], "deformdetr Dropout": []}
    step()
    for _ in range(rounds):
        for name, cls in (("nn.Dropout", nn.Dropout), ("deformdetr Dropout", Dropout)):
            for module in modules:
                module.__class__ = cls
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    print(f"training step, multi_scale, {height}x{width}, {len(modules)} dropout modules, {rounds} interleaved rounds:")
    for name, values in seconds.items():
        print(f"  {name:<20} median {statistics.median(values):.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")


def main(argv=None):
    args = interleaved_comparison_args(__doc__.splitlines()[0], argv)
    op_alone(5)
    training_steps(args.size, args.rounds)


if __name__ == "__main__":
    main()
