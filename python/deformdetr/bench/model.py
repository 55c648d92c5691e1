"""Speed of the whole model: inference and a training step of one variant, eager and compiled,
and, part by part (backbone, input projections, encoder, decoder, heads, attention), how far each
part's time is from this machine's floor (its FLOPs at the matmul / convolution throughput torch
reaches here on large problems).

    deformdetr bench model [--variant multi_scale] [--size 800x1066] [--batch 1] [--repeat 3]
        [--threads N] [--compile] [--no-train] [--parts]
    (--parts: inference's parts, then a training step's, forward and backward, unless --no-train)
    deformdetr bench model --demo [--steps 20]     # the demo's training throughput (images/s)
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from deformdetr.bench import image_size, median_seconds, positive_int

#: The parts of a Deformable DETR, by module name prefix (the rest is "other").
PARTS = (("backbone", "backbone"), ("input projections", "input_proj"), ("encoder", "transformer.encoder"),
         ("decoder", "transformer.decoder"), ("heads", "class_embed"), ("heads", "bbox_embed"))


# ---- the model and its work ------------------------------------------------------------------


def build(variant: str, num_classes: int = 91):
    from deformdetr.models import build_criterion, deformable_detr

    torch.manual_seed(0)
    model = deformable_detr(variant, num_classes=num_classes, pretrained_backbone=False)
    criterion = build_criterion(num_classes=num_classes, dec_layers=model.config.dec_layers,
                                aux_loss=model.config.aux_loss)
    return model, criterion


def random_targets(batch: int, generator: torch.Generator, num_classes: int = 91, boxes: int = 7) -> list[dict]:
    centres = torch.rand(batch, boxes, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(batch, boxes, 2, generator=generator) * 0.2 + 0.05
    labels = torch.randint(1, num_classes, (batch, boxes), generator=generator)
    return [{"labels": labels[i], "boxes": torch.cat([centres[i], sizes[i]], -1)} for i in range(batch)]


def inference_step(model, images, mask, grad: bool = False) -> Callable:
    def run():
        with torch.set_grad_enabled(grad):
            model(images, mask)

    return run


def training_step(model, criterion, optimizer, images, mask, targets) -> Callable:
    """Forward, the official loss, backward and the optimizer's step: one iteration of training."""
    def run():
        optimizer.zero_grad(set_to_none=True)
        losses = criterion(model(images, mask), targets)
        criterion.total(losses).backward()
        optimizer.step()

    return run


# ---- the floor ---------------------------------------------------------------------------------


