"""A synthetic KITTI-format monocular 3D data set: solid 3D boxes of the three classes on a
road, seen by a KITTI-like camera, so the MonoDETR pipeline (data, training, decoding, KITTI
evaluation) runs in seconds on a CPU. Files follow the official layout::

    root/training/image_2/000000.png   label_2/000000.txt   calib/000000.txt
    root/ImageSets/train.txt, val.txt, trainval.txt

The camera is KITTI's P2 scaled to the image width (principal point scaled per axis); the road
is the plane y = ``camera_height`` (y points down). Each image has 1..``max_objects`` boxes of
class-typical sizes at depths 5..40 m, painted far to near as their
visible faces (shaded by the face's direction, in class colours). Labels match the pixels: the
2D box is the projected 8 corners' bounding rectangle clipped to the image, ``truncation`` the
share of that rectangle outside the image, ``occlusion`` 0, ``alpha = ry - atan2(x, z)``. The
3D values are rounded to KITTI's 2 decimals before the 2D box is computed from them.

Headings (``headings``): ``"uniform"``, any direction; or ``"road"``, along the road as most of
KITTI's objects are: ry = +-90 degrees (away from or towards the camera) within
:data:`ROAD_HEADING_SPREAD`.

Each image is drawn from its own generator seeded by ``(seed, index)``: the same seed gives
byte-identical files, and image ``i`` does not depend on how many images are generated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from deformdetr.data.kitti import Calibration, KittiObject, wrap_angle, write_calib, write_labels

__all__ = ["generate_synthetic_kitti", "SyntheticKitti", "render_synthetic_kitti", "synthetic_P2",
           "KITTI_P2", "KITTI_IMAGE_SIZE", "HEADINGS", "ROAD_HEADING_SPREAD"]

#: The P2 of KITTI's first training image and the image size (H, W) it belongs to.
KITTI_P2 = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791],
                     [0.0, 0.0, 1.0, 0.002745884]])
KITTI_IMAGE_SIZE = (375, 1242)

# (h, w, l) mean and jitter (m), base colour
_CLASSES = {
    "Car": ((1.5, 1.6, 3.9), (0.1, 0.08, 0.3), (200, 40, 40)),
    "Pedestrian": ((1.7, 0.6, 0.8), (0.1, 0.06, 0.1), (40, 200, 60)),
    "Cyclist": ((1.7, 0.6, 1.8), (0.08, 0.06, 0.12), (240, 200, 30)),
}
_CLASS_ORDER = ("Car", "Pedestrian", "Cyclist")
# faces as corner indices of KittiObject.corners3d (0-3 bottom, 4-7 top): bottom, top, 4 sides
_FACES = ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))
#: The heading distributions (see the module docstring).
HEADINGS = ("uniform", "road")
#: With ``headings="road"``: how far (radians, either way) an object's ry is from +-90 degrees.
ROAD_HEADING_SPREAD = math.radians(20)
_LIGHT = np.array([0.4, -0.8, -0.45]) / np.linalg.norm([0.4, -0.8, -0.45])  # towards the light


def synthetic_P2(height: int, width: int) -> np.ndarray:
    """KITTI's P2 for an image of ``height`` x ``width``: focal lengths and the x offset scaled by
    width / 1242, the principal point per axis."""
    sx = width / KITTI_IMAGE_SIZE[1]
    sy = height / KITTI_IMAGE_SIZE[0]
    P2 = KITTI_P2.copy()
    P2[0, 0] = P2[1, 1] = KITTI_P2[0, 0] * sx
    P2[0, 2] = KITTI_P2[0, 2] * sx
    P2[1, 2] = KITTI_P2[1, 2] * sy
    P2[0, 3] = KITTI_P2[0, 3] * sx
    P2[1, 3] = KITTI_P2[1, 3] * sx
    return P2.astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int, horizon: float) -> np.ndarray:
    """Sky (a vertical blue gradient) above the horizon row, grey road with noise below."""
    rows = np.arange(height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform([70, 110, 170], [130, 170, 230]), rng.uniform([170, 190, 210], [220, 230, 245])
    t = np.clip(rows / max(horizon, 1.0), 0, 1)
    sky = top + t * (bottom - top)
    road_base = rng.uniform(70, 120)
    road = road_base + 25 * np.clip((rows - horizon) / max(height - horizon, 1.0), 0, 1) + np.zeros(3)
    image = np.where(rows < horizon, sky, road) + np.zeros((height, width, 3))
    image += rng.normal(0, 4, size=(height, width, 1))
    return np.clip(image, 0, 255).astype(np.uint8)


def _round(obj: KittiObject) -> KittiObject:
    """Rounds the 3D values to the 2 decimals a label file holds."""
    obj.h, obj.w, obj.l, obj.ry = (round(float(v), 2) for v in (obj.h, obj.w, obj.l, obj.ry))
    obj.location = np.round(obj.location.astype(np.float64), 2)
    return obj


def render_synthetic_kitti(rng: np.random.Generator, height: int, width: int, max_objects: int = 4,
                           depth_range: tuple[float, float] = (5.0, 40.0), camera_height: float = 1.65,
                           classes: Sequence[str] = _CLASS_ORDER, headings: str = "uniform",
                           ) -> tuple[np.ndarray, np.ndarray, list[KittiObject]]:
    """One sample: ``(image (H, W, 3) uint8, P2 (3, 4), objects)``; see the module docstring."""
    _check_headings(headings)
    P2 = synthetic_P2(height, width)
    calib = Calibration(P2)
    centre = -np.linalg.inv(P2[:, :3].astype(np.float64)) @ P2[:, 3].astype(np.float64)  # camera position
    horizon = calib.cv  # where the road plane meets the sky, far away
    image = Image.fromarray(_background(rng, height, width, horizon))
    draw = ImageDraw.Draw(image)
    objects: list[KittiObject] = []
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = classes[int(rng.integers(len(classes)))]
        mean, jitter, colour = _CLASSES[cls]
        for _attempt in range(10):
            h, w, l = (m + j * rng.standard_normal() for m, j in zip(mean, jitter))
            z = rng.uniform(*depth_range)
            u = rng.uniform(0.03, 0.97) * width  # the 3D centre's column: always inside the image
            x = (u - calib.cu) * z / calib.fu + calib.tx
            y = camera_height + 0.05 * rng.standard_normal()
            ry = _heading(rng, headings)
            obj = _round(KittiObject(cls, 0.0, 0, 0.0, np.zeros(4), h, w, l, [x, y, z], ry))
            (box,), _ = calib.corners_to_img_boxes(obj.corners3d()[None])
            if all(_overlap(box, other) < 0.5 for other in placed):
                break
        else:
            continue
        placed.append(box)
        clipped = np.array([max(box[0], 0), max(box[1], 0), min(box[2], width - 1), min(box[3], height - 1)])
        area = (box[2] - box[0]) * (box[3] - box[1])
        inside = max(clipped[2] - clipped[0], 0) * max(clipped[3] - clipped[1], 0)
        obj.truncation = round(float(np.clip(1 - inside / max(area, 1e-9), 0, 1)), 2)
        obj.box2d = clipped.astype(np.float32)
        loc = obj.location.astype(np.float64)
        obj.alpha = round(wrap_angle(obj.ry - math.atan2(loc[0], loc[2])), 2)
        objects.append(obj)
    # painter's order: far to near
    for index in sorted(range(len(objects)), key=lambda i: -float(objects[i].location[2])):
        obj = objects[index]
        corners = obj.corners3d()
        _, (pixels,) = calib.corners_to_img_boxes(corners[None])
        colour = np.array(_CLASSES[obj.type][2], dtype=np.float64)
        middle = corners.mean(axis=0)
        for face in _FACES:
            points = corners[list(face)]
            face_centre = points.mean(axis=0)
            normal = np.cross(points[1] - points[0], points[3] - points[0])
            if np.dot(normal, face_centre - middle) < 0:
                normal = -normal  # outward
            if np.dot(normal, face_centre - centre) >= 0:
                continue  # facing away from the camera
            shade = 0.45 + 0.55 * max(0.0, float(np.dot(normal / np.linalg.norm(normal), _LIGHT)))
            fill = tuple(int(c) for c in np.clip(colour * shade, 0, 255))
            draw.polygon([tuple(p) for p in pixels[list(face)].tolist()], fill=fill, outline=fill)
    return np.asarray(image), P2, objects


def _check_headings(headings: str) -> None:
    if headings not in HEADINGS:
        raise ValueError(f"headings must be one of {', '.join(HEADINGS)}, got {headings!r}")


def _heading(rng: np.random.Generator, headings: str) -> float:
    """An object's ry (see the module docstring)."""
    if headings == "uniform":
        return rng.uniform(-math.pi, math.pi)
    direction = math.pi / 2 if rng.random() < 0.5 else -math.pi / 2
    return wrap_angle(direction + rng.uniform(-ROAD_HEADING_SPREAD, ROAD_HEADING_SPREAD))


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / max(smaller, 1e-9)


