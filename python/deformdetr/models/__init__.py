"""Deformable DETR and MonoDETR models and their training components."""

from deformdetr.models.deformable_detr import (
    VARIANTS,
    DeformableDETR,
    DeformableDETRConfig,
    deformable_detr,
    load_checkpoint,
)
from deformdetr.models.matcher import HungarianMatcher

__all__ = [
    "VARIANTS",
    "DeformableDETR",
    "DeformableDETRConfig",
    "deformable_detr",
    "load_checkpoint",
    "HungarianMatcher",
]