def matmul_throughput(repeat: int = 5) -> float:
    """FLOP/s of a large float32 matmul (the transformer's linear layers' kind of work)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_seconds(lambda: a @ b, repeat)


def conv_throughput(repeat: int = 3) -> float:
    """FLOP/s of a large 3x3 convolution (a ResNet-50 stage's kind of work)."""
    conv = nn.Conv2d(128, 128, 3, padding=1).eval()
    x = torch.randn(1, 128, 100, 168)
    flops = 2 * 128 * 128 * 9 * 100 * 168
    with torch.no_grad():
        return flops / median_seconds(lambda: conv(x), repeat)


def flops_by_part(run: Callable) -> dict[str, float]:
    """FLOPs of the matmuls and convolutions ``run`` performs, by part of the model. (Counted with
    autograd on: torch's module tracker needs it, whatever ``run`` does.)"""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        run()
    counts = {(module.split(".", 1)[1] if "." in module else ""): sum(by_op.values())  # "DeformableDETR.backbone"
              for module, by_op in counter.get_flop_counts().items()}
    per_part: dict[str, float] = defaultdict(float)
    for part, prefix in PARTS:
        per_part[part] += _part_flops(counts, prefix)
    return dict(per_part)


def _part_flops(counts: dict, prefix: str) -> float:
    """The part's own entry, which holds its children's counts; for a part never called itself
    (a ModuleList), the sum of its members'."""
    if prefix in counts:
        return counts[prefix]
    return sum(value for path, value in counts.items()
               if path.rpartition(".")[0] == prefix and path.rpartition(".")[2].isdigit())


def attention_flops(model, run: Callable) -> float:
    """FLOPs of the deformable attention's sampling during ``run`` (not a matmul, so
    FlopCounterMode does not see it): per query, head, level and point, 4 bilinear corners x
    channels x (multiply + add), and the attention weight's multiply + add."""
    transformer = model.transformer
    seen = {}
    hook = transformer.encoder.register_forward_hook(
        lambda module, args, output: seen.update(batch=args[0].shape[0], tokens=args[0].shape[1],
                                                 levels=args[1].shape[0]))
    try:
        run()
    finally:
        hook.remove()
    channels = transformer.d_model // transformer.nhead
    per_point = transformer.nhead * seen["levels"] * channels * 2 * 5
    encoder = sum(layer.self_attn.n_points for layer in transformer.encoder.layers) * seen["tokens"]
    decoder = sum(layer.cross_attn.n_points for layer in transformer.decoder.layers) * model.num_queries
    return float(seen["batch"] * per_point * (encoder + decoder))


def part_modules(model, parts) -> list[tuple[str, nn.Module]]:
    """(part, module) for each module whose forward is a part's: a ModuleList is never called,
    so its members are taken, each once (without box refinement the heads are one module
    repeated)."""
    pairs = []
    for part, prefix in parts:
        module = model.get_submodule(prefix)
        members = {id(m): m for m in (module if isinstance(module, nn.ModuleList) else [module])}
        pairs += [(part, member) for member in members.values()]
    return pairs


def time_by_part(model, run: Callable) -> dict[str, float]:
    """Seconds spent in each part's forward during ``run`` (module hooks; on the CPU the work is
    synchronous, so wall time per call is the part's own)."""
    spent: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}
    handles = []
    for part, member in part_modules(model, PARTS):
        def before(_module, _inputs, part=part):
            started[part] = time.perf_counter()

        def after(_module, _inputs, _output, part=part):
            spent[part] += time.perf_counter() - started.pop(part)

        handles += [member.register_forward_pre_hook(before), member.register_forward_hook(after)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return dict(spent)


# ---- the report --------------------------------------------------------------------------------


def report_parts(model, images, mask, repeat: int) -> None:
    inference = inference_step(model, images, mask)
    flops = flops_by_part(inference_step(model, images, mask, grad=True))
    flops["attention sampling"] = attention_flops(model, inference)
    matmul, conv = matmul_throughput(), conv_throughput()
    inference()  # warm-up
    seconds: dict[str, float] = defaultdict(float)
    for _ in range(repeat):
        for part, value in time_by_part(model, inference).items():
            seconds[part] += value / repeat
    print(f"floor: matmul {matmul / 1e9:.1f} GFLOP/s, 3x3 convolution {conv / 1e9:.1f} GFLOP/s (float32, large)")
    print("| part (inference) | GFLOP | floor s | measured s | measured / floor |")
    print("|---|---|---|---|---|")
    for part in dict.fromkeys(p for p, _ in PARTS):
        throughput = conv if part in ("backbone", "input projections") else matmul
        floor = flops.get(part, 0.0) / throughput
        measured = seconds.get(part, float("nan"))
        print(f"| {part} | {flops.get(part, 0.0) / 1e9:.1f} | {floor:.3f} | {measured:.3f} | "
              f"{measured / floor if floor else float('nan'):.1f}x |")
    sampling = flops["attention sampling"]
    print(f"| (attention sampling, inside encoder/decoder) | {sampling / 1e9:.1f} | - | - | - |")


def report_ops(model, images, mask, repeat: int, count: int) -> None:
    """The ``count`` operators with the most time of their own in an inference (the torch
    profiler over ``repeat`` inferences after a warm-up), per inference, with their share of it."""
    from torch.profiler import ProfilerActivity, profile

    run = inference_step(model.eval(), images, mask)
    run()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeat):
            run()
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    print("| operator (inference) | calls | ms per inference | share |")
    print("|---|---|---|---|")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:count]:
        print(f"| {event.key} | {event.count // repeat} | {event.self_cpu_time_total / repeat / 1e3:.1f} | "
              f"{event.self_cpu_time_total / total:.1%} |")
    print(f"| (all operators) | | {total / repeat / 1e3:.1f} | 100% |")


