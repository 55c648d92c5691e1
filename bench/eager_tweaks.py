#!/usr/bin/env python
"""Three eager-mode changes measured against what they replaced, interleaved in one process:

1. frozen batch norm folded into the convolution before it (``models.resnet.conv_norm``) against
   the norm as its own two passes: the ResNet-50 backbone at 800x1066, inference and forward +
   backward (its layer2-4 trainable, as officially);
2. the sampling locations of MSDeformAttn (``reference + offset / (W, H)``) over flattened
   (point, x/y) rows against the official broadcast over pairs, at the encoder's size, and in the
   demo's training step;
3. the backbone's layout at inference on the CPU: channels-last against torch's default, for the
   ResNet-50 at --size, at MonoDETR's 384x1280, at 480x640, 256x320 and 128x160, and for the demo's
   ResNet-18 (batch 16 of 64x64); ``models.resnet.inference_layout`` takes channels-last from
   ``CHANNELS_LAST_MIN_PIXELS`` up, where this says it is faster.

    python bench/eager_tweaks.py [--size 800x1066] [--rounds 3] [--threads 2]
    (the demo's step, a few hundred ms: 6 * rounds + 6 rounds; the layouts: 3 * rounds + 3 rounds)
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

    forms = {"folded": resnet.conv_norm, "separate": _norm_after_conv}
    for name, run in (("inference", inference), ("forward + backward", training)):
        seconds, outputs = _interleaved(resnet, "conv_norm", forms, run, rounds)
        difference = _largest_difference(outputs["folded"], outputs["separate"])
        print(f"backbone {name}: " + ", ".join(
            f"{label} {statistics.median(v):.3f} s ({', '.join(f'{t:.3f}' for t in v)})"
            for label, v in seconds.items()) + f"; largest difference {difference:.1e} of the largest value")


def _largest_difference(outputs, expected) -> float:
    """The largest difference between two backbones' features, relative to each level's largest value."""
    return max(((a - b).abs().max() / b.abs().max()).item() for (a, _), (b, _) in zip(outputs, expected))


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def _torch_default_layout(x):
    return x


def inference_layouts(size: tuple, rounds: int) -> None:
    torch.manual_seed(0)
    resnet50, demo_resnet18 = Backbone("resnet50").eval(), Backbone("resnet18", from_scratch=True).eval()
    cases = ((f"ResNet-50 at {size[0]}x{size[1]}", resnet50, 1, size),
             ("ResNet-50 at 384x1280", resnet50, 1, (384, 1280)), ("ResNet-50 at 480x640", resnet50, 1, (480, 640)),
             ("ResNet-50 at 256x320", resnet50, 1, (256, 320)), ("ResNet-50 at 128x160", resnet50, 1, (128, 160)),
             ("the demo's ResNet-18 (batch norm), 16 of 64x64", demo_resnet18, 16, (64, 64)))
    default = "torch's default"
    forms = {"channels-last": _channels_last, default: _torch_default_layout}
    for label, model, batch, shape in cases:
        images = torch.randn(batch, 3, *shape)
        mask = torch.zeros(batch, *shape, dtype=torch.bool)

        def inference():
            with torch.no_grad():
                return model(images, mask)

        seconds, outputs = _interleaved(resnet, "inference_layout", forms, inference, rounds)
        difference = _largest_difference(outputs["channels-last"], outputs[default])
        medians = {name: statistics.median(v) for name, v in seconds.items()}
        faster = sum(a < b for a, b in zip(*seconds.values()))
        print(f"backbone inference, {label}: " + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in medians.items())
              + f" ({medians['channels-last'] / medians[default]:.3f}; "
              f"faster in {faster} of {rounds} rounds); largest difference {difference:.1e} of the largest value")


def _interleaved(module, attribute: str, forms: dict, run, rounds: int):
    """Seconds of each call of ``run`` with ``module.attribute`` set to each of ``forms`` in turn,
    ``rounds`` times after a warm-up round, and each form's last output; the attribute restored."""
    original = getattr(module, attribute)
    seconds = {label: [] for label in forms}
    outputs = {}
    try:
        for round_ in range(rounds + 1):
            for label, form in forms.items():
                setattr(module, attribute, form)
                started = time.perf_counter()
                outputs[label] = run()
                if round_:
                    seconds[label].append(time.perf_counter() - started)
    finally:
        setattr(module, attribute, original)
    return seconds, outputs


def _official_locations(reference_points, offsets, spatial_shapes):
    """The official formula: the level sizes broadcast over (x, y) pairs, cast element by element."""
    normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
    return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]


def sampling_locations(size: tuple, repeat: int) -> None:
    height, width = size
    # The encoder's four levels at this image size (strides 8 to 64, rounded up as the backbone does).
    shapes = torch.tensor([[-(-height // s), -(-width // s)] for s in (8, 16, 32, 64)])
    queries = int(shapes.prod(1).sum())
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, queries, 4, 2, generator=generator)
    offsets = torch.randn(1, queries, 8, 4, 4, 2, generator=generator)
    inputs = (reference, offsets, shapes)
    flattened = median_seconds(lambda: _point_locations(*inputs), repeat)
    broadcast = median_seconds(lambda: _official_locations(*inputs), repeat)
    same = torch.equal(_official_locations(*inputs), _point_locations(*inputs))
    print(f"sampling locations, {queries} queries: flattened rows {flattened * 1e3:.1f} ms, "
          f"the official broadcast {broadcast * 1e3:.1f} ms; equal bit for bit: {same}")


def demo_step_with_each_location_form(rounds: int) -> None:
    import deformdetr.ops.ms_deform_attn_module as attention_module

    step = demo_training_step()[0]
    forms = {"flattened rows": attention_module._point_locations, "official broadcast": _official_locations}
    seconds, _ = _interleaved(attention_module, "_point_locations", forms, step, rounds)
    print("demo training step: " + ", ".join(f"{label} {statistics.median(v) * 1e3:.1f} ms"
                                            for label, v in seconds.items()) + f" (medians of {rounds} rounds)")


def main(argv=None):
    args = interleaved_comparison_args(__doc__.splitlines()[0], argv)
    sampling_locations(args.size, 9)
    demo_step_with_each_location_form(6 * args.rounds + 6)
    backbone(args.size, args.rounds)
    inference_layouts(args.size, 3 * args.rounds + 3)


if __name__ == "__main__":
    main()
