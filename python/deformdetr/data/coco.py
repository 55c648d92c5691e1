"""A COCO-format detection dataset (read with pycocotools) giving the official Deformable DETR
targets: crowd annotations dropped, boxes as absolute xyxy pixels clamped to the image, empty
boxes dropped, labels = the COCO category ids (so ``num_classes = max id + 1``, 91 for COCO)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

__all__ = ["CocoDetection", "ImageLoadError", "convert_coco_annotations", "load_image"]

PathLike = Union[str, os.PathLike]


class ImageLoadError(OSError):
    """An image of the dataset is missing or cannot be decoded; ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot load image {path!r}: {reason}")
        self.path = path


def load_image(path: str) -> Image.Image:
    """Reads an image as RGB, decoding it fully now so that a truncated or corrupt file fails here
    (with its name) rather than later inside a transform."""
    if not os.path.isfile(path):
        raise ImageLoadError(path, "file not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # PIL's decoders raise all three
        raise ImageLoadError(path, f"corrupt or unreadable ({error})") from error


def convert_coco_annotations(
    annotations: Sequence[dict], image_id: int, width: int, height: int
) -> dict:
    """COCO annotations of one image -> the official target dict (see the module docstring).

    ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``image_id`` (1,) int64, ``area`` (N,)
    float32, ``iscrowd`` (N,) int64, ``orig_size`` and ``size`` (2,) int64 as (height, width)."""
    # Crowd regions are not objects to detect; the official code ignores them in training.
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = torch.as_tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    # Boxes that became empty (or were degenerate in the file) cannot be matched or regressed.
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    labels = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
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


class CocoDetection(Dataset):
    """Images of ``img_folder`` annotated by the COCO json ``ann_file``; items are
    ``transforms(image, target)`` (PIL image and :func:`convert_coco_annotations` target when
    ``transforms`` is None). Images are ordered by id, as the official dataset.

    A missing or corrupt image raises :class:`ImageLoadError` naming the file; with
    ``skip_corrupt=True`` it is reported once with ``warnings.warn`` and the next valid image (in
    index order, wrapping around) is returned instead, so one bad file does not end a long run.
    """

    def __init__(
        self,
        img_folder: PathLike,
        ann_file: PathLike,
        transforms: Optional[Callable] = None,
        skip_corrupt: bool = False,
    ):
        img_folder, ann_file = os.fspath(img_folder), os.fspath(ann_file)
        if not os.path.isdir(img_folder):
            raise FileNotFoundError(f"image folder {img_folder!r} does not exist")
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"annotation file {ann_file!r} does not exist")
        self.img_folder = img_folder
        self.ann_file = ann_file
        # pycocotools prints progress to stdout; keep the training log clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(ann_file)
        self.ids = sorted(self.coco.imgs.keys())
        self.transforms = transforms
        self.skip_corrupt = skip_corrupt
        self._bad: set[int] = set()  # indices known to be unreadable (per process)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> str:
        return os.path.join(self.img_folder, self.coco.imgs[self.ids[index]]["file_name"])

    def load(self, index: int) -> tuple[Image.Image, dict]:
        """The untransformed (image, target) of ``index``."""
        image_id = self.ids[index]
        image = load_image(self.image_path(index))
        annotations = self.coco.imgToAnns.get(image_id, [])
        return image, convert_coco_annotations(annotations, image_id, image.width, image.height)

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
