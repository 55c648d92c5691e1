"""Deformable DETR and MonoDETR models and their training components."""

from deformdetr.models.matcher import HungarianMatcher

__all__ = ["HungarianMatcher"]
