"""Monocular 3D detection: MonoDETR on KITTI-format data (the KITTI 3D object benchmark or the
synthetic set), evaluated with the KITTI devkit's AP R40 (2D, BEV, 3D) for Car, Pedestrian and
Cyclist."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from deformdetr.engine import distributed as dist
from deformdetr.engine.optim import build_mono_optimizer, build_mono_scheduler
from deformdetr.engine.outputs import as_float32
from deformdetr.engine.tasks import generate_synthetic_once
from deformdetr.engine.tasks.detection import to_device

__all__ = ["Mono3DTask"]

# The headline numbers first: the trainer prints the first two.
HEADLINE = ("Car_3d_moderate_R40", "Car_bev_moderate_R40")


class Mono3DTask:
    name = "mono3d"

    def __init__(self, results_dir: str = None):
        #: When set, evaluation also writes KITTI result files (label_2 format with scores) here.
        self.results_dir = results_dir

    def build_model(self, cfg: dict, load_pretrained: bool = True):
        from deformdetr.models.backbone import load_backbone_weights
        from deformdetr.models.mono.criterion import build_monodetr_criterion
        from deformdetr.models.mono.monodetr import build_monodetr, make_monodetr_config

        settings = {k: v for k, v in cfg["model"].items() if k != "pretrained_backbone"}
        config = make_monodetr_config(**settings)
        model = build_monodetr(config)
        pretrained = cfg["model"]["pretrained_backbone"]
        if load_pretrained and pretrained:
            load_backbone_weights(model.backbone[0], None if pretrained is True else str(pretrained))
        criterion = build_monodetr_criterion(
            num_classes=config.num_classes, dec_layers=config.dec_layers, aux_loss=config.aux_loss,
            group_num=config.group_num, num_depth_bins=config.num_depth_bins, depth_min=config.depth_min,
            depth_max=config.depth_max, **cfg["loss"],
        )
        return model, criterion

    def build_datasets(self, cfg: dict):
        """(train, val); a synthetic set is generated into data.root on first use."""
        from deformdetr.data import KittiMono3D, generate_synthetic_kitti

        data = cfg["data"]
        if data["dataset"] == "synthetic":
            synthetic_kitti = lambda root, image_size, **kw: generate_synthetic_kitti(  # noqa: E731
                root, image_size=tuple(image_size), **kw)
            generate_synthetic_once(data, os.path.join("ImageSets", f"{data['val_split']}.txt"), synthetic_kitti)
        common = dict(resolution=tuple(data["resolution"]), random_flip=data["random_flip"],
                      random_crop=data["random_crop"], scale=data["scale"], shift=data["shift"],
                      height_scale=data["height_scale"])
        return (KittiMono3D(data["root"], data["train_split"], **common),
                KittiMono3D(data["root"], data["val_split"], **common))

    @staticmethod
    def build_optimizer(model, train: dict):
        return build_mono_optimizer(model, train)

    @staticmethod
    def build_scheduler(optimizer, train: dict):
        return build_mono_scheduler(optimizer, train)

    @staticmethod
    def collate_fn(samples):
        from deformdetr.data import mono_collate_fn

        return mono_collate_fn(samples)

    def split_batch(self, batch, device):
        images, calibs, img_sizes, targets, _ = batch
        inputs = (images.to(device, non_blocking=True), calibs.to(device), img_sizes.to(device))
        return inputs, to_device(targets, device)

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device, autocast, topk: int = 50, threshold: float = 0.2) -> dict:
        """KITTI AP (strict overlaps) of the decoded detections against the split's label files."""
        from deformdetr.data.kitti_dataset import KITTI_CLASS_NAMES
        from deformdetr.eval.kitti import evaluate_kitti, read_kitti_label_file, write_kitti_result_file
        from deformdetr.models.mono.decode import decode

        model.eval()
        per_image: dict[int, list] = {}
        for images, calibs, img_sizes, _, infos in tqdm(loader, desc="eval", disable=not dist.is_main_process(),
                                                         leave=False, dynamic_ncols=True, file=sys.stderr):
            with autocast():
                outputs = model(images.to(device), calibs.to(device), img_sizes.to(device))
            decoded = decode(as_float32(outputs), calibs, img_sizes, topk=topk, threshold=threshold,
                             img_ids=[int(info["img_id"]) for info in infos])
            per_image.update(decoded)
        merged: dict[int, list] = {}
        for part in dist.all_gather_objects(per_image):
            merged.update(part)
        if not dist.is_main_process():
            return {}
        ids = sorted(merged)
        label_dir = os.path.join(dataset.data_dir, "label_2")
        gt = [read_kitti_label_file(os.path.join(label_dir, f"{i:06d}.txt")) for i in ids]
        dt = [_devkit_annotation(merged[i], KITTI_CLASS_NAMES) for i in ids]
        if self.results_dir:
            for image_id, annotation in zip(ids, dt):
                write_kitti_result_file(os.path.join(self.results_dir, f"{image_id:06d}.txt"), annotation)
        flat = evaluate_kitti(gt, dt).to_flat_dict()
        return {**{k: flat[k] for k in HEADLINE if k in flat}, **flat}

    @staticmethod
    def class_names(dataset) -> dict:
        from deformdetr.data.kitti_dataset import KITTI_CLASS_NAMES

        return dict(enumerate(KITTI_CLASS_NAMES))


def _devkit_annotation(rows: list, class_names) -> dict:
    """decode's rows [cls, alpha, x1, y1, x2, y2, h, w, l, x, y, z, ry, score] as a devkit
    annotation dict (dimensions in the devkit's (l, h, w) order)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 14)
    return {
        "name": np.array([class_names[int(c)] for c in rows[:, 0]], dtype="<U10"),
        "truncated": np.zeros(len(rows)),
        "occluded": np.zeros(len(rows), dtype=np.int64),
        "alpha": rows[:, 1],
        "bbox": rows[:, 2:6],
        "dimensions": rows[:, [8, 6, 7]],
        "location": rows[:, 9:12],
        "rotation_y": rows[:, 12],
        "score": rows[:, 13],
    }
