"""2D detection: Deformable DETR on COCO-format data (the official data sets or the synthetic one),
evaluated with COCO box AP."""

from __future__ import annotations

import os
import sys

import torch
from tqdm import tqdm

from deformdetr.engine import distributed as dist
from deformdetr.engine.optim import build_optimizer, build_scheduler
from deformdetr.engine.outputs import as_float32
from deformdetr.engine.tasks import generate_synthetic_once
from deformdetr.eval.coco import coco_detections, evaluate_coco
from deformdetr.models.backbone import load_backbone_weights
from deformdetr.models.criterion import build_criterion
from deformdetr.models.deformable_detr import build_deformable_detr, make_config
from deformdetr.models.postprocess import PostProcess

__all__ = ["DetectionTask", "transform_settings"]


def transform_settings(data: dict) -> dict:
    """The data section's resize/crop sizes as make_coco_transforms arguments."""
    return dict(scales=data["scales"], max_size=data["max_size"], crop_sizes=data["crop_resize"],
                crop_min_max=tuple(data["crop_size"]), val_size=data["val_size"])


def to_device(targets, device):
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


class DetectionTask:
    name = "detection"

    def build_model(self, cfg: dict, load_pretrained: bool = True):
        # None leaves a setting to the variant (e.g. two_stage for "two_stage").
        settings = {k: v for k, v in cfg["model"].items()
                    if k not in ("variant", "pretrained_backbone") and v is not None}
        settings["lr_backbone"] = cfg["train"]["lr_backbone"]
        config = make_config(cfg["model"]["variant"], **settings)
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
        return model, criterion

    def build_datasets(self, cfg: dict):
        """(train, val); a synthetic set is generated into data.root on first use."""
        from deformdetr.data import build_coco, generate_synthetic_coco

        data = cfg["data"]
        if data["dataset"] == "synthetic":
            generate_synthetic_once(data, os.path.join("annotations", "instances_val2017.json"),
                                    generate_synthetic_coco)
        datasets = tuple(build_coco(data["root"], split, skip_corrupt=data["skip_corrupt"], **transform_settings(data))
                         for split in ("train", "val"))
        for dataset in datasets:
            _check_categories(dataset, cfg["model"]["num_classes"])
        return datasets

    @staticmethod
    def build_optimizer(model, train: dict):
        return build_optimizer(model, train)

    @staticmethod
    def build_scheduler(optimizer, train: dict):
        return build_scheduler(optimizer, train)

    @staticmethod
    def collate_fn(samples):
        from deformdetr.data import collate_fn

        return collate_fn(samples)

    def split_batch(self, batch, device):
        images, mask, targets = batch
        return (images.to(device, non_blocking=True), mask.to(device, non_blocking=True)), to_device(targets, device)

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device, autocast) -> dict:
        """COCO box AP (gathered over ranks, computed on the main process)."""
        model.eval()
        postprocess = PostProcess()
        per_image: dict[int, list] = {}
        for images, mask, targets in tqdm(loader, desc="eval", disable=not dist.is_main_process(),
                                          leave=False, dynamic_ncols=True, file=sys.stderr):
            with autocast():
                outputs = model(images.to(device), mask.to(device))
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            for target, result in zip(targets, postprocess(as_float32(outputs), sizes)):
                image_id = int(target["image_id"])
                per_image[image_id] = coco_detections(image_id, result)
        # A DistributedSampler pads the split with repeated images; keying by image id drops them.
        merged: dict[int, list] = {}
        for part in dist.all_gather_objects(per_image):
            merged.update(part)
        if not dist.is_main_process():
            return {}
        return evaluate_coco(dataset.coco, [d for dets in merged.values() for d in dets], merged.keys())

    @staticmethod
    def class_names(dataset) -> dict:
        coco = getattr(dataset, "coco", None)
        if coco is None:
            return {}
        return {int(c["id"]): c["name"] for c in coco.loadCats(coco.getCatIds())}



def _check_categories(dataset, num_classes: int) -> None:
    """Category ids index the classifier's outputs: one beyond them would only fail mid-epoch,
    in the matcher."""
    ids = [a["category_id"] for a in dataset.coco.anns.values()]
    if ids and (max(ids) >= num_classes or min(ids) < 0):
        bad = max(ids) if max(ids) >= num_classes else min(ids)
        raise ValueError(f"{dataset.ann_file}: category id {bad} does not fit model.num_classes="
                         f"{num_classes} (ids must lie in 0..num_classes-1; the official COCO setting "
                         f"is 91 for ids up to 90)")
