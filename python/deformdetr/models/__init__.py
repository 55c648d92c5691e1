"""Deformable DETR and MonoDETR models and their training components."""

from deformdetr.models.checkpoint import WeightReport, load_checkpoint, read_checkpoint
from deformdetr.models.deformable_detr import VARIANTS, DeformableDETR, DeformableDETRConfig, deformable_detr
from deformdetr.models.criterion import SetCriterion, build_criterion, sigmoid_focal_loss
from deformdetr.models.matcher import HungarianMatcher
from deformdetr.models.postprocess import PostProcess

__all__ = [
    "VARIANTS",
    "DeformableDETR",
    "DeformableDETRConfig",
    "deformable_detr",
    "load_checkpoint",
    "read_checkpoint",
    "WeightReport",
    "HungarianMatcher",
    "SetCriterion",
    "build_criterion",
    "sigmoid_focal_loss",
    "PostProcess",
]

from deformdetr.models.mono.monodetr import MonoDETR, MonoDETRConfig, load_monodetr_checkpoint, monodetr
from deformdetr.models.mono.criterion import MonoSetCriterion, build_monodetr_criterion
from deformdetr.models.mono.matcher import MonoHungarianMatcher
from deformdetr.models.mono.decode import decode as decode_monodetr

__all__ += [
    "MonoDETR",
    "MonoDETRConfig",
    "monodetr",
    "load_monodetr_checkpoint",
    "MonoSetCriterion",
    "MonoHungarianMatcher",
    "build_monodetr_criterion",
    "decode_monodetr",
]
