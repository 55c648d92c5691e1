#!/usr/bin/env python
"""Two eager-mode changes measured against what they replaced, interleaved in one process:

1. frozen batch norm folded into the convolution before it (``models.resnet.conv_norm``) against
   the norm as its own two passes: the ResNet-50 backbone at 800x1066, inference and forward +
   backward (its layer2-4 trainable, as officially);
2. the sampling locations of MSDeformAttn (``reference + offset / (W, H)``) over flattened
   (point, x/y) rows against the official broadcast over pairs, at the encoder's size, and in the
   demo's training step.

    python bench/eager_tweaks.py [--size 800x1066] [--rounds 3] [--threads 2]
    (the demo's step: 2 * rounds + 2 rounds)
"""

from __future__ import annotations

import statistics
import time

import torch

import deformdetr.models.resnet as resnet
from deformdetr.bench import interleaved_comparison_args, median_seconds
from deformdetr.bench.model import demo_training_step
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


def demo_step_with_each_location_form(rounds: int) -> None:
    import deformdetr.ops.ms_deform_attn_module as attention_module

    def official(reference_points, offsets, spatial_shapes):
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]

    step = demo_training_step()[0]
    flattened = attention_module._point_locations
    seconds = {"flattened rows": [], "official broadcast": []}
    for _ in range(rounds):
        for label, fn in (("flattened rows", flattened), ("official broadcast", official)):
            attention_module._point_locations = fn
            seconds[label].append(median_seconds(step, 3))
    attention_module._point_locations = flattened
    print("demo training step: " + ", ".join(
        f"{label} {statistics.median(v) * 1e3:.1f} ms" for label, v in seconds.items()) + f" (medians of {rounds} rounds of 3 steps)")


def main(argv=None):
    args = interleaved_comparison_args(__doc__.splitlines()[0], argv)
    height, width = args.size
    sampling_locations(sum(-(-height // s) * -(-width // s) for s in (8, 16, 32, 64)), 9)
    demo_step_with_each_location_form(2 * args.rounds + 2)
    backbone(args.size, args.rounds)


if __name__ == "__main__":
    main()
