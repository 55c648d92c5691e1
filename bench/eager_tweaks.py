#!/usr/bin/env python
"""Two eager-mode changes measured against what they replaced, interleaved in one process:

1. frozen batch norm folded into the convolution before it (``models.resnet.conv_norm``) against
   the norm as its own two passes: the ResNet-50 backbone at 800x1066, inference and forward +
   backward (its layer2-4 trainable, as officially);
2. the sampling locations of MSDeformAttn (``reference + offset / (W, H)``) over flattened
   (point, x/y) rows against the official broadcast over pairs, at the encoder's size.

    python bench/eager_tweaks.py [--size 800x1066] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import statistics
import time

import torch

import deformdetr.models.resnet as resnet
from deformdetr.bench import interleaved_comparison_args, median_seconds
from deformdetr.models.backbone import Backbone
from deformdetr.ops.ms_deform_attn_module import _point_locations


def _norm_after_conv(conv, norm, x):
    return norm(conv(x))


def backbone(size: tuple, rounds: int) -> None:
    torch.manual_seed(0)
    model = Backbone("resnet50")
    for module in model.modules():  # statistics other than the identity, as trained weights have
        if isinstance(module, resnet.FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 2), module.running_var.uniform_(0.5, 2)
            module.bias.normal_(), module.running_mean.normal_()
    images = torch.randn(1, 3, *size)
    mask = torch.zeros(1, *size, dtype=torch.bool)

    def inference():
        with torch.no_grad():
            return model(images, mask)

    def training():
        outputs = model(images, mask)
        sum(x.sum() for x, _ in outputs).backward()
        return outputs

    folded = resnet.conv_norm
    for name, run in (("inference", inference), ("forward + backward", training)):
        seconds = {"folded": [], "separate": []}
        outputs = {}
        for round_ in range(rounds + 1):  # the first round warms up
            for label, fn in (("folded", folded), ("separate", _norm_after_conv)):
                resnet.conv_norm = fn
                started = time.perf_counter()
                outputs[label] = run()
                if round_:
                    seconds[label].append(time.perf_counter() - started)
        resnet.conv_norm = folded
        difference = max(((a - b).abs().max() / b.abs().max()).item()
                         for (a, _), (b, _) in zip(outputs["folded"], outputs["separate"]))
        print(f"backbone {name}: " + ", ".join(
            f"{label} {statistics.median(v):.3f} s ({', '.join(f'{t:.3f}' for t in v)})" for label, v in seconds.items())
            + f"; largest difference {difference:.1e} of the largest value")


def sampling_locations(queries: int, repeat: int) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[100, 134], [50, 67], [25, 34], [13, 17]])
    reference = torch.rand(1, queries, 4, 2, generator=generator)
    offsets = torch.randn(1, queries, 8, 4, 4, 2, generator=generator)
    normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)

    def official():
        return reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]

    flattened = median_seconds(lambda: _point_locations(reference, offsets, shapes), repeat)
    broadcast = median_seconds(official, repeat)
    same = torch.equal(official(), _point_locations(reference, offsets, shapes))
    print(f"sampling locations, {queries} queries: flattened rows {flattened * 1e3:.1f} ms, "
          f"the official broadcast {broadcast * 1e3:.1f} ms; equal bit for bit: {same}")


def main(argv=None):
    args = interleaved_comparison_args(__doc__.splitlines()[0], argv)
    height, width = args.size
    sampling_locations(sum(-(-height // s) * -(-width // s) for s in (8, 16, 32, 64)), 9)
    backbone(args.size, args.rounds)


if __name__ == "__main__":
    main()
