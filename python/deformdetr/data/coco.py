"""A COCO-format detection dataset (read with pycocotools) giving the official Deformable DETR
targets: crowd annotations dropped, boxes as absolute xyxy pixels clamped to the image, empty
boxes dropped, labels from the data set's categories (data.categories: the category ids
themselves, as officially, 91 classes for COCO; or numbered 0..K-1)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from deformdetr.data.categories import Categories

__all__ = [
    "AnnotationFileError",
    "CocoDetection",
    "ImageLoadError",
    "convert_coco_annotations",
    "count_usable_boxes",
    "load_coco_annotations",
    "load_image",
    "to_rgb",
]

PathLike = Union[str, os.PathLike]


class ImageLoadError(OSError):
    """An image of the dataset is missing or cannot be decoded; ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot load image {path!r}: {reason}")
        self.path = path


class AnnotationFileError(ValueError):
    """A COCO annotation file that cannot be used (not JSON, not the COCO layout, no images);
    ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"COCO annotation file {path!r}: {reason}")
        self.path = path


def load_image(path: str) -> Image.Image:
    """Reads an image as RGB, decoding it fully now so that a truncated or corrupt file fails here
    (with its name) rather than later inside a transform. Images of more than 8 bits per channel
    are scaled to 8 bits (see :func:`to_rgb`)."""
    if not os.path.isfile(path):
        raise ImageLoadError(path, "file not found")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as error:
        # PIL refuses images above a pixel count that guards against decompression bombs.
        raise ImageLoadError(path, f"image too large ({error}); to load it anyway, raise "
                                   "PIL.Image.MAX_IMAGE_PIXELS (None turns the check off)") from error
    except (OSError, ValueError, SyntaxError) as error:  # PIL's decoders raise all three
        raise ImageLoadError(path, f"corrupt or unreadable ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. PIL's own ``convert("RGB")`` clips the 16/32-bit integer modes
    ("I;16*", "I") at 255, which turns most of such an image white, and "F" likewise; those are
    scaled to 8 bits here (:func:`_high_depth_to_uint8`) instead."""
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image))).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    """A single-channel integer or float array -> uint8, keeping the order of the values.

    16-bit integers (and 32-bit ones within 0..65535, as older Pillow opens 16-bit PNGs) keep
    their top 8 bits; floats within [0, 1] are scaled by 255 and floats within [0, 255] kept;
    anything else (other ranges, negative values) is stretched from its min..max to 0..255.
    Non-finite floats become 0."""
    if array.dtype.kind == "f":
        array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if array.dtype.kind in "iu" and low >= 0 and high <= 65535:
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    if array.dtype.kind == "f" and low >= 0 and high <= 1:
        return np.round(array * 255).astype(np.uint8)
    if array.dtype.kind == "f" and low >= 0 and high <= 255:
        return np.round(array).astype(np.uint8)
    scaled = (array.astype(np.float64) - low) * (255.0 / max(high - low, 1e-12))
    return np.round(scaled).astype(np.uint8)


def convert_coco_annotations(
    annotations: Sequence[dict], image_id: int, width: int, height: int,
    categories: Optional[Categories] = None,
) -> dict:
    """COCO annotations of one image -> the official target dict (see the module docstring).

    ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``image_id`` (1,) int64, ``area`` (N,)
    float32, ``iscrowd`` (N,) int64, ``orig_size`` and ``size`` (2,) int64 as (height, width).
    ``categories`` numbers the labels (None: the category ids); annotations of categories it does
    not hold are left out (a validation set's categories that the model was not trained on)."""
    # Crowd regions are not objects to detect; the official code ignores them in training.
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0
                   and (categories is None or categories.has_id(a["category_id"]))]
    boxes = torch.as_tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    # Boxes that became empty (or were degenerate in the file) cannot be matched or regressed.
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    labels = torch.tensor([a["category_id"] if categories is None else categories.label_of(a["category_id"])
                           for a in annotations], dtype=torch.int64)
    area = torch.tensor([float(a.get("area", 0.0)) for a in annotations], dtype=torch.float32)
    iscrowd = torch.tensor([a.get("iscrowd", 0) for a in annotations], dtype=torch.int64)
    return {
        "boxes": boxes[keep],
        "labels": labels[keep],
        "image_id": torch.tensor([image_id], dtype=torch.int64),
        "area": area[keep],
        "iscrowd": iscrowd[keep],
        "orig_size": torch.as_tensor([int(height), int(width)]),
        "size": torch.as_tensor([int(height), int(width)]),
    }


