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
# data.* keys passed to the data set as they are (deformdetr.data.KittiMono3D's arguments).
DATASET_KEYS = ("writelist", "class_merging", "meanshape", "clip_2d", "aug_pd", "aug_crop", "random_flip",
                "random_crop", "scale", "shift", "depth_scale")


@register_task
class Mono3DTask(Task):
    name = "mono3d"
    schema = "_defaults_mono3d.yaml"
    family = "monodetr"
    datasets = ("kitti", "synthetic")
    headline = "Car_3d_moderate_R40"
    plot_panel = ((("test_Car_3d_moderate_R40", "Car 3D"), ("test_Car_bev_moderate_R40", "Car BEV")),
                  "KITTI AP R40, moderate (%)", (0, 100))
    title = "3D (MonoDETR)"
    predict_options = (
        ("--calib", dict(metavar="FILE_OR_FOLDER", help="the camera: a KITTI calib file for all images, or a folder "
                                                        "of them named as the images (KITTI's calib/)")),
        ("--intrinsics", dict(metavar="FX,FY,CX,CY", help="the camera of all images as focal lengths and "
                                                          "principal point, in pixels")),
    )
    demo_preset = "demo_monodetr_synthetic"
    demo_minutes = 15.0

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        from deformdetr.configs import ConfigError
        from deformdetr.data.kitti_dataset import DEPTH_SCALES

        topk, threshold = cfg["test"]["topk"], cfg["test"]["threshold"]
        if not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"test.topk must be a positive integer, got {topk!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"test.threshold is a score in [0, 1], got {threshold!r}")
        _check_classes(cfg)
        if cfg["data"]["depth_scale"] not in DEPTH_SCALES:
            raise ConfigError(f"data.depth_scale must be one of {', '.join(DEPTH_SCALES)}, "
                              f"got {cfg['data']['depth_scale']!r}")

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
        common = dict(resolution=tuple(data["resolution"]), height_scale=data["height_scale"],
                      **{key: data[key] for key in DATASET_KEYS})
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
        return decode(as_float32(outputs), calibs, img_sizes, img_ids=[int(info["img_id"]) for info in infos],
                      **self.decode_settings())

    def decode_settings(self, threshold: Optional[float] = None) -> dict:
        """What turns outputs into boxes, as evaluation does (test.topk, test.threshold unless
        ``threshold`` is given, the class mean sizes with data.meanshape)."""
        from deformdetr.models.mono.decode import KITTI_CLS_MEAN_SIZE

        test = self.cfg["test"]
        return {"topk": test["topk"], "threshold": test["threshold"] if threshold is None else threshold,
                "cls_mean_size": KITTI_CLS_MEAN_SIZE if self.cfg["data"]["meanshape"] else None}

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

    def predict_images(self, model, image_paths, output_dir: str, device, threshold: Optional[float], categories,
                       batch_size: int = 1, compile: bool = False, calib: Optional[str] = None,
                       intrinsics: Optional[str] = None):
        """3D boxes on image files (engine.predict_3d.predict_images_3d), each image with its camera
        (``calib`` or ``intrinsics``, see data.camera.image_cameras), at data.resolution and
        decoded as in evaluation; ``threshold`` replaces test.threshold; ``compile``: the model
        through torch.compile."""
        from deformdetr.data.camera import image_cameras
        from deformdetr.engine.predict_3d import predict_images_3d

        cameras = image_cameras(image_paths, calib, intrinsics)
        return predict_images_3d(model, image_paths, output_dir, device, cameras, self.cfg["data"]["resolution"],
                                 self.decode_settings(threshold), categories, batch_size=batch_size,
                                 compile=compile)

    def validation_images(self) -> tuple[list[str], dict]:
        from deformdetr.data.kitti_dataset import read_split_file

        data = self.cfg["data"]
        split = os.path.join(data["root"], "ImageSets", f"{data['val_split']}.txt")
        folder = os.path.join(data["root"], "testing" if data["val_split"] == "test" else "training")
        images = [os.path.join(folder, "image_2", f"{index}.png") for index in read_split_file(split)]
        return images, {"calib": os.path.join(folder, "calib")}

    def categories(self, dataset):
        return self.default_categories(self.cfg["model"]["num_classes"])

    def default_categories(self, num_classes: int):
        """KITTI's classes in the official training order (data.kitti.KITTI_CLASS_NAMES)."""
        from deformdetr.data.categories import Categories
        from deformdetr.data.kitti import KITTI_CLASS_NAMES

        return Categories.from_label_names(dict(enumerate(KITTI_CLASS_NAMES[:num_classes])), num_classes)


def _check_classes(cfg: dict) -> None:
    """data.writelist holds KITTI classes whose labels (the fixed official numbering) the model has."""
    from deformdetr.configs import ConfigError
    from deformdetr.data.kitti import KITTI_CLASS_NAMES, KITTI_CLS2ID

    writelist, num_classes = cfg["data"]["writelist"], cfg["model"]["num_classes"]
    numbering = ", ".join(f"{name} {label}" for label, name in enumerate(KITTI_CLASS_NAMES))
    if not isinstance(writelist, list) or not writelist or not all(name in KITTI_CLS2ID for name in writelist):
        raise ConfigError(f"data.writelist must list some of {', '.join(KITTI_CLASS_NAMES)} (e.g. [Car]), "
                          f"got {writelist!r}")
    too_high = [name for name in writelist if KITTI_CLS2ID[name] >= num_classes]
    if cfg["data"]["class_merging"] and KITTI_CLS2ID["Car"] >= num_classes:
        too_high.append("Car (class_merging)")
    if too_high:
        raise ConfigError(f"model.num_classes={num_classes} has no label for {', '.join(too_high)}: labels keep "
                          f"the official numbering ({numbering}) whatever data.writelist holds; use 3")
