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
from deformdetr.engine.optim import build_optimizer, build_scheduler
from deformdetr.eval.coco import coco_detections, evaluate_coco
from deformdetr.models.criterion import build_criterion
from deformdetr.models.deformable_detr import DeformableDETRConfig, build_deformable_detr, make_config
from deformdetr.models.backbone import load_backbone_weights
from deformdetr.models.postprocess import PostProcess

__all__ = ["resolve_device", "build_model", "build_datasets", "train", "evaluate", "evaluate_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} asked for, but torch sees no CUDA device")
    return device


def _model_settings(cfg: dict) -> dict:
    settings = {k: v for k, v in cfg["model"].items() if k not in ("variant", "pretrained_backbone")}
    settings["lr_backbone"] = cfg["train"]["lr_backbone"]
    return settings


def build_model(cfg: dict, load_pretrained: bool = True):
    """The model, its criterion and the post-processor the config describes."""
    config = make_config(cfg["model"]["variant"], **_model_settings(cfg))
    model = build_deformable_detr(config)
    pretrained = cfg["model"]["pretrained_backbone"]
    if load_pretrained and pretrained:
        load_backbone_weights(model.backbone[0], None if pretrained is True else str(pretrained))
    loss = cfg["loss"]
    criterion = build_criterion(
        num_classes=config.num_classes, dec_layers=config.dec_layers, aux_loss=config.aux_loss,
        set_cost_class=loss["set_cost_class"], set_cost_bbox=loss["set_cost_bbox"],
        set_cost_giou=loss["set_cost_giou"], cls_loss_coef=loss["cls_loss_coef"],
        bbox_loss_coef=loss["bbox_loss_coef"], giou_loss_coef=loss["giou_loss_coef"],
        focal_alpha=loss["focal_alpha"],
    )
    return model, criterion, PostProcess()


def build_datasets(cfg: dict):
    """(train, val) datasets; a synthetic set is generated into data.root on first use."""
    from deformdetr.data import generate_synthetic_coco

    data = cfg["data"]
    if data["dataset"] == "synthetic":
        marker = os.path.join(data["root"], "annotations", "instances_val2017.json")
        if not os.path.exists(marker):
            if dist.is_main_process():
                synthetic = data["synthetic"]
                generate_synthetic_coco(data["root"], num_train=synthetic["num_train"],
                                        num_val=synthetic["num_val"], image_size=synthetic["image_size"],
                                        seed=synthetic["seed"])
            dist.barrier()
    return build_coco_split(data, "train"), build_coco_split(data, "val")


def transform_settings(data: dict) -> dict:
    """The data section's resize/crop sizes as make_coco_transforms arguments."""
    return dict(scales=data["scales"], max_size=data["max_size"], crop_sizes=data["crop_resize"],
                crop_min_max=tuple(data["crop_size"]), val_size=data["val_size"])


def build_coco_split(data: dict, split: str):
    from deformdetr.data import build_coco

    return build_coco(data["root"], split, skip_corrupt=data["skip_corrupt"], **transform_settings(data))


def _loader(dataset, batch_size: int, train: bool, num_workers: int, seed: int, epoch: int) -> DataLoader:
    from deformdetr.data import collate_fn

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


