"""Data: COCO-format datasets, the official transforms, batching, and synthetic data sets."""

from deformdetr.data.build import build_coco
from deformdetr.data.coco import CocoDetection, ImageLoadError, convert_coco_annotations
from deformdetr.data.collate import collate_fn
from deformdetr.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_TRANSFORM_KWARGS,
    SyntheticCoco,
    generate_synthetic_coco,
)
from deformdetr.data.transforms import make_coco_transforms
from deformdetr.data.kitti import (
    KITTI_CLASS_NAMES,
    Calibration,
    KittiLabelLine,
    KittiObject,
    read_calib,
    read_label_lines,
    read_labels,
    write_calib,
    write_label_lines,
    write_labels,
)
from deformdetr.data.kitti_dataset import KittiMono3D, mono_collate_fn
from deformdetr.data.synthetic_kitti import SyntheticKitti, generate_synthetic_kitti

__all__ = [
    "CocoDetection",
    "ImageLoadError",
    "convert_coco_annotations",
    "make_coco_transforms",
    "collate_fn",
    "build_coco",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_TRANSFORM_KWARGS",
    "SyntheticCoco",
    "generate_synthetic_coco",
    "Calibration",
    "KittiLabelLine",
    "KittiObject",
    "read_calib",
    "read_label_lines",
    "read_labels",
    "write_calib",
    "write_label_lines",
    "write_labels",
    "KITTI_CLASS_NAMES",
    "KittiMono3D",
    "mono_collate_fn",
    "SyntheticKitti",
    "generate_synthetic_kitti",
]
