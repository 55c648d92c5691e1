"""Joint image + target transforms, with the semantics of the official Deformable DETR
``datasets/transforms.py`` (written on Pillow and torch: the project does not depend on
torchvision).

Every transform is a callable ``(image, target) -> (image, target)``. Before :class:`ToTensor` the
image is a ``PIL.Image``; after it, a float ``(C, H, W)`` tensor in [0, 1]. Targets hold ``boxes``
as absolute ``xyxy`` pixels until :class:`Normalize`, which turns them into ``cxcywh`` divided by
the image width/height, the form the criterion and matcher expect.

Randomness comes from the same sources as the official code (Python's ``random`` for choices and
sizes, torch's generator for crop offsets), so seeding both gives the same augmentations, and the
DataLoader's per-worker seeding covers both.
"""

from __future__ import annotations

import random
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deformdetr.ops.boxes import box_xyxy_to_cxcywh_reference

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_SCALES",
    "get_size",
    "crop",
    "hflip",
    "resize",
    "Compose",
    "RandomHorizontalFlip",
    "RandomResize",
    "RandomSizeCrop",
    "RandomSelect",
    "ToTensor",
    "Normalize",
    "make_coco_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The official training scales (shorter side), 480..800 in steps of 32.
OFFICIAL_SCALES = tuple(range(480, 801, 32))

Target = Optional[dict]


# ---- functional forms ----------------------------------------------------------------------


def get_size(
    image_size: tuple[int, int], size: Union[int, Sequence[int]], max_size: Optional[int] = None
) -> tuple[int, int]:
    """The output ``(height, width)`` for resizing an image of ``image_size = (width, height)``
    (PIL order): ``size`` is the target shorter side, lowered so that the longer side does not
    exceed ``max_size``; a ``(width, height)`` pair is taken as is. The rounding (``round`` for the
    capped shorter side, truncation for the longer side) is the official one: it decides the
    exact pixel sizes, hence the exact boxes, so it must not be "improved"."""
    if isinstance(size, (list, tuple)):
        return int(size[1]), int(size[0])
    w, h = image_size
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    # Already at the requested shorter side: keep the size (no truncation drift).
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def crop(image: Image.Image, target: Target, region: Sequence[int]) -> tuple[Image.Image, Target]:
    """Crops ``region = (top, left, height, width)``; boxes are shifted, clipped to the crop and
    dropped (with their labels, area, iscrowd) when nothing of them is left inside."""
    top, left, height, width = (int(v) for v in region)
    # PIL's crop pads with zeros outside the image, as torchvision's F.crop on PIL does.
    cropped = image.crop((left, top, left + width, top + height))
    if target is None:
        return cropped, None
    target = dict(target)
    target["size"] = torch.tensor([height, width])
    fields = ["labels", "area", "iscrowd"]
    if "boxes" in target:
        corners = (target["boxes"] - torch.as_tensor([left, top, left, top])).reshape(-1, 2, 2)
        corners = torch.min(corners, torch.as_tensor([width, height], dtype=torch.float32))
        corners = corners.clamp(min=0)
        target["boxes"] = corners.reshape(-1, 4)
        # The official crop replaces the area by the clipped box area.
        target["area"] = (corners[:, 1, :] - corners[:, 0, :]).prod(dim=1)
        fields.append("boxes")
        keep = torch.all(corners[:, 1, :] > corners[:, 0, :], dim=1)
        for field in fields:
            if field in target:
                target[field] = target[field][keep]
    return cropped, target


