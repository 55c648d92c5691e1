"""A synthetic COCO-format detection data set: coloured shapes on varied backgrounds.

It lets the whole pipeline (data, training, COCO evaluation) run in seconds on a CPU, with a task
that a small model can actually learn: each class is a distinct shape drawn in a random colour,
so the class is told by shape, not colour. Files follow the official COCO layout::

    root/train2017/000000000001.jpg ...
    root/val2017/...
    root/annotations/instances_train2017.json, instances_val2017.json

Category ids start at 1 as in COCO, so a model needs ``num_classes = number of categories + 1``
logits (the official convention: ``num_classes`` is the largest id + 1).

Each image is drawn from its own generator seeded by ``(seed, split, index)``: the same seed gives
byte-identical files, and image ``i`` does not depend on how many images are generated.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_TRANSFORM_KWARGS",
    "SyntheticCoco",
    "SyntheticImage",
    "generate_synthetic_coco",
    "render_synthetic_image",
]

SYNTHETIC_CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
    {"id": 5, "name": "ring", "supercategory": "shape"},
    {"id": 6, "name": "diamond", "supercategory": "shape"},
]

#: ``make_coco_transforms`` arguments that scale the official pipeline to ~128-pixel images.
SYNTHETIC_TRANSFORM_KWARGS: dict = {
    "scales": (96, 104, 112, 120, 128),
    "max_size": 160,
    "crop_sizes": (96, 112, 128),
    "crop_min_max": (80, 112),
    "val_size": 128,
}

ImageSize = Union[int, Sequence[int], Sequence[Sequence[int]]]
_SPLITS = {"train2017": 0, "val2017": 1}


# ---- shapes --------------------------------------------------------------------------------
# Each draws a filled (255) shape into a mask within the box (x0, y0, x1, y1).


def _circle(draw: ImageDraw.ImageDraw, x0, y0, x1, y1) -> None:
    draw.ellipse([x0, y0, x1, y1], fill=255)


def _square(draw, x0, y0, x1, y1) -> None:
    draw.rectangle([x0, y0, x1, y1], fill=255)


def _triangle(draw, x0, y0, x1, y1) -> None:
    draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=255)


def _cross(draw, x0, y0, x1, y1) -> None:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_t = max(x1 - x0, y1 - y0) / 6  # bar thickness a third of the size
    draw.rectangle([x0, cy - half_t, x1, cy + half_t], fill=255)
    draw.rectangle([cx - half_t, y0, cx + half_t, y1], fill=255)


def _ring(draw, x0, y0, x1, y1) -> None:
    width = max(2, int(round(min(x1 - x0, y1 - y0) / 6)))
    draw.ellipse([x0, y0, x1, y1], outline=255, width=width)


def _diamond(draw, x0, y0, x1, y1) -> None:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)


_SHAPES: dict[str, Callable] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "diamond": _diamond,
}


# ---- backgrounds ---------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W, 3) uint8 background: solid colour, linear gradient, pixel noise or smooth blotches,
    so the detector cannot rely on a plain background."""
    kind = rng.integers(4)
    base = rng.uniform(0, 255, size=3)
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3))
    elif kind == 1:
        other = rng.uniform(0, 255, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        image = base + t[..., None] * (other - base)
    elif kind == 2:
        image = base + rng.normal(0, rng.uniform(8, 25), size=(height, width, 3))
    else:
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        image = np.asarray(smooth)
        image = image.astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int, int]:
    """A random colour far from the mean of the background ``region`` under the shape (local, so
    a shape on a gradient stays visible), so every annotated object can be seen."""
    mean = region.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - mean) > 120:
            return tuple(int(c) for c in colour)
    return tuple(int(c) for c in (255 - mean))  # the complement is always far enough


# ---- one image -----------------------------------------------------------------------------


@dataclass
class SyntheticImage:
    """One rendered sample: ``image`` (H, W, 3) uint8 with the shapes, ``background`` the same
    image without them, and per object a COCO ``bbox`` [x, y, w, h] (tight around the drawn
    pixels), ``category_id`` and ``area`` (the shape's pixel count)."""

    image: np.ndarray
    background: np.ndarray
    boxes: list[list[int]] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    areas: list[int] = field(default_factory=list)


def _overlap_too_large(box: tuple[float, ...], others: list, max_overlap: float) -> bool:
    """Intersection over the smaller box: bounds how much of any object can be hidden."""
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in others:
        inter = max(0.0, min(x1, a1) - max(x0, a0)) * max(0.0, min(y1, b1) - max(y0, b0))
        smaller = min((x1 - x0) * (y1 - y0), (a1 - a0) * (b1 - b0))
        if inter > max_overlap * smaller:
            return True
    return False


