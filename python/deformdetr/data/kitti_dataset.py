"""KITTI monocular 3D detection for MonoDETR: the official ``KITTI_Dataset``'s inputs and
training targets (after the official trainer's ``prepare_targets`` selection), and batching.

Layout (official)::

    root/ImageSets/{train,val,trainval,test}.txt    one image index per line ("000123")
    root/training/{image_2/*.png, label_2/*.txt, calib/*.txt}
    root/testing/{image_2, calib}

An item is ``(image (3, H, W) float32, calib (3, 4) float32, target dict, info dict)``, the
official order; :func:`mono_collate_fn` batches them for ``MonoDETR.forward(images, calibs,
img_sizes)`` and ``MonoSetCriterion(outputs, targets)``.

Class labels follow the official MonoDETR training order, :data:`KITTI_CLASS_NAMES` =
("Pedestrian", "Car", "Cyclist"): target label 0 is Pedestrian, 1 Car, 2 Cyclist (converted by
:func:`~deformdetr.data.kitti.kitti_label` / :func:`~deformdetr.data.kitti.kitti_class_name`).
The KITTI devkit's evaluation orders classes Car first; see :mod:`deformdetr.data.kitti`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from deformdetr.data.coco import load_image
from deformdetr.data.kitti import (
    KITTI_CLASS_NAMES,
    KITTI_CLS2ID,
    Calibration,
    KittiObject,
    kitti_label,
    numbered_lines,
    read_calib,
    read_labels,
)
from deformdetr.data.kitti_transforms import (
    affine_image,
    affine_transform,
    flip_image,
    flip_objects,
    get_affine_transform,
    photometric_distort,
    transform_P2,
)
from deformdetr.models.mono.decode import KITTI_CLS_MEAN_SIZE, angle2class

__all__ = ["KittiMono3D", "mono_collate_fn", "read_split_file", "trained_labels", "network_input", "eval_input",
           "MERGED_INTO_CAR", "DEPTH_SCALES", "KITTI_CLASS_NAMES", "KITTI_CLS2ID", "KITTI_MEAN",
           "KITTI_STD"]

PathLike = Union[str, os.PathLike]

KITTI_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
KITTI_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_SPLITS = ("train", "val", "trainval", "test")
_TARGET_KEYS = {  # key: (per-object shape, dtype)
    "labels": ((), torch.int64),
    "boxes": ((4,), torch.float32),
    "boxes_3d": ((6,), torch.float32),
    "depth": ((1,), torch.float32),
    "size_3d": ((3,), torch.float32),
    "src_size_3d": ((3,), torch.float32),
    "size_2d": ((2,), torch.float32),
    "heading_bin": ((1,), torch.int64),
    "heading_res": ((1,), torch.float32),
    "calibs": ((3, 4), torch.float32),
}


def network_input(img: Image.Image, trans_inv, resolution) -> Tensor:
    """The (3, H, W) float32 input of ``img`` mapped by ``trans_inv`` (see
    :func:`~deformdetr.data.kitti_transforms.affine_image`) to ``resolution`` (W, H): pixels in
    [0, 1], normalised by the ImageNet mean and std (the official)."""
    array = (np.asarray(affine_image(img, trans_inv, resolution), dtype=np.float32) / 255.0 - KITTI_MEAN) / KITTI_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def eval_input(img: Image.Image, resolution) -> Tensor:
    """The network input of an image as evaluation makes it (no augmentation): scaled to the
    width of ``resolution`` (W, H) about the image's centre."""
    size = np.array(img.size, dtype=np.float64)
    _, trans_inv = get_affine_transform(size / 2.0, size, resolution)
    return network_input(img, trans_inv, resolution)


#: The classes ``class_merging`` trains as Car (the official list).
MERGED_INTO_CAR = ("Van", "Truck")
#: How the depth targets' augmentation scale applies (``depth_scale``).
DEPTH_SCALES = ("normal", "inverse", "none")


def trained_labels(writelist: Sequence[str], class_merging: bool = False) -> dict[str, int]:
    """{label-file type: training label} of the objects that become targets: the writelist's
    classes under their own labels, and with ``class_merging`` Van and Truck as Car."""
    unknown = [c for c in writelist if c not in KITTI_CLS2ID]
    if unknown:
        raise ValueError(f"writelist classes must be among {KITTI_CLASS_NAMES}, got {unknown}")
    labels = {name: kitti_label(name) for name in writelist}
    if class_merging:
        labels.update({name: kitti_label("Car") for name in MERGED_INTO_CAR})
    return labels


