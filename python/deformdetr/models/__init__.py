"""Deformable DETR and MonoDETR models and their training components."""

from deformdetr.models.deformable_detr import (
    VARIANTS,
    DeformableDETR,
    DeformableDETRConfig,
    deformable_detr,
    load_checkpoint,
)
from deformdetr.models.criterion import SetCriterion, build_criterion, sigmoid_focal_loss
from deformdetr.models.matcher import HungarianMatcher
from deformdetr.models.postprocess import PostProcess

__all__ = [
    "VARIANTS",
    "DeformableDETR",
    "DeformableDETRConfig",
    "deformable_detr",
    "load_checkpoint",
    "HungarianMatcher",
    "SetCriterion",
    "build_criterion",
    "sigmoid_focal_loss",
    "PostProcess",
]