def load_coco_annotations(ann_file: str) -> COCO:
    """The pycocotools index of a COCO annotation file. A file that is not JSON, does not have the
    COCO layout or lists no images raises :class:`AnnotationFileError` naming it (pycocotools
    would give a bare JSONDecodeError, and an empty set fails much later in the data loader)."""
    try:
        with open(ann_file, encoding="utf-8") as handle:
            dataset = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationFileError(ann_file, f"not valid JSON ({error})") from None
    _check_coco_layout(ann_file, dataset)
    if not dataset.get("images"):
        raise AnnotationFileError(ann_file, "lists no images (its 'images' list is missing or empty)")
    coco = COCO()
    coco.dataset = dataset
    # pycocotools prints progress to stdout; keep the training log clean.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_coco_layout(ann_file: str, dataset) -> None:
    """The fields pycocotools and this dataset read, so that a malformed entry is reported with
    the file and the entry rather than as a KeyError later."""
    if not isinstance(dataset, dict):
        raise AnnotationFileError(ann_file, f"expected a JSON object with 'images', 'annotations' and "
                                            f"'categories', got a {type(dataset).__name__}")
    for key, required in (("images", ("id", "file_name")), ("annotations", ("id", "image_id", "category_id", "bbox")),
                          ("categories", ("id",))):
        entries = dataset.get(key, [])
        if not isinstance(entries, list):
            raise AnnotationFileError(ann_file, f"'{key}' must be a list, got a {type(entries).__name__}")
        for index, entry in enumerate(entries):
            missing = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise AnnotationFileError(ann_file, f"{key}[{index}] lacks {', '.join(map(repr, missing))}")
            if key == "annotations" and not _is_xywh(entry["bbox"]):
                raise AnnotationFileError(ann_file, f"annotations[{index}]: bbox must be 4 numbers [x, y, w, h], "
                                                    f"got {entry['bbox']!r}")


def _is_xywh(bbox) -> bool:
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox))


def _check_category_references(coco: COCO, ann_file: str) -> None:
    """Every annotation names a category the file lists."""
    listed = {c["id"] for c in coco.dataset.get("categories", [])}
    unknown = sorted({a["category_id"] for a in coco.anns.values()} - listed)
    if unknown:
        count = sum(a["category_id"] in unknown for a in coco.anns.values())
        raise AnnotationFileError(ann_file, f"{count} annotations name category ids that its 'categories' do "
                                            f"not list: {unknown[:8]}")


def _warn_about_degenerate_boxes(coco: COCO, ann_file: str) -> None:
    degenerate = sum(1 for a in coco.anns.values() if a.get("iscrowd", 0) == 0
                     and (a["bbox"][2] <= 0 or a["bbox"][3] <= 0))
    if degenerate:
        warnings.warn(f"COCO annotation file {ann_file!r}: {degenerate} boxes of zero or negative size are "
                      f"skipped", RuntimeWarning, stacklevel=4)


def count_usable_boxes(coco: COCO) -> int:
    """How many annotations become training targets under :func:`convert_coco_annotations`'s
    rules: not crowd, of an image that is listed, and not empty after clamping to the image size
    the file lists (unclamped where it lists none)."""
    rows = [(a["bbox"], coco.imgs[a["image_id"]]) for a in coco.anns.values()
            if a.get("iscrowd", 0) == 0 and a["image_id"] in coco.imgs]
    if not rows:
        return 0
    boxes = np.array([bbox for bbox, _ in rows], dtype=np.float64).reshape(-1, 4)
    limits = np.array([(image.get("width", np.inf), image.get("height", np.inf)) for _, image in rows],
                      dtype=np.float64)
    low = np.clip(boxes[:, :2], 0, limits)
    high = np.clip(boxes[:, :2] + boxes[:, 2:], 0, limits)
    return int(np.count_nonzero((high > low).all(axis=1)))


