"""Monocular 3D detection: MonoDETR on KITTI-format data (the KITTI 3D object benchmark or the
synthetic set), with the official optimizer and schedule, evaluated with the KITTI devkit's AP
R40 (2D, BEV, 3D) for Car, Pedestrian and Cyclist."""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from deformdetr.engine.outputs import as_float32
from deformdetr.engine.tasks import register_task
from deformdetr.engine.tasks.base import Task, adamw, to_device

__all__ = ["Mono3DTask"]

# The headline numbers first: the trainer prints the first two.
HEADLINE = ("Car_3d_moderate_R40", "Car_bev_moderate_R40")


@register_task
class Mono3DTask(Task):
    name = "mono3d"
    schema = "_defaults_mono3d.yaml"
    family = "monodetr"
    datasets = ("kitti", "synthetic")
    headline = "Car_3d_moderate_R40"
    plot_panel = ((("test_Car_3d_moderate_R40", "Car 3D"), ("test_Car_bev_moderate_R40", "Car BEV")),
                  "KITTI AP R40, moderate (%)", (0, 100))

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        from deformdetr.configs import ConfigError

        topk, threshold = cfg["test"]["topk"], cfg["test"]["threshold"]
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"test.topk must be a positive integer, got {topk!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"test.threshold is a score in [0, 1], got {threshold!r}")

    def build_model(self, load_pretrained: bool = True):
        from deformdetr.models.detector import load_pretrained_backbone
        from deformdetr.models.mono.criterion import build_monodetr_criterion
        from deformdetr.models.mono.monodetr import build_monodetr, make_monodetr_config

        settings = {k: v for k, v in self.cfg["model"].items() if k != "pretrained_backbone"}
        config = make_monodetr_config(**settings)
        model = build_monodetr(config)
        if load_pretrained:
            load_pretrained_backbone(model, self.cfg["model"]["pretrained_backbone"])
        criterion = build_monodetr_criterion(
            num_classes=config.num_classes, dec_layers=config.dec_layers, aux_loss=config.aux_loss,
            group_num=config.group_num, num_depth_bins=config.num_depth_bins, depth_min=config.depth_min,
            depth_max=config.depth_max, **self.cfg["loss"],
        )
        return model, criterion

    def build_datasets(self, categories=None):
        """(train, val); a synthetic set is generated into data.root on first use."""
        from deformdetr.data import KittiMono3D, generate_synthetic_kitti

        data = self.cfg["data"]
        if data["dataset"] == "synthetic":
            def synthetic_kitti(root, image_size, **kwargs):
                generate_synthetic_kitti(root, image_size=tuple(image_size), **kwargs)

            self.generate_synthetic_once(os.path.join("ImageSets", f"{data['val_split']}.txt"), synthetic_kitti)
        common = dict(resolution=tuple(data["resolution"]), random_flip=data["random_flip"],
                      random_crop=data["random_crop"], scale=data["scale"], shift=data["shift"],
                      height_scale=data["height_scale"])
        return (KittiMono3D(data["root"], data["train_split"], **common),
                KittiMono3D(data["root"], data["val_split"], **common))

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        """MonoDETR's official optimizer: AdamW, no weight decay on biases."""
        train = self.cfg["train"]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
                  {"params": [p for n, p in named if "bias" not in n], "weight_decay": train["weight_decay"]}]
        return adamw(groups, lr=train["lr"])

    def build_scheduler(self, optimizer):
        """MonoDETR's official schedule: the learning rate times decay_rate at each decay_list epoch."""
        train = self.cfg["train"]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, train["decay_list"], gamma=train["decay_rate"])

    def collate_fn(self, samples):
        from deformdetr.data import mono_collate_fn

        return mono_collate_fn(samples)

    def split_batch(self, batch, device):
        images, calibs, img_sizes, targets, _ = batch
        inputs = (images.to(device, non_blocking=True), calibs.to(device), img_sizes.to(device))
        return inputs, to_device(targets, device)

    def predict_batch(self, model, batch, device, autocast: Callable) -> dict:
        """Each image's decoded detections: the test.topk best queries scoring at least
        test.threshold, as KITTI boxes."""
        from deformdetr.models.mono.decode import decode

        images, calibs, img_sizes, _, infos = batch
        with autocast():
            outputs = model(images.to(device), calibs.to(device), img_sizes.to(device))
        test = self.cfg["test"]
        return decode(as_float32(outputs), calibs, img_sizes, topk=test["topk"], threshold=test["threshold"],
                      img_ids=[int(info["img_id"]) for info in infos])

    def score(self, predictions: dict, dataset, results_dir: Optional[str] = None) -> dict:
        """KITTI AP (strict overlaps) against the split's label files; ``results_dir`` receives the
        KITTI result files (label_2 format with scores), one per image."""
        from deformdetr.eval.kitti import evaluate_kitti, kitti_detections, read_kitti_label_dir, write_kitti_result_dir

        ids = sorted(predictions)
        gt = read_kitti_label_dir(os.path.join(dataset.data_dir, "label_2"), ids)
        dt = [kitti_detections(predictions[i]) for i in ids]
        if results_dir:
            write_kitti_result_dir(results_dir, ids, dt)
        flat = evaluate_kitti(gt, dt).to_flat_dict()
        return {**{k: flat[k] for k in HEADLINE if k in flat}, **flat}

    def format_metrics(self, metrics: dict) -> str:
        """KITTI AP (R40, moderate) of each class and kind, in percent."""
        shown = {k: v for k, v in metrics.items() if k.endswith("_moderate_R40")}
        return "KITTI AP|R40 moderate " + ", ".join(f"{k.removesuffix('_moderate_R40')} {v:.2f}"
                                                    for k, v in shown.items())

    def categories(self, dataset):
        return self.default_categories(self.cfg["model"]["num_classes"])

    def default_categories(self, num_classes: int):
        """KITTI's classes in the official training order (data.kitti.KITTI_CLASS_NAMES)."""
        from deformdetr.data.categories import Categories
        from deformdetr.data.kitti import KITTI_CLASS_NAMES

        return Categories.from_label_names(dict(enumerate(KITTI_CLASS_NAMES[:num_classes])), num_classes)
