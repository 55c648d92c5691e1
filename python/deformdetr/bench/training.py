"""The training loop of a preset (the demo's by default) on its own data, through its data loader,
part by part: waiting for the batch, forward, loss, backward, gradient clipping, optimizer step.

    deformdetr bench training [--config demo_synthetic] [--steps 30] [--threads N] [KEY=VALUE ...]

``bench model --demo`` times a step on one fixed batch; this times what an epoch does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deformdetr.bench import positive_int

#: Steps run before timing: the first steps of each input shape prepare its kernels.
WARMUP_STEPS = 5
PARTS = ("data", "forward", "loss", "backward", "clip", "optimizer")


def timed_steps(task, model, criterion, optimizer, loader, device, clip_max_norm: float, steps: int) -> list[dict]:
    """Seconds of each part of ``steps`` training steps (after the warm-up), as train_one_epoch
    does them."""
    model.train()
    criterion.train()
    batches = iter(loader)
    times = []
    for index in range(WARMUP_STEPS + steps):
        marks = [time.perf_counter()]
        inputs, targets = task.split_batch(next(batches), device)
        marks.append(time.perf_counter())
        outputs = model(*inputs)
        marks.append(time.perf_counter())
        loss = criterion.total(criterion(outputs, targets))
        loss.item()  # the loop checks the loss is finite, a host sync
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if index >= WARMUP_STEPS:
            times.append({part: end - start for part, start, end in zip(PARTS, marks, marks[1:])})
    return times


def main(argv=None):
    from deformdetr.configs import load_config
    from deformdetr.engine.tasks import get_task
    from deformdetr.engine.trainer import data_loader, resolve_device

    parser = argparse.ArgumentParser(prog="deformdetr bench training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", "-c", default="demo_synthetic", help="preset name or YAML file")
    parser.add_argument("--steps", type=positive_int, default=30, help=f"steps timed (after {WARMUP_STEPS} more)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.num_workers=1")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    task = get_task(cfg)
    train_set, _ = task.build_datasets()
    batch = cfg["train"]["batch_size"]
    if len(train_set) < batch * (WARMUP_STEPS + args.steps):
        raise SystemExit(f"deformdetr bench training: {len(train_set)} training samples make fewer than "
                         f"{WARMUP_STEPS + args.steps} batches of {batch}; ask for fewer --steps")
    device = resolve_device(cfg["device"])
    model, criterion = task.build_model(load_pretrained=False)
    model.to(device)
    optimizer = task.build_optimizer(model)
    workers = cfg["data"]["num_workers"]
    loader = data_loader(train_set, task.collate_fn, batch, True, workers, cfg["train"]["seed"], 0)
    times = timed_steps(task, model, criterion, optimizer, loader, device, cfg["train"]["clip_max_norm"], args.steps)
    medians = {part: statistics.median(t[part] for t in times) for part in PARTS}
    total = statistics.median(sum(t.values()) for t in times)
    print(f"{args.config}: batch {batch}, {workers} loader processes, {torch.get_num_threads()} threads, "
          f"{args.steps} steps on {device.type}")
    print(" | ".join(f"{part} {seconds * 1e3:.0f} ms" for part, seconds in medians.items())
          + f" | step {total * 1e3:.0f} ms, {batch / total:.1f} images/s (medians)")


if __name__ == "__main__":
    main()
