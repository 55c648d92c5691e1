"""Batching dataset samples for a DataLoader: images of different sizes are zero-padded at the
bottom/right into one tensor, with a mask marking the padding (the model ignores it)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from deformdetr.models.nested import pad_images

__all__ = ["collate_fn"]


def collate_fn(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, Tensor, list[dict]]:
    """``[(image (3, H_i, W_i), target), ...]`` -> ``(images (B, 3, Hmax, Wmax), mask (B, Hmax,
    Wmax) bool True at padding, [target, ...])``. Targets stay a list: their box counts differ."""
    if len(batch) == 0:
        raise ValueError("collate_fn needs at least one sample")
    images, targets = zip(*batch)
    padded, mask = pad_images(list(images))
    return padded, mask, list(targets)
