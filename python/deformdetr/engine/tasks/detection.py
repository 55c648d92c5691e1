"""2D detection: Deformable DETR on COCO-format data (the official data sets or the synthetic one),
with the official optimizer and schedule, evaluated with COCO box AP."""

from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from deformdetr.engine.outputs import as_float32
from deformdetr.engine.tasks import register_task
from deformdetr.engine.tasks.base import Task, adamw, to_device

__all__ = ["DetectionTask", "transform_settings", "parameter_groups", "COCO_RESULTS_NAME"]

#: The COCO-format results file ``eval --results-dir`` writes.
COCO_RESULTS_NAME = "coco_detections.json"
#: The score ``deformdetr predict`` keeps detections from, unless told.
PREDICT_THRESHOLD = 0.5


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
    title = "2D (Deformable DETR)"
    demo_preset = "demo_synthetic"
    demo_minutes = 12.0
    # After 12 CPU minutes the demo's focal-loss scores peak near 0.5 (AP50 0.85): drawn from 0.5,
    # most objects would show no box.
    demo_threshold = 0.4

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

    def build_datasets(self, categories=None):
        """(train, val). A synthetic set is generated into data.root on first use. The training
        annotations give the categories (``model.num_classes: auto`` is resolved here), unless
        ``categories`` (a checkpoint's) are given; the validation set takes the same."""
        self._generate_synthetic_set()
        model = self.cfg["model"]
        train = self._split("train", categories or model["num_classes"])
        val = self._split("val", train.categories)
        _warn_about_categories(train, val)
        if model["num_classes"] == "auto":  # what the model is built with, and config.json records
            model["num_classes"] = train.categories.num_classes
        return train, val

    def build_eval_dataset(self, categories=None):
        """The validation set alone where the categories need no training set: given (a
        checkpoint's), or the category ids themselves (a number of classes)."""
        if categories is None and self.cfg["model"]["num_classes"] == "auto":
            return self.build_datasets()[1]
        self._generate_synthetic_set()
        return self._split("val", categories or self.cfg["model"]["num_classes"])

    def _generate_synthetic_set(self) -> None:
        from deformdetr.data import generate_synthetic_coco

        if self.cfg["data"]["dataset"] == "synthetic":
            self.generate_synthetic_once(os.path.join("annotations", "instances_val2017.json"),
                                         generate_synthetic_coco)

    def _split(self, split: str, categories):
        """A split where data.<split>_images / _annotations say, else under data.root."""
        from deformdetr.data import build_coco

        data = self.cfg["data"]
        dataset = build_coco(data["root"], split, skip_corrupt=data["skip_corrupt"], categories=categories,
                             images=data[f"{split}_images"], annotations=data[f"{split}_annotations"],
                             **transform_settings(data))
        _check_images(dataset, data["skip_corrupt"])
        return dataset

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        """The official AdamW (or SGD) over :func:`parameter_groups`."""
        train = self.cfg["train"]
        groups = parameter_groups(model, train)
        if train["sgd"]:
            return torch.optim.SGD(groups, lr=train["lr"], momentum=0.9, weight_decay=train["weight_decay"])
        return adamw(groups, lr=train["lr"], weight_decay=train["weight_decay"])

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
        """Each image's detections as COCO result entries, labels in category_id (see score)."""
        from deformdetr.eval.coco import coco_detections
        from deformdetr.models.postprocess import PostProcess

        images, mask, targets = batch
        with autocast():
            outputs = model(images.to(device), mask.to(device))
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        results = PostProcess()(as_float32(outputs), sizes)
        return {int(t["image_id"]): coco_detections(int(t["image_id"]), r) for t, r in zip(targets, results)}

    def score(self, predictions: dict, dataset, results_dir: Optional[str] = None) -> dict:
        """COCO box AP, and AP/AP50 per category; ``results_dir`` receives the detections as a
        COCO results file, with the data set's category ids."""
        from deformdetr.eval.coco import evaluate_coco, with_category_ids

        detections = with_category_ids((d for image in predictions.values() for d in image), dataset.categories)
        if results_dir:
            os.makedirs(results_dir, exist_ok=True)
            with open(os.path.join(results_dir, COCO_RESULTS_NAME), "w") as handle:
                json.dump(detections, handle)
        return evaluate_coco(dataset.coco, detections, predictions.keys())

    def format_metrics(self, metrics: dict) -> str:
        """The summary line, then the per-category table."""
        lines = ["COCO box " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("AP"))]
        per_class = metrics.get("per_class") or {}
        if per_class:
            labels = {name: f"{name} ({row['id']})" for name, row in per_class.items()}
            header = "category (id)"
            width = max(len(header), *(len(label) for label in labels.values()))
            lines.append(f"{header:<{width}}  {'AP':>6}  {'AP50':>6}")
            lines += [f"{labels[name]:<{width}}  {_number(row['AP'])}  {_number(row['AP50'])}"
                      for name, row in per_class.items()]
        return "\n".join(lines)

    def categories(self, dataset):
        return dataset.categories

    def default_categories(self, num_classes: int):
        """Official checkpoints of 91 classes predict COCO's categories, indexed by their ids."""
        from deformdetr.data.categories import coco_categories

        return coco_categories(num_classes) if num_classes > max(coco_categories().ids) else \
            super().default_categories(num_classes)

    def predict_images(self, model, image_paths, output_dir: str, device, threshold: Optional[float], categories,
                       batch_size: int = 1, compile: bool = False):
        """Detections on image files (engine.predict.predict_images) with this config's evaluation
        transform, scoring at least ``threshold`` (None: :data:`PREDICT_THRESHOLD`)."""
        from deformdetr.data.transforms import make_coco_transforms
        from deformdetr.engine.predict import predict_images

        transform = make_coco_transforms("val", **transform_settings(self.cfg["data"]))
        return predict_images(model, image_paths, output_dir, transform, device,
                              PREDICT_THRESHOLD if threshold is None else threshold, categories, batch_size=batch_size,
                              compile=compile)

    def validation_images(self) -> tuple[list[str], dict]:
        data = self.cfg["data"]
        folder = data["val_images"] or os.path.join(data["root"], "val2017")
        return sorted(glob.glob(os.path.join(folder, "*"))), {}


def _number(value) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"


def _check_images(dataset, skip_corrupt: bool) -> None:
    """Images the annotations list but the folder lacks: an error naming them (a warning with
    data.skip_corrupt, which skips them when they come up)."""
    missing = dataset.missing_images()
    if not missing:
        return
    names = ", ".join(os.path.basename(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
    message = (f"{dataset.ann_file} lists {len(missing)} images that are not in {dataset.img_folder} "
               f"({names})")
    if not skip_corrupt:
        raise FileNotFoundError(f"{message}; set data.skip_corrupt=true to train without them")
    warnings.warn(f"{message}: they are skipped", RuntimeWarning)


def _warn_about_categories(train, val) -> None:
    empty = train.categories_without_boxes()
    if empty:
        warnings.warn(f"{train.ann_file}: {len(empty)} categories have no boxes to learn from "
                      f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''})", RuntimeWarning)
    unknown = val.unknown_categories()
    if unknown:
        warnings.warn(f"{val.ann_file}: {len(unknown)} categories are not among the training set's and cannot "
                      f"be detected ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); their "
                      f"boxes are left out of the validation targets", RuntimeWarning)
