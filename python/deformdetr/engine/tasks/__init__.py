"""What differs between the detectors the engine trains: a *task* builds the model, criterion and
data sets from a config, turns a collated batch into the model's inputs and the targets, and
evaluates. The training loop itself (engine.trainer) is one for all tasks.

A task provides:
    build_model(cfg, load_pretrained) -> (model, criterion)
    build_datasets(cfg) -> (train set, val set)
    build_optimizer(model, train section), build_scheduler(optimizer, train section)
    collate_fn(samples) -> batch
    split_batch(batch, device) -> (model input tuple, targets on device)
    evaluate(model, loader, dataset, device, autocast) -> {metric: value} (main process; {} elsewhere)
    class_names(dataset) -> {label: name}
"""

from __future__ import annotations

import os
from typing import Callable

__all__ = ["get_task", "generate_synthetic_once"]


def generate_synthetic_once(data: dict, marker: str, generate: Callable) -> None:
    """Writes the configured synthetic set into data.root unless ``marker`` (a file the generator
    writes last) is already there: on the main process, while the others wait."""
    from deformdetr.engine import distributed as dist

    if os.path.exists(os.path.join(data["root"], marker)):
        return
    if dist.is_main_process():
        synthetic = data["synthetic"]
        generate(data["root"], num_train=synthetic["num_train"], num_val=synthetic["num_val"],
                 image_size=synthetic["image_size"], seed=synthetic["seed"])
    dist.barrier()


def get_task(cfg: dict):
    if cfg["task"] == "detection":
        from deformdetr.engine.tasks.detection import DetectionTask

        return DetectionTask()
    if cfg["task"] == "mono3d":
        from deformdetr.engine.tasks.mono3d import Mono3DTask

        return Mono3DTask()
    raise ValueError(f"unknown task {cfg['task']!r}")