def read_split_file(path: str) -> list[str]:
    """The image indices ("000123") of an ImageSets file, blank lines skipped. A line that is not
    an index raises ValueError naming the file and the line now, not when the item is first read
    (possibly in a data loader worker, as a bare ``int()`` error)."""
    indices = []
    for number, line in numbered_lines(path):
        text = line.strip()
        if not text:
            continue
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"{path!r} line {number}: expected an image index such as '000123', got {text!r}")
        indices.append(text)
    return indices


class KittiMono3D(Dataset):
    """The official MonoDETR KITTI data set (``lib/datasets/kitti/kitti_dataset.py``) with the
    official ``configs/monodetr.yaml`` settings as defaults.

    ``writelist`` names the classes that become targets (officially ``["Car"]``); labels keep the
    three-class numbering whatever it holds (Car is label 1 also when trained alone, as the
    official ``cls2id``). ``class_merging`` adds Van and Truck boxes as Car targets: the official
    code adds them to the writelist but has no label for them (a KeyError at the first Van),
    so this is its evident intent rather than anything an official run did.

    Training splits (train, trainval) are augmented: photometric distortion (``aug_pd``), a flip
    with probability ``random_flip``, and with probability ``random_crop`` (if ``aug_crop``) a
    scale by ``clip(1 + N(0, scale), 1 +- scale)`` and a centre shift by ``clip(N(0, shift),
    +-2 shift)`` of the image size; every image is then mapped by the official affine transform
    to ``resolution`` (W, H), 1280 x 384 officially (for eval a plain resize of the width, the
    centre kept). Pixels are scaled to [0, 1] and normalised by the ImageNet mean/std.

    Targets keep the official selection: the first ``max_objs`` label lines; classes of
    ``writelist``; KITTI level not "UnKnown" (2D box >= 25 px high x ``height_scale``,
    truncation <= 0.5, occlusion <= 2); 2 <= depth <= 65 m; projected 3D centre inside the
    network input; the 2D box around it (l, r, t, b >= 0, unless ``clip_2d``). DontCare lines
    never become targets. Per image (T objects):

    - ``labels`` (T,) int64, ids of :data:`KITTI_CLASS_NAMES`
    - ``boxes`` (T, 4) cx, cy, w, h of the 2D box in the network input, normalised by its size
    - ``boxes_3d`` (T, 6) projected 3D centre cx, cy and its distances l, r, t, b to the 2D box
      sides, normalised likewise
    - ``depth`` (T, 1) the centre's depth times the crop scale (``depth_scale="normal"``)
    - ``size_3d`` (T, 3) h, w, l minus the class mean size (zero with ``meanshape=False``, the
      official: absolute sizes); ``src_size_3d`` (T, 3) the label sizes; ``size_2d`` (T, 2) px
    - ``heading_bin`` (T, 1) int64 and ``heading_res`` (T, 1): alpha (from ry and the 2D box
      centre) over 12 bins
    - ``calibs`` (T, 3, 4) the P2 per object (the official key)
    - ``calib`` (3, 4) the camera the model and the decoding get (official: the original P2,
      also after a flip or crop); ``calib_input`` (3, 4) the matrix that projects the labels'
      3D points to pixels of the network input (crop/scale/flip applied), so that
      ``calib_input`` @ centre = ``boxes_3d[:, :2]`` x ``resolution``
    - ``img_size`` (2,) int64 (W, H) of the original image; ``image_id`` the KITTI index;
      ``index`` the position in the split

    ``info`` is the official info dict (``img_id``, ``img_size``, ``bbox_downsample_ratio``)
    plus ``index``, ``flip``, ``crop_scale`` and ``trans`` (the (2, 3) affine map).
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        writelist: Sequence[str] = ("Car",),
        class_merging: bool = False,
        resolution: Sequence[int] = (1280, 384),
        augment: Optional[bool] = None,
        aug_pd: bool = True,
        aug_crop: bool = True,
        random_flip: float = 0.5,
        random_crop: float = 0.5,
        scale: float = 0.05,
        shift: float = 0.05,
        depth_scale: str = "normal",
        meanshape: bool = False,
        clip_2d: bool = False,
        max_objs: int = 50,
        height_scale: float = 1.0,
        downsample: int = 32,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if depth_scale not in DEPTH_SCALES:
            raise ValueError(f"depth_scale must be 'normal', 'inverse' or 'none', got {depth_scale!r}")
        self.root = os.fspath(root)
        self.split = split
        split_file = os.path.join(self.root, "ImageSets", split + ".txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"split file {split_file!r} not found")
        self.idx_list = read_split_file(split_file)
        self.data_dir = os.path.join(self.root, "testing" if split == "test" else "training")
        self.image_dir = os.path.join(self.data_dir, "image_2")
        self.label_dir = os.path.join(self.data_dir, "label_2")
        self.calib_dir = os.path.join(self.data_dir, "calib")
        self.writelist = tuple(writelist)
        self.class_merging = bool(class_merging)
        self.target_labels = trained_labels(self.writelist, self.class_merging)
        self.resolution = np.array([int(resolution[0]), int(resolution[1])])
        self.data_augmentation = split in ("train", "trainval") if augment is None else bool(augment)
        self.aug_pd, self.aug_crop = aug_pd, aug_crop
        self.random_flip, self.random_crop = random_flip, random_crop
        self.scale, self.shift = scale, shift
        self.depth_scale = depth_scale
        self.meanshape = meanshape
        self.cls_mean_size = KITTI_CLS_MEAN_SIZE.astype(np.float32) if meanshape else np.zeros((3, 3), np.float32)
        self.clip_2d = clip_2d
        self.max_objs = max_objs
        self.height_scale = height_scale
        self.downsample = downsample
        self.class_name = list(KITTI_CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.idx_list)

    # ---- files -------------------------------------------------------------------------------
    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, f"{image_id:06d}.png")

    def get_image(self, image_id: int) -> Image.Image:
        return load_image(self.image_path(image_id))

    def get_label(self, image_id: int) -> list[KittiObject]:
        return read_labels(os.path.join(self.label_dir, f"{image_id:06d}.txt"))

    def get_calib(self, image_id: int) -> Calibration:
        return read_calib(os.path.join(self.calib_dir, f"{image_id:06d}.txt"))

    # ---- items -------------------------------------------------------------------------------
    def __getitem__(self, item: int):
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} images")
        image_id = int(self.idx_list[item])
        img = self.get_image(image_id)
        img_size = np.array(img.size)  # (W, H)
        center = img_size / 2.0
        crop_size, crop_scale = img_size.astype(np.float64), 1.0
        flip = False
        if self.data_augmentation:
            if self.aug_pd:
                distorted = photometric_distort(np.asarray(img))
                # The official casts to uint8 without clipping (values wrap); clip instead.
                img = Image.fromarray(np.clip(distorted, 0, 255).astype(np.uint8))
            if np.random.random() < self.random_flip:
                flip = True
                img = flip_image(img)
            if self.aug_crop and np.random.random() < self.random_crop:
                crop_scale = float(np.clip(np.random.randn() * self.scale + 1, 1 - self.scale, 1 + self.scale))
                crop_size = img_size * crop_scale
                center[0] += img_size[0] * np.clip(np.random.randn() * self.shift, -2 * self.shift, 2 * self.shift)
                center[1] += img_size[1] * np.clip(np.random.randn() * self.shift, -2 * self.shift, 2 * self.shift)
        trans, trans_inv = get_affine_transform(center, crop_size, self.resolution)
        image = network_input(img, trans_inv, self.resolution)

        calib = self.get_calib(image_id)
        info = {
            "img_id": image_id,
            "img_size": img_size,
            "bbox_downsample_ratio": img_size / (self.resolution // self.downsample),
            "index": item,
            "flip": flip,
            "crop_scale": crop_scale,
            "trans": trans,
        }
        objects = [] if self.split == "test" else self.get_label(image_id)
        target = self.encode_targets(objects, calib, img_size, trans, flip, crop_scale)
        target["image_id"] = image_id
        target["index"] = item
        return image, torch.from_numpy(calib.P2.copy()), target, info

    def encode_targets(self, objects: Sequence[KittiObject], calib: Calibration, img_size, trans, flip: bool,
                       crop_scale: float) -> dict:
        """The official label encoding of one image's (unflipped) objects, given the augmentation
        (see the class docstring); only the objects the official trainer keeps are returned."""
        width = float(img_size[0])
        if flip:
            objects = flip_objects(objects, width)
        resolution = self.resolution.astype(np.float64)
        rows = {key: [] for key in _TARGET_KEYS}
        for obj in list(objects)[: self.max_objs]:
            if obj.type not in self.target_labels:
                continue
            if obj.level(self.height_scale)[0] == "UnKnown" or obj.location[2] < 2 or obj.location[2] > 65:
                continue
            # selected by the official trainer (mask_2d); checked here, the order does not matter
            if not (obj.truncation <= 0.5 and obj.occlusion <= 2):
                continue
            box = np.concatenate([affine_transform(obj.box2d[:2], trans), affine_transform(obj.box2d[2:], trans)])
            center_3d = calib.rect_to_img(obj.center_3d)[0][0]
            if flip:  # the camera is not flipped: mirror the projection instead (official)
                center_3d[0] = width - center_3d[0]
            center_3d = affine_transform(center_3d, trans)
            if not (0 <= center_3d[0] < resolution[0] and 0 <= center_3d[1] < resolution[1]):
                continue
            box_norm = box / np.tile(resolution, 2)
            c3d = center_3d / resolution
            lrtb = np.array([c3d[0] - box_norm[0], box_norm[2] - c3d[0], c3d[1] - box_norm[1], box_norm[3] - c3d[1]])
            if (lrtb < 0).any():
                if not self.clip_2d:
                    continue
                lrtb = np.clip(lrtb, 0, 1)
            size_2d = box[2:] - box[:2]
            cls_id = self.target_labels[obj.type]
            rows["labels"].append(cls_id)
            rows["boxes"].append([(box_norm[0] + box_norm[2]) / 2, (box_norm[1] + box_norm[3]) / 2,
                                  size_2d[0] / resolution[0], size_2d[1] / resolution[1]])
            rows["boxes_3d"].append([c3d[0], c3d[1], *lrtb])
            z = float(obj.location[2])
            rows["depth"].append([{"normal": z * crop_scale, "inverse": z / crop_scale, "none": z}[self.depth_scale]])
            alpha = calib.ry2alpha(obj.ry, float(obj.box2d[0] + obj.box2d[2]) / 2)
            heading_bin, heading_res = angle2class(alpha)
            rows["heading_bin"].append([heading_bin])
            rows["heading_res"].append([heading_res])
            src_size = np.array([obj.h, obj.w, obj.l], dtype=np.float32)
            rows["src_size_3d"].append(src_size)
            rows["size_3d"].append(src_size - self.cls_mean_size[cls_id])
            rows["size_2d"].append(size_2d)
            rows["calibs"].append(calib.P2)
        target = {}
        for key, (shape, dtype) in _TARGET_KEYS.items():
            values = np.asarray(rows[key], dtype=np.float64 if dtype == torch.float32 else np.int64)
            target[key] = torch.as_tensor(values.reshape((len(rows[key]),) + shape), dtype=dtype)
        target["calib"] = torch.from_numpy(calib.P2.copy())
        target["calib_input"] = torch.from_numpy(transform_P2(calib.P2, trans, width if flip else None))
        target["img_size"] = torch.as_tensor(np.asarray(img_size), dtype=torch.int64)
        return target


def mono_collate_fn(batch: Sequence[tuple]) -> tuple[Tensor, Tensor, Tensor, list[dict], list[dict]]:
    """``[(image, calib, target, info), ...]`` -> ``(images (B, 3, H, W), calibs (B, 3, 4),
    img_sizes (B, 2) int64 (W, H) of the originals, [target, ...], [info, ...])``; every image has
    the network resolution, so no padding. Feed ``model(images, calibs, img_sizes)``,
    ``criterion(outputs, targets)`` and ``decode(outputs, calibs, img_sizes,
    img_ids=[i["img_id"] for i in infos])``."""
    if len(batch) == 0:
        raise ValueError("mono_collate_fn needs at least one sample")
    images, calibs, targets, infos = zip(*batch)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"images of one batch must share a size, got {sorted(shapes)}")
    img_sizes = torch.stack([torch.as_tensor(np.asarray(i["img_size"]), dtype=torch.int64) for i in infos])
    return torch.stack(images), torch.stack(calibs).float(), img_sizes, list(targets), list(infos)
