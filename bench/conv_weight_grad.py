"""oneDNN's weight gradient against models/conv.py's matmul, per convolution and in the demo's step.

Part 1 times the weight gradient alone (``aten.convolution_backward`` asking for it only) and
``models.conv.matmul_weight_grad`` (unfold + matmul), at a
ResNet-18's shapes for batch 16 of small images. Part 2 times the demo's training step (random
images of one size, as ``deformdetr bench model --demo``) with the matmul path on and off,
interleaved, so that the machine's drift falls on both alike.

    python bench/conv_weight_grad.py [--repeat 15] [--rounds 7] [--sizes 64,80]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import deformdetr.models.conv as conv
from deformdetr.bench import call_seconds

# (in, out, input size, stride) of 3x3 convolutions in a ResNet-18's last stages at 64-96 px images.
SHAPES = [(512, 512, (2, 2), 1), (512, 512, (3, 3), 1), (512, 512, (2, 3), 1), (256, 512, (4, 4), 2),
          (256, 512, (5, 5), 2), (512, 512, (4, 4), 1), (256, 256, (4, 4), 1), (128, 128, (8, 8), 1)]


def weight_gradients(repeat: int) -> None:
    print("| conv (in->out, input, stride) | output | oneDNN ms | matmul ms |")
    print("|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for cin, cout, size, stride in SHAPES:
        x = torch.randn(16, cin, *size, generator=generator)
        weight = torch.randn(cout, cin, 3, 3, generator=generator)
        grad = torch.randn_like(F.conv2d(x, weight, stride=stride, padding=1))

        def onednn():
            torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1,
                                                [False, True, False])

        def matmul():
            conv.matmul_weight_grad(grad, x, weight.shape, (stride, stride), (1, 1), (1, 1))

        times = [statistics.median(call_seconds(run, repeat, warmup=3)) * 1e3 for run in (onednn, matmul)]
        output = "x".join(map(str, grad.shape[2:]))
        print(f"| {cin}->{cout}, {size[0]}x{size[1]}, {stride} | {output} | {times[0]:.1f} | {times[1]:.1f} |")


def demo_steps(sizes: list[int], rounds: int) -> None:
    from deformdetr.bench.model import random_targets, training_step
    from deformdetr.configs import load_config
    from deformdetr.engine.tasks import get_task

    cfg = load_config("demo_synthetic", ["device=cpu"])
    task = get_task(cfg)
    torch.manual_seed(0)
    model, criterion = task.build_model(load_pretrained=False)
    optimizer = task.build_optimizer(model)
    model.train()
    generator = torch.Generator().manual_seed(0)
    default = conv.MATMUL_WEIGHT_GRAD_PIXELS
    print(f"\ndemo training step, batch 16, {torch.get_num_threads()} threads: median of {rounds} interleaved rounds "
          f"of 4 steps")
    print("| images | oneDNN ms | matmul (models.conv) ms |")
    print("|---|---|---|")
    for size in sizes:
        images = torch.randn(16, 3, size, size, generator=generator)
        mask = torch.zeros(16, size, size, dtype=torch.bool)
        step = training_step(model, criterion, optimizer, images, mask, random_targets(16, generator, 7, boxes=3))
        times = {0: [], default: []}
        for _ in range(rounds):
            for pixels in (default, 0):
                conv.MATMUL_WEIGHT_GRAD_PIXELS = pixels
                times[pixels].append(statistics.mean(call_seconds(step, 4, warmup=1)) * 1e3)
        conv.MATMUL_WEIGHT_GRAD_PIXELS = default
        print(f"| {size}x{size} | {statistics.median(times[0]):.0f} | {statistics.median(times[default]):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="64,80", help="square image sizes of part 2")
    args = parser.parse_args()
    weight_gradients(args.repeat)
    demo_steps([int(s) for s in args.sizes.split(",")], args.rounds)


if __name__ == "__main__":
    main()