@dataclass
class SyntheticKitti:
    """Where :func:`generate_synthetic_kitti` wrote the data set, and the :class:`KittiMono3D`
    settings that scale the official ones to its image size."""

    root: str
    image_size: tuple[int, int]  # (H, W)
    train_ids: list[int]
    val_ids: list[int]

    @property
    def dataset_kwargs(self) -> dict:
        """``resolution`` the image size rounded up to multiples of 32 (W, H), ``height_scale``
        so KITTI's 25 / 40 px difficulty thresholds scale with the image height, ``writelist``
        the classes it draws."""
        height, width = self.image_size
        return {"resolution": (-(-width // 32) * 32, -(-height // 32) * 32),
                "height_scale": height / KITTI_IMAGE_SIZE[0], "writelist": _CLASS_ORDER}


def generate_synthetic_kitti(root: Union[str, os.PathLike], num_train: int = 200, num_val: int = 50,
                             image_size: tuple[int, int] = (96, 320), seed: int = 0, max_objects: int = 4,
                             depth_range: tuple[float, float] = (5.0, 40.0),
                             headings: str = "uniform") -> SyntheticKitti:
    """Writes the data set under ``root`` (see the module docstring): training images 0 ..
    num_train - 1 listed in ``train.txt``, the next ``num_val`` in ``val.txt``, all in
    ``trainval.txt``. ``image_size`` is (H, W); ``headings`` one of :data:`HEADINGS`."""
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    height, width = int(image_size[0]), int(image_size[1])
    if height < 8 or width < 8:
        raise ValueError(f"image_size must be at least 8 x 8, got {image_size}")
    _check_headings(headings)
    root = os.fspath(root)
    folders = {name: os.path.join(root, "training", name) for name in ("image_2", "label_2", "calib")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(root, "ImageSets"), exist_ok=True)
    for index in range(num_train + num_val):
        rng = np.random.default_rng([seed, index])
        image, P2, objects = render_synthetic_kitti(rng, height, width, max_objects, depth_range, headings=headings)
        name = f"{index:06d}"
        Image.fromarray(image).save(os.path.join(folders["image_2"], name + ".png"), compress_level=1)
        write_labels(os.path.join(folders["label_2"], name + ".txt"), objects)
        write_calib(os.path.join(folders["calib"], name + ".txt"), P2)
    train_ids, val_ids = list(range(num_train)), list(range(num_train, num_train + num_val))
    for split, ids in (("train", train_ids), ("val", val_ids), ("trainval", train_ids + val_ids)):
        with open(os.path.join(root, "ImageSets", split + ".txt"), "w") as handle:
            handle.write("".join(f"{i:06d}\n" for i in ids))
    return SyntheticKitti(root=root, image_size=(height, width), train_ids=train_ids, val_ids=val_ids)