class CocoDetection(Dataset):
    """Images of ``img_folder`` annotated by the COCO json ``ann_file``; items are
    ``transforms(image, target)`` (PIL image and :func:`convert_coco_annotations` target when
    ``transforms`` is None). Images are ordered by id, as the official dataset.

    ``categories`` numbers the labels: a :class:`Categories` table (a validation set takes the
    training set's), ``"auto"`` (the file's categories numbered 0..K-1), or a number of classes
    (labels are the category ids, below it; None: as many as the ids need). Annotations must
    name categories the file lists (else :class:`AnnotationFileError`); boxes of zero or negative
    size are skipped with a warning that counts them, as COCO tools do.

    An unusable annotation file raises :class:`AnnotationFileError` (see
    :func:`load_coco_annotations`); one without a single usable box (see
    :func:`count_usable_boxes`) is accepted with a warning naming it, as a model learns nothing
    from it. A missing or corrupt image raises :class:`ImageLoadError` naming the file; with
    ``skip_corrupt=True`` it is reported once with ``warnings.warn`` and the next valid image (in
    index order, wrapping around) is returned instead, so one bad file does not end a long run.
    """

    def __init__(
        self,
        img_folder: PathLike,
        ann_file: PathLike,
        transforms: Optional[Callable] = None,
        skip_corrupt: bool = False,
        categories: Union[Categories, int, str, None] = None,
    ):
        img_folder, ann_file = os.fspath(img_folder), os.fspath(ann_file)
        if not os.path.isdir(img_folder):
            raise FileNotFoundError(f"image folder {img_folder!r} does not exist")
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"annotation file {ann_file!r} does not exist")
        self.img_folder = img_folder
        self.ann_file = ann_file
        self.coco = load_coco_annotations(ann_file)
        if count_usable_boxes(self.coco) == 0:  # (which says all there is to say of its boxes)
            warnings.warn(f"COCO annotation file {ann_file!r}: 0 usable boxes among {len(self.coco.anns)} "
                          f"annotations of {len(self.coco.imgs)} images (crowd, empty and outside-the-image "
                          "boxes are dropped); a model learns nothing from it", RuntimeWarning, stacklevel=2)
        else:
            _warn_about_degenerate_boxes(self.coco, ann_file)
        _check_category_references(self.coco, ann_file)
        if not isinstance(categories, Categories):
            categories = Categories.from_coco(self.coco, categories, source=f"COCO annotation file {ann_file!r}")
        self.categories = categories
        self.ids = sorted(self.coco.imgs.keys())
        self.transforms = transforms
        self.skip_corrupt = skip_corrupt
        self._bad: set[int] = set()  # indices known to be unreadable (per process)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> str:
        return os.path.join(self.img_folder, self.coco.imgs[self.ids[index]]["file_name"])

    def missing_images(self) -> list[str]:
        """The listed images that are not in the image folder."""
        return [path for path in map(self.image_path, range(len(self))) if not os.path.isfile(path)]

    def categories_without_boxes(self) -> list[str]:
        """Names of the table's categories that no (non-crowd) annotation of this file uses."""
        used = {a["category_id"] for a in self.coco.anns.values() if a.get("iscrowd", 0) == 0}
        return [c.name for c in self.categories if c.id not in used]

    def unknown_categories(self) -> list[str]:
        """Names of the file's categories that the table (e.g. the training set's) lacks."""
        return [str(c.get("name", c["id"])) for c in self.coco.dataset.get("categories", [])
                if not self.categories.has_id(c["id"])]

    def load(self, index: int) -> tuple[Image.Image, dict]:
        """The untransformed (image, target) of ``index``."""
        image_id = self.ids[index]
        image = load_image(self.image_path(index))
        annotations = self.coco.imgToAnns.get(image_id, [])
        return image, convert_coco_annotations(annotations, image_id, image.width, image.height, self.categories)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image, target = self._load_valid(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _load_valid(self, index: int) -> tuple[Image.Image, dict]:
        if not self.skip_corrupt:
            return self.load(index)
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if candidate in self._bad:
                continue
            try:
                return self.load(candidate)
            except ImageLoadError as error:
                self._bad.add(candidate)
                warnings.warn(f"skipping: {error}", RuntimeWarning, stacklevel=3)
        raise RuntimeError(f"no readable image in {self.img_folder!r} ({len(self)} listed)")