def report_training_parts(model, criterion, images, mask, targets, repeat: int) -> None:
    """The same account for a training step: each part's forward and backward FLOPs and seconds
    (the backward's by autograd node, ``bench.backward``), the loss, the glue between the parts and
    the optimizer's step, against the floor of the part's FLOPs at this machine's throughput."""
    from deformdetr.bench.backward import OTHER, backward_by_part
    from deformdetr.engine.tasks.base import adamw

    model.train()
    forward_seconds: dict[str, float] = defaultdict(float)
    backward_seconds: dict[str, float] = defaultdict(float)

    def forward():
        return model(images, mask)

    def loss_of(outputs):
        return criterion.total(criterion(outputs, targets))

    def timed_forward():
        outputs = []
        started = time.perf_counter()
        for part, value in time_by_part(model, lambda: outputs.append(forward())).items():
            forward_seconds[part] += value
        forward_seconds[OTHER] += time.perf_counter() - started  # minus the parts, below
        return outputs[0]

    def timed_loss(outputs):
        started = time.perf_counter()
        loss = loss_of(outputs)
        forward_seconds["loss"] += time.perf_counter() - started
        return loss

    forward_flops = flops_by_part(inference_step(model, images, mask, grad=True))
    backward_flops = backward_by_part(model, PARTS, forward, loss_of, count_flops=True)
    model.zero_grad(set_to_none=True)
    matmul, conv = matmul_throughput(), conv_throughput()
    backward_by_part(model, PARTS, forward, loss_of)  # warm-up
    for _ in range(repeat):
        model.zero_grad(set_to_none=True)
        for part, value in backward_by_part(model, PARTS, timed_forward, timed_loss).items():
            backward_seconds[part] += value["seconds"]
    parts = list(dict.fromkeys(p for p, _ in PARTS))
    forward_seconds[OTHER] -= sum(forward_seconds[p] for p in parts)
    optimizer = adamw([{"params": [p for p in model.parameters() if p.requires_grad]}], lr=1e-5)
    step_seconds = median_seconds(optimizer.step, repeat, warmup=1)
    plain = median_seconds(training_step(model, criterion, optimizer, images, mask, targets), repeat, warmup=1)

    print("| part (training step) | forward GFLOP | backward GFLOP | floor s | forward s | backward s "
          "| measured / floor |")
    print("|---|---|---|---|---|---|---|")
    total = 0.0
    for part in parts + [OTHER, "loss"]:
        fwd_s, bwd_s = forward_seconds[part] / repeat, backward_seconds[part] / repeat
        total += fwd_s + bwd_s
        if part not in parts:
            print(f"| {part} | - | - | - | {fwd_s:.3f} | {bwd_s:.3f} | - |")
            continue
        throughput = conv if part in ("backbone", "input projections") else matmul
        fwd_f, bwd_f = forward_flops.get(part, 0.0), backward_flops.get(part, {}).get("flops", 0.0)
        floor = (fwd_f + bwd_f) / throughput
        print(f"| {part} | {fwd_f / 1e9:.1f} | {bwd_f / 1e9:.1f} | {floor:.3f} | {fwd_s:.3f} | {bwd_s:.3f} "
              f"| {(fwd_s + bwd_s) / floor if floor else float('nan'):.1f}x |")
    total += step_seconds
    print(f"| optimizer step (fused AdamW) | - | - | - | - | - | {step_seconds:.3f} s |")
    print(f"sum of the rows {total:.2f} s; the training step without the hooks {plain:.2f} s "
          f"(the rest: autograd's engine and the hooks' own time)")


def demo_training_step(compile_model: bool = False):
    """One training step of the demo's preset (its model, optimizer, batch and image size) on a
    fixed random batch: ``(step, optimizer, batch, size)``."""
    from deformdetr.configs import load_config
    from deformdetr.engine.tasks import get_task

    cfg = load_config("demo_synthetic", ["device=cpu"])
    task = get_task(cfg)
    model, criterion = task.build_model(load_pretrained=False)
    optimizer = task.build_optimizer(model)
    generator = torch.Generator().manual_seed(0)
    batch, size = cfg["train"]["batch_size"], cfg["data"]["synthetic"]["image_size"]
    images = torch.randn(batch, 3, size, size, generator=generator)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    targets = random_targets(batch, generator, num_classes=cfg["model"]["num_classes"], boxes=3)
    model.train()
    runner = model if not compile_model else torch.compile(model)
    return training_step(runner, criterion, optimizer, images, mask, targets), optimizer, batch, size