def render_synthetic_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    categories: Sequence[dict] = SYNTHETIC_CATEGORIES,
    max_objects: int = 4,
    size_range: tuple[float, float] = (0.15, 0.5),
    max_overlap: float = 0.3,
) -> SyntheticImage:
    """Draws 1..``max_objects`` shapes of side ``size_range`` x the image's shorter side on a
    random background; placements overlapping an earlier object by more than ``max_overlap`` (of
    the smaller box) are re-drawn, and dropped after a few tries (the first always fits)."""
    background = _background(rng, height, width)
    canvas = Image.fromarray(background)
    sample = SyntheticImage(image=background, background=background)
    placed: list[tuple[float, ...]] = []
    short = min(height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = categories[int(rng.integers(len(categories)))]
        for _attempt in range(10):
            side = rng.uniform(*size_range) * short
            box_w = side * rng.uniform(0.85, 1.15)  # mild aspect jitter; shape stays recognisable
            box_h = side * rng.uniform(0.85, 1.15)
            box_w, box_h = min(box_w, width - 1), min(box_h, height - 1)
            x0 = rng.uniform(0, width - 1 - box_w)
            y0 = rng.uniform(0, height - 1 - box_h)
            box = (x0, y0, x0 + box_w, y0 + box_h)
            if not _overlap_too_large(box, placed, max_overlap):
                break
        else:
            continue
        mask = Image.new("L", (width, height), 0)
        _SHAPES[category["name"]](ImageDraw.Draw(mask), *box)
        bbox = mask.getbbox()  # tight box of the drawn pixels: the annotation matches the image
        if bbox is None:
            continue
        placed.append(box)
        left, top, right, bottom = bbox
        canvas.paste(_contrasting_colour(rng, background[top:bottom, left:right]), mask=mask)
        sample.boxes.append([left, top, right - left, bottom - top])
        sample.category_ids.append(int(category["id"]))
        sample.areas.append(int(np.count_nonzero(np.asarray(mask))))
    sample.image = np.asarray(canvas)
    return sample


# ---- the data set --------------------------------------------------------------------------


@dataclass
class SyntheticCoco:
    """Where :func:`generate_synthetic_coco` wrote the data set."""

    root: str
    train_images: str
    val_images: str
    train_annotations: str
    val_annotations: str
    categories: list[dict]

    @property
    def model_num_classes(self) -> int:
        """``num_classes`` for the model: the largest category id + 1 (ids start at 1)."""
        return max(c["id"] for c in self.categories) + 1


def _image_size(rng: np.random.Generator, image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` from an int (square), an (H, W) pair or ((H lo, H hi), (W lo, W hi)) ranges."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    height, width = image_size
    if isinstance(height, (list, tuple)):
        height = int(rng.integers(height[0], height[1] + 1))
    if isinstance(width, (list, tuple)):
        width = int(rng.integers(width[0], width[1] + 1))
    return int(height), int(width)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of the other images and of the split sizes."""
    return np.random.default_rng([seed, _SPLITS[split], index])


def _write_split(
    root: str,
    split: str,
    count: int,
    seed: int,
    image_size: ImageSize,
    categories: list[dict],
    image_format: str,
    max_objects: int,
) -> str:
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = _image_rng(seed, split, index)
        height, width = _image_size(rng, image_size)
        sample = render_synthetic_image(rng, height, width, categories, max_objects=max_objects)
        image_id = index + 1
        file_name = f"{image_id:012d}.{image_format}"
        path = os.path.join(folder, file_name)
        if image_format == "png":
            Image.fromarray(sample.image).save(path, compress_level=1)
        else:
            Image.fromarray(sample.image).save(path, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for bbox, category_id, area in zip(sample.boxes, sample.category_ids, sample.areas):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    data = {
        "info": {"description": f"deformdetr synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(ann_file, "w") as handle:
        json.dump(data, handle, separators=(",", ":"))
    return ann_file


def generate_synthetic_coco(
    root: Union[str, os.PathLike],
    num_train: int = 1000,
    num_val: int = 200,
    image_size: ImageSize = (128, 128),
    seed: int = 0,
    num_classes: int = len(SYNTHETIC_CATEGORIES),
    image_format: str = "jpg",
    max_objects: int = 4,
) -> SyntheticCoco:
    """Writes the synthetic data set under ``root`` (COCO layout, see the module docstring) and
    returns its paths. ``image_size`` is ``(H, W)``, an int for square images, or
    ``((H lo, H hi), (W lo, W hi))`` for sizes drawn per image; ``num_classes`` takes the first
    that many of :data:`SYNTHETIC_CATEGORIES`; ``image_format`` is ``"jpg"`` or ``"png"``
    (lossless, for exact pixel checks)."""
    if not 1 <= num_classes <= len(SYNTHETIC_CATEGORIES):
        limit = len(SYNTHETIC_CATEGORIES)
        raise ValueError(f"num_classes must be in 1..{limit}, got {num_classes}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    root = os.fspath(root)
    categories = [dict(c) for c in SYNTHETIC_CATEGORIES[:num_classes]]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    args = (seed, image_size, categories, image_format, max_objects)
    train_ann = _write_split(root, "train2017", num_train, *args)
    val_ann = _write_split(root, "val2017", num_val, *args)
    return SyntheticCoco(
        root=root,
        train_images=os.path.join(root, "train2017"),
        val_images=os.path.join(root, "val2017"),
        train_annotations=train_ann,
        val_annotations=val_ann,
        categories=categories,
    )