def hflip(image: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Mirrors the image left-right; box x0' = w - x1 and x1' = w - x0."""
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if target is None or "boxes" not in target:
        return flipped, target
    width = image.width
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = boxes[:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1]) + torch.as_tensor(
        [width, 0, width, 0]
    )
    return flipped, target


def resize(
    image: Image.Image,
    target: Target,
    size: Union[int, Sequence[int]],
    max_size: Optional[int] = None,
) -> tuple[Image.Image, Target]:
    """Resizes (bilinear, as torchvision's default on PIL images) to :func:`get_size`; boxes and
    areas scale by the actual width/height ratios."""
    height, width = get_size(image.size, size, max_size)
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    if target is None:
        return resized, None
    ratio_w = float(resized.width) / float(image.width)
    ratio_h = float(resized.height) / float(image.height)
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    if "area" in target:
        target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([height, width])
    return resized, target


def to_tensor(image: Image.Image) -> Tensor:
    """A PIL image as a float (C, H, W) tensor in [0, 1], like torchvision's ``to_tensor``."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


# ---- transform objects ---------------------------------------------------------------------


class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, target=None):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


class RandomHorizontalFlip:
    """Flips with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target=None):
        if random.random() < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomResize:
    """Resizes the shorter side to a random choice of ``sizes``, the longer side capped by
    ``max_size`` (see :func:`get_size`)."""

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None):
        if not isinstance(sizes, (list, tuple)) or len(sizes) == 0:
            raise ValueError(f"sizes must be a non-empty list or tuple of ints, got {sizes!r}")
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, image, target=None):
        return resize(image, target, random.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes}, max_size={self.max_size})"


class RandomSizeCrop:
    """Crops a random region with width and height drawn in [min_size, max_size] (each at most
    the image side) at a random position."""

    def __init__(self, min_size: int, max_size: int):
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image, target=None):
        # The official code fails on images smaller than min_size; there the whole side is used.
        width = random.randint(min(self.min_size, image.width), min(image.width, self.max_size))
        height = random.randint(min(self.min_size, image.height), min(image.height, self.max_size))
        # Offsets from torch's generator, as torchvision's RandomCrop.get_params.
        top = int(torch.randint(0, image.height - height + 1, size=(1,)).item())
        left = int(torch.randint(0, image.width - width + 1, size=(1,)).item())
        return crop(image, target, (top, left, height, width))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class RandomSelect:
    """Applies ``transforms1`` with probability ``p``, else ``transforms2``."""

    def __init__(self, transforms1: Callable, transforms2: Callable, p: float = 0.5):
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, image, target=None):
        if random.random() < self.p:
            return self.transforms1(image, target)
        return self.transforms2(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms1!r}, {self.transforms2!r}, p={self.p})"


class ToTensor:
    """PIL image -> float (C, H, W) tensor in [0, 1]; the target is unchanged."""

    def __call__(self, image, target=None):
        return to_tensor(image), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normalize:
    """Normalizes the image tensor per channel, and turns boxes from absolute xyxy into cxcywh
    relative to the image size (so in [0, 1] for boxes inside the image), as the official code."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Tensor, target=None):
        mean = torch.as_tensor(self.mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=image.dtype).view(-1, 1, 1)
        image = (image - mean) / std
        if target is None:
            return image, None
        target = dict(target)
        if "boxes" in target:
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            target["boxes"] = box_xyxy_to_cxcywh_reference(target["boxes"]) / scale
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


# ---- the official pipelines ----------------------------------------------------------------


def make_coco_transforms(
    image_set: str,
    scales: Optional[Sequence[int]] = None,
    max_size: int = 1333,
    crop_sizes: Sequence[int] = (400, 500, 600),
    crop_min_max: tuple[int, int] = (384, 600),
    val_size: Optional[int] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The official training (``"train"``) or evaluation (``"val"``/``"test"``) pipeline.

    With the defaults this is exactly the official one: train = flip, then either a multi-scale
    resize (``scales``, 480..800) or resize to ``crop_sizes`` + random crop in ``crop_min_max`` +
    multi-scale resize; val = resize to ``val_size`` (default ``max(scales)``, 800). Smaller
    numbers give the same pipeline for small images (tiny demos, synthetic data)."""
    scales = list(OFFICIAL_SCALES if scales is None else scales)
    normalize = Compose([ToTensor(), Normalize(mean, std)])
    if image_set == "train":
        return Compose(
            [
                RandomHorizontalFlip(),
                RandomSelect(
                    RandomResize(scales, max_size=max_size),
                    Compose(
                        [
                            RandomResize(list(crop_sizes)),
                            RandomSizeCrop(*crop_min_max),
                            RandomResize(scales, max_size=max_size),
                        ]
                    ),
                ),
                normalize,
            ]
        )
    if image_set in ("val", "test"):
        size = max(scales) if val_size is None else val_size
        return Compose([RandomResize([size], max_size=max_size), normalize])
    raise ValueError(f"unknown image_set {image_set!r}; expected 'train', 'val' or 'test'")
