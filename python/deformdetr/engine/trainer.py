"""The training and evaluation loops, and everything they are built from a config."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from deformdetr.engine import distributed as dist
from deformdetr.engine.checkpoint import (
    load_training_checkpoint,
    preserved_rng,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from deformdetr.engine.tasks import get_task
from deformdetr.engine.outputs import as_float32

__all__ = ["resolve_device", "train", "train_one_epoch", "evaluate_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but torch sees no CUDA device")
    return device


def _loader(dataset, collate_fn, batch_size: int, train: bool, num_workers: int, seed: int,
            epoch: int) -> DataLoader:
    # Shuffling and worker seeds derive from (seed, epoch) only, so a resumed run sees exactly
    # the batches an uninterrupted run would.
    generator = torch.Generator().manual_seed(seed + epoch)
    if dist.is_distributed():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                      collate_fn=collate_fn, num_workers=num_workers, generator=generator,
                      persistent_workers=False)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_one_epoch(task, model, criterion, loader, optimizer, device, epoch: int, clip_max_norm: float,
                    amp: str = "off", scaler=None) -> dict:
    model.train()
    criterion.train()
    totals: dict[str, float] = {}
    count = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not dist.is_main_process(), leave=False,
               dynamic_ncols=True, file=sys.stderr)
    for batch in bar:
        inputs, targets = task.split_batch(batch, device)
        with _autocast(device, amp):
            outputs = model(*inputs)
        outputs = as_float32(outputs)
        losses = criterion(outputs, targets)
        loss = criterion.total(losses)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}: training diverged "
                                     f"(losses: { {k: float(v) for k, v in losses.items()} })")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        count += 1
        totals["loss"] = totals.get("loss", 0.0) + loss.item()
        for key in losses:
            if "_" in key[5:] or key.endswith("_enc"):  # per-layer copies: the final layer's suffice
                continue
                totals[key] = totals.get(key, 0.0) + float(losses[key].detach())
        bar.set_postfix(loss=f"{totals['loss'] / count:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
    return {k: v / max(count, 1) for k, v in totals.items()}


def _write_log(output_dir: str, record: dict) -> None:
    with open(os.path.join(output_dir, LOG_NAME), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(cfg: dict, resume: Optional[str] = None, progress: bool = True) -> dict:
    """Trains as the config says, evaluating and checkpointing each epoch. ``resume``: a
    checkpoint to continue from (model, optimizer, scheduler, epoch and RNG state)."""
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    if dist.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    output_dir = cfg["output_dir"]
    if dist.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "config.json"), "w") as handle:
            json.dump(cfg, handle, indent=2)
    train_cfg = cfg["train"]
    seed = train_cfg["seed"] + dist.rank()
    _seed_everything(seed)

    task = get_task(cfg)
    checkpoint = load_training_checkpoint(resume) if resume else None
    model, criterion = task.build_model(cfg, load_pretrained=checkpoint is None)
    model.to(device)
    optimizer = task.build_optimizer(model, train_cfg)
    scheduler = task.build_scheduler(optimizer, train_cfg)
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        start_epoch = checkpoint["epoch"] + 1
    model_ddp = model
    if dist.is_distributed():
        model_ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and train_cfg["amp"] == "fp16" else None

    train_set, val_set = task.build_datasets(cfg)
    class_names = task.class_names(val_set)
    batch_size, workers = train_cfg["batch_size"], cfg["data"]["num_workers"]
    started = time.time()
    last_eval: dict = {}
    epochs = train_cfg["epochs"]
    if checkpoint is not None:
        # Everything that consumed randomness while building is done: continue the saved streams.
        restore_rng_state(checkpoint["rng"])
    for epoch in range(start_epoch, epochs):
        epoch_start = time.time()
        loader = _loader(train_set, task.collate_fn, batch_size, True, workers, train_cfg["seed"], epoch)
        stats = train_one_epoch(task, model_ddp, criterion, loader, optimizer, device, epoch,
                                train_cfg["clip_max_norm"], train_cfg["amp"], scaler)
        scheduler.step()
        out_of_time = (train_cfg["max_minutes"] is not None
                       and (time.time() - started) / 60 >= train_cfg["max_minutes"])
        last = epoch == epochs - 1 or out_of_time
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - epoch_start,
                  **{f"train_{k}": v for k, v in stats.items()}}
        if (epoch + 1) % train_cfg["eval_every"] == 0 or last:
            with preserved_rng():
                val_loader = _loader(val_set, task.collate_fn, batch_size, False, workers, train_cfg["seed"], epoch)
                last_eval = task.evaluate(model_ddp, val_loader, val_set, device,
                                          lambda: _autocast(device, train_cfg["amp"]))
            record.update({f"test_{k}": v for k, v in last_eval.items()})
        # Saved after all of the epoch's randomness: a resume restores what the next epoch starts from.
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(),
                 "config": cfg, "args": dict(vars(model.config)), "class_names": class_names}
        if dist.is_main_process():
            save_atomic(state, os.path.join(output_dir, CHECKPOINT_NAME))
            _write_log(output_dir, record)
            if progress:
                summary = f"epoch {epoch}: loss {stats.get('loss', float('nan')):.4f}"
                if any(k.startswith("test_") for k in record):  # tasks list their headline metrics first
                    summary += ", " + ", ".join(f"{k} {v:.3f}" for k, v in list(last_eval.items())[:2])
                print(summary, flush=True)
        if out_of_time:
            break
    if dist.is_main_process():
        from deformdetr.engine.visualize import plot_log

        plot_log(os.path.join(output_dir, LOG_NAME), os.path.join(output_dir, "curves.png"))
    dist.barrier()
    return {"eval": last_eval, "minutes": (time.time() - started) / 60, "output_dir": output_dir}


def evaluate_checkpoint(cfg: dict, checkpoint_path: str, results_dir: Optional[str] = None) -> dict:
    """The task's metrics of a checkpoint (ours or official) on the config's validation split;
    for mono3d, ``results_dir`` also receives the KITTI result files."""
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    task = get_task(cfg)
    if results_dir is not None:
        if cfg["task"] != "mono3d":
            raise ValueError("results_dir (KITTI result files) is for mono3d configs")
        task.results_dir = results_dir
    state = load_training_checkpoint(checkpoint_path)
    model, _ = task.build_model(cfg, load_pretrained=False)
    model.load_state_dict(state["model"] if "model" in state else state["model_state"])
    model.to(device)
    _, val_set = task.build_datasets(cfg)
    loader = _loader(val_set, task.collate_fn, cfg["train"]["batch_size"], False, cfg["data"]["num_workers"], 0, 0)
    return task.evaluate(model, loader, val_set, device, lambda: _autocast(device, cfg["train"]["amp"]))
