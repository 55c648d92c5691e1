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
]
