"""Building a dataset from a root folder in the official COCO layout:
``root/{train2017,val2017}`` and ``root/annotations/instances_{train2017,val2017}.json``."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from deformdetr.data.categories import Categories
from deformdetr.data.coco import CocoDetection
from deformdetr.data.transforms import make_coco_transforms

__all__ = ["build_coco", "coco_paths"]

_SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}


def coco_paths(root: Union[str, os.PathLike], image_set: str) -> tuple[str, str]:
    """``(image folder, annotation file)`` of ``image_set`` ("train" or "val") under ``root``."""
    if image_set not in _SPLIT_FOLDERS:
        expected = sorted(_SPLIT_FOLDERS)
        raise ValueError(f"unknown image_set {image_set!r}; expected one of {expected}")
    root = os.fspath(root) if root is not None else ""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"COCO root {root!r} does not exist")
    split = _SPLIT_FOLDERS[image_set]
    return os.path.join(root, split), os.path.join(root, "annotations", f"instances_{split}.json")


def build_coco(
    root: Union[str, os.PathLike, None],
    image_set: str,
    skip_corrupt: bool = False,
    categories: Union[Categories, int, str, None] = None,
    images: Optional[str] = None,
    annotations: Optional[str] = None,
    **transform_kwargs: Any,
) -> CocoDetection:
    """The ``image_set`` split of the COCO-layout data set at ``root`` with the official
    transforms; ``images`` (a folder) and ``annotations`` (a COCO json file) replace the official
    layout's where given (then ``root`` may be None). ``categories``: see :class:`CocoDetection`.
    ``transform_kwargs`` go to :func:`make_coco_transforms` (``scales``, ``max_size``,
    ``crop_sizes``, ``crop_min_max``, ``val_size``, ``mean``, ``std``), e.g.
    ``**SYNTHETIC_TRANSFORM_KWARGS`` for the synthetic data set."""
    if images is None or annotations is None:
        default_images, default_annotations = coco_paths(root, image_set)
        images, annotations = images or default_images, annotations or default_annotations
    transforms = make_coco_transforms(image_set, **transform_kwargs)
    return CocoDetection(images, annotations, transforms=transforms, skip_corrupt=skip_corrupt, categories=categories)