def demo_throughput(steps: int, compile_model: bool) -> None:
    """Images per second of the demo's training (its preset, batch and image size), over
    ``steps`` steps after two warm-up steps."""
    step, optimizer, batch, size = demo_training_step(compile_model)
    seconds = median_seconds(step, steps, warmup=2)
    print(f"demo training: batch {batch} of {size}x{size}, {torch.get_num_threads()} threads"
          f"{', compiled' if compile_model else ''}: {seconds * 1e3:.0f} ms a step, {batch / seconds:.1f} images/s")
    report_optimizer_step(optimizer, steps)


def report_optimizer_step(optimizer, steps: int) -> None:
    """The optimizer's step alone, fused (as the tasks build it) and as torch's per-parameter
    loop, on the same parameters and gradients (copies: the model is left as it was)."""
    groups = [{**{k: v for k, v in group.items() if k not in ("params", "fused", "foreach")},
               "params": [p.detach().clone().requires_grad_(True) for p in group["params"]]}
              for group in optimizer.param_groups]
    for group, source in zip(groups, optimizer.param_groups):
        for param, original in zip(group["params"], source["params"]):
            param.grad = torch.zeros_like(param) if original.grad is None else original.grad.clone()
    count = sum(p.numel() for group in groups for p in group["params"])
    # Fresh group dicts for each: an optimizer writes its settings into the dicts it is given.
    times = {name: median_seconds(torch.optim.AdamW([dict(group) for group in groups], **settings).step, steps,
                                  warmup=2)
             for name, settings in (("per-parameter loop", {"foreach": False}), ("fused", {"fused": True}))}
    print(f"AdamW step over {count / 1e6:.1f}M parameters: "
          + ", ".join(f"{name} {t * 1e3:.1f} ms" for name, t in times.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deformdetr bench model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="multi_scale",
                        choices=["single_scale", "single_scale_dc5", "multi_scale", "box_refine", "two_stage"])
    parser.add_argument("--size", type=image_size, default=(800, 1066), help="HEIGHTxWIDTH (default 800x1066)")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--repeat", "--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the model")
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument("--parts", action="store_true", help="FLOPs, floor and time of each part (inference; then a training step, unless --no-train)")
    parser.add_argument("--ops", type=positive_int, default=None, metavar="N",
                        help="the N operators with the most time in an inference (torch profiler), instead")
    parser.add_argument("--demo", action="store_true", help="the demo's training throughput instead")
    parser.add_argument("--steps", type=positive_int, default=10, help="--demo: steps timed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo:
        demo_throughput(args.steps, args.compile)
        return
    model, criterion = build(args.variant)
    height, width = args.size
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, height, width, generator=generator)
    mask = torch.zeros(args.batch, height, width, dtype=torch.bool)
    print(f"{args.variant}, batch {args.batch} of {height}x{width}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    if args.ops:
        report_ops(model, images, mask, args.repeat, args.ops)
        return
    if args.parts:
        report_parts(model.eval(), images, mask, args.repeat)
        if not args.no_train:
            report_training_parts(model, criterion, images, mask, random_targets(args.batch, generator), args.repeat)
        return
    runs = {"eager": model}
    if args.compile:
        runs["compiled"] = torch.compile(model)
    print("| step | " + " | ".join(f"{name} s" for name in runs) + " |")
    print("|---|" + "---|" * len(runs))
    rows = [("inference", lambda m: inference_step(m.eval(), images, mask))]
    if not args.no_train:
        targets = random_targets(args.batch, generator)

        def train_step(runner):
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            return training_step(runner, criterion, optimizer, images, mask, targets)

        rows.append(("training step", train_step))
    for name, make in rows:
        times = [median_seconds(make(runner), args.repeat) for runner in runs.values()]
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
