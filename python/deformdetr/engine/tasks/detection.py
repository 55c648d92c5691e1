"""2D detection: Deformable DETR on COCO-format data (the official data sets or the synthetic one),
with the official optimizer and schedule, evaluated with COCO box AP."""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from deformdetr.engine.outputs import as_float32
from deformdetr.engine.tasks import register_task
from deformdetr.engine.tasks.base import Task, to_device

__all__ = ["DetectionTask", "transform_settings", "parameter_groups"]

#: The COCO-format results file ``eval --results-dir`` writes.
COCO_RESULTS_NAME = "coco_detections.json"


def transform_settings(data: dict) -> dict:
    """The data section's resize/crop sizes as make_coco_transforms arguments."""
    return dict(scales=data["scales"], max_size=data["max_size"], crop_sizes=data["crop_resize"],
                crop_min_max=tuple(data["crop_size"]), val_size=data["val_size"])


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(keyword in name for keyword in keywords)


def parameter_groups(model: nn.Module, train: dict) -> list[dict]:
    """The official three groups: the rest at lr; the backbone at lr_backbone; sampling offsets and
    reference points at lr * lr_linear_proj_mult."""
    backbone, proj = train["lr_backbone_names"], train["lr_linear_proj_names"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not _matches(n, backbone) and not _matches(n, proj)],
         "lr": train["lr"]},
        {"params": [p for n, p in named if _matches(n, backbone)], "lr": train["lr_backbone"]},
        {"params": [p for n, p in named if _matches(n, proj)],
         "lr": train["lr"] * train["lr_linear_proj_mult"]},
    ]


@register_task
class DetectionTask(Task):
    name = "detection"
    schema = "_defaults.yaml"
    family = "deformable_detr"
    datasets = ("coco", "synthetic")
    headline = "AP"
    plot_panel = ((("test_AP", "AP"), ("test_AP50", "AP50"), ("test_AP75", "AP75")), "COCO box AP", (0, 1))

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        from deformdetr.configs import ConfigError
        from deformdetr.models.deformable_detr import VARIANTS

        if cfg["model"]["variant"] not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {list(VARIANTS)}, got {cfg['model']['variant']!r}")

    def build_model(self, load_pretrained: bool = True):
        from deformdetr.models.criterion import build_criterion
        from deformdetr.models.deformable_detr import build_deformable_detr, make_config
        from deformdetr.models.detector import load_pretrained_backbone

        model_cfg = self.cfg["model"]
        # None leaves a setting to the variant (e.g. two_stage for "two_stage").
        settings = {k: v for k, v in model_cfg.items()
                    if k not in ("variant", "pretrained_backbone") and v is not None}
        settings["lr_backbone"] = self.cfg["train"]["lr_backbone"]
        config = make_config(model_cfg["variant"], **settings)
        model = build_deformable_detr(config)
        if load_pretrained:
            load_pretrained_backbone(model, model_cfg["pretrained_backbone"])
        loss = self.cfg["loss"]
        criterion = build_criterion(
            num_classes=config.num_classes, dec_layers=config.dec_layers, aux_loss=config.aux_loss,
            set_cost_class=loss["set_cost_class"], set_cost_bbox=loss["set_cost_bbox"],
            set_cost_giou=loss["set_cost_giou"], cls_loss_coef=loss["cls_loss_coef"],
            bbox_loss_coef=loss["bbox_loss_coef"], giou_loss_coef=loss["giou_loss_coef"],
            focal_alpha=loss["focal_alpha"],
        )
        return model, criterion

    def build_datasets(self):
        """(train, val); a synthetic set is generated into data.root on first use."""
        from deformdetr.data import build_coco, generate_synthetic_coco

        data = self.cfg["data"]
        if data["dataset"] == "synthetic":
            self.generate_synthetic_once(os.path.join("annotations", "instances_val2017.json"),
                                         generate_synthetic_coco)
        datasets = tuple(build_coco(data["root"], split, skip_corrupt=data["skip_corrupt"], **transform_settings(data))
                         for split in ("train", "val"))
        for dataset in datasets:
            _check_categories(dataset, self.cfg["model"]["num_classes"])
        return datasets

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        """The official AdamW (or SGD) over :func:`parameter_groups`."""
        train = self.cfg["train"]
        groups = parameter_groups(model, train)
        if train["sgd"]:
            return torch.optim.SGD(groups, lr=train["lr"], momentum=0.9, weight_decay=train["weight_decay"])
        return torch.optim.AdamW(groups, lr=train["lr"], weight_decay=train["weight_decay"])

    def build_scheduler(self, optimizer):
        """The official step decay: the learning rate divided by 10 at epoch lr_drop."""
        return torch.optim.lr_scheduler.StepLR(optimizer, self.cfg["train"]["lr_drop"])

    def collate_fn(self, samples):
        from deformdetr.data import collate_fn

        return collate_fn(samples)

    def split_batch(self, batch, device):
        images, mask, targets = batch
        return (images.to(device, non_blocking=True), mask.to(device, non_blocking=True)), to_device(targets, device)

    def predict_batch(self, model, batch, device, autocast: Callable) -> dict:
        from deformdetr.eval.coco import coco_detections
        from deformdetr.models.postprocess import PostProcess

        images, mask, targets = batch
        with autocast():
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        results = PostProcess()(as_float32(outputs), sizes)
        return {int(t["image_id"]): coco_detections(int(t["image_id"]), r) for t, r in zip(targets, results)}

    def score(self, predictions: dict, dataset, results_dir: Optional[str] = None) -> dict:
        """COCO box AP; ``results_dir`` receives the detections as a COCO results file."""
        from deformdetr.eval.coco import evaluate_coco

        detections = [d for image in predictions.values() for d in image]
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)
            with open(os.path.join(results_dir, COCO_RESULTS_NAME), "w") as handle:
                json.dump(detections, handle)
        return evaluate_coco(dataset.coco, detections, predictions.keys())

    def format_metrics(self, metrics: dict) -> str:
        return "COCO box " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("AP"))

    def class_names(self, dataset) -> dict:
        coco = getattr(dataset, "coco", None)
        if coco is None:
            return {}
        return {int(c["id"]): c["name"] for c in coco.loadCats(coco.getCatIds())}

    def predict_images(self, model, image_paths, output_dir: str, device, threshold: float, class_names: dict):
        """Detections on image files (engine.predict.predict_images) with this config's evaluation
        transform."""
        from deformdetr.data.transforms import make_coco_transforms
        from deformdetr.engine.predict import predict_images

        transform = make_coco_transforms("val", **transform_settings(self.cfg["data"]))
        return predict_images(model, image_paths, output_dir, transform, device, threshold, class_names)


def _check_categories(dataset, num_classes: int) -> None:
    """Category ids index the classifier's outputs: one beyond them would only fail mid-epoch,
    in the matcher."""
    ids = [a["category_id"] for a in dataset.coco.anns.values()]
    if ids and (max(ids) >= num_classes or min(ids) < 0):
        bad = max(ids) if max(ids) >= num_classes else min(ids)
        raise ValueError(f"{dataset.ann_file}: category id {bad} does not fit model.num_classes="
                         f"{num_classes} (ids must lie in 0..num_classes-1; the official COCO setting "
                         f"is 91 for ids up to 90)")