def _to_device(targets, device):
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_one_epoch(model, criterion, loader, optimizer, device, epoch: int, clip_max_norm: float,
                    amp: str = "off", scaler=None) -> dict:
    model.train()
    criterion.train()
    totals: dict[str, float] = {}
    count = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not dist.is_main_process(), leave=False,
               dynamic_ncols=True, file=sys.stderr)
    for images, mask, targets in bar:
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        targets = _to_device(targets, device)
        with _autocast(device, amp):
            outputs = model(images, mask)
        outputs = _to_float32(outputs)
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
        for key in ("loss_ce", "loss_bbox", "loss_giou", "class_error"):
            if key in losses:
                totals[key] = totals.get(key, 0.0) + float(losses[key].detach())
        bar.set_postfix(loss=f"{totals['loss'] / count:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
    return {k: v / max(count, 1) for k, v in totals.items()}


def _to_float32(outputs):
    if isinstance(outputs, dict):
        return {k: _to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float32(v) for v in outputs]
    return outputs.float() if torch.is_tensor(outputs) and outputs.is_floating_point() else outputs


@torch.no_grad()
def evaluate(model, postprocess, loader, coco_gt, device, amp: str = "off", desc: str = "eval") -> dict:
    """COCO box AP on the loader's images (gathered over ranks, computed on the main process)."""
    model.eval()
    per_image: dict[int, list] = {}
    for images, mask, targets in tqdm(loader, desc=desc, disable=not dist.is_main_process(), leave=False,
                                      dynamic_ncols=True, file=sys.stderr):
        with _autocast(device, amp):
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        for target, result in zip(targets, postprocess(_to_float32(outputs), sizes)):
            image_id = int(target["image_id"])
            per_image[image_id] = coco_detections(image_id, result)
    # A DistributedSampler pads the split with repeated images; keying by image id drops them.
    merged: dict[int, list] = {}
    for part in dist.all_gather_objects(per_image):
        merged.update(part)
    if not dist.is_main_process():
        return {}
    return evaluate_coco(coco_gt, [d for dets in merged.values() for d in dets], merged.keys())


def _class_names(dataset) -> dict:
    coco = getattr(dataset, "coco", None)
    if coco is None:
        return {}
    return {int(c["id"]): c["name"] for c in coco.loadCats(coco.getCatIds())}


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

    checkpoint = load_training_checkpoint(resume) if resume else None
    model, criterion, postprocess = build_model(cfg, load_pretrained=checkpoint is None)
    model.to(device)
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)
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

    train_set, val_set = build_datasets(cfg)
    class_names = _class_names(val_set)
    batch_size, workers = train_cfg["batch_size"], cfg["data"]["num_workers"]
    started = time.time()
    last_eval: dict = {}
    epochs = train_cfg["epochs"]
    if checkpoint is not None:
        # Everything that consumed randomness while building is done: continue the saved streams.
        restore_rng_state(checkpoint["rng"])
    for epoch in range(start_epoch, epochs):
        epoch_start = time.time()
        loader = _loader(train_set, batch_size, True, workers, train_cfg["seed"], epoch)
        stats = train_one_epoch(model_ddp, criterion, loader, optimizer, device, epoch,
                                train_cfg["clip_max_norm"], train_cfg["amp"], scaler)
        scheduler.step()
        out_of_time = (train_cfg["max_minutes"] is not None
                       and (time.time() - started) / 60 >= train_cfg["max_minutes"])
        last = epoch == epochs - 1 or out_of_time
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.time() - epoch_start,
                  **{f"train_{k}": v for k, v in stats.items()}}
        if (epoch + 1) % train_cfg["eval_every"] == 0 or last:
            with preserved_rng():
                val_loader = _loader(val_set, batch_size, False, workers, train_cfg["seed"], epoch)
                last_eval = evaluate(model_ddp, postprocess, val_loader, val_set.coco, device, train_cfg["amp"])
            record.update({f"test_{k}": v for k, v in last_eval.items()})
        # Saved after all of the epoch's randomness: a resume restores what the next epoch starts from.
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "rng": rng_state(),
                 "config": cfg, "args": dict(model.config.__dict__), "class_names": class_names}
        if dist.is_main_process():
            save_atomic(state, os.path.join(output_dir, CHECKPOINT_NAME))
            _write_log(output_dir, record)
            if progress:
                summary = f"epoch {epoch}: loss {stats.get('loss', float('nan')):.4f}"
                if "test_AP" in record:
                    summary += f", AP {record['test_AP']:.3f}, AP50 {record['test_AP50']:.3f}"
                print(summary, flush=True)
        if out_of_time:
            break
    if dist.is_main_process():
        from deformdetr.engine.visualize import plot_log

        plot_log(os.path.join(output_dir, LOG_NAME), os.path.join(output_dir, "curves.png"))
    dist.barrier()
    return {"eval": last_eval, "minutes": (time.time() - started) / 60, "output_dir": output_dir}


def evaluate_checkpoint(cfg: dict, checkpoint_path: str) -> dict:
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    state = load_training_checkpoint(checkpoint_path)
    model, _, postprocess = build_model(cfg, load_pretrained=False)
    model.load_state_dict(state["model"])
    model.to(device)
    _, val_set = build_datasets(cfg)
    loader = _loader(val_set, cfg["train"]["batch_size"], False, cfg["data"]["num_workers"], 0, 0)
    return evaluate(model, postprocess, loader, val_set.coco, device, cfg["train"]["amp"])
