"""The cameras of images a 3D model predicts on, as a person gives them: one KITTI calib file for
all images, a folder of calib files matched to the images by file stem (KITTI's ``calib/`` beside
``image_2/``), or the intrinsics fx, fy, cx, cy in pixels. And the camera of the part of an image
MonoDETR sees (:func:`model_view`).

Every camera is read before any image is predicted, so that a missing or broken calib file is
one error up front, naming the images concerned, not a failure half way through a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from deformdetr.data.kitti import Calibration, read_calib

__all__ = ["parse_intrinsics", "image_cameras", "ModelView", "model_view", "ASPECT_TOLERANCE"]

#: How far (relative) an image's aspect ratio may differ from the network input's and still be
#: seen whole, as evaluation sees it (KITTI's images, 1224..1242 x 370..376, differ from 1280 x 384
#: by up to 1%).
ASPECT_TOLERANCE = 0.02


def parse_intrinsics(text: str) -> Calibration:
    """``"fx,fy,cx,cy"`` (pixels) -> the camera P2 = [[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0]]."""
    parts = [p for p in str(text).replace(" ", "").split(",")]
    try:
        fx, fy, cx, cy = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--intrinsics takes fx,fy,cx,cy in pixels (e.g. 721.5,721.5,609.6,172.9), "
                         f"got {text!r}") from None
    if not (fx > 0 and fy > 0 and np.isfinite([cx, cy]).all()):
        raise ValueError(f"--intrinsics: the focal lengths fx, fy must be positive and cx, cy finite, got {text!r}")
    return Calibration([[fx, 0.0, cx, 0.0], [0.0, fy, cy, 0.0], [0.0, 0.0, 1.0, 0.0]])


def image_cameras(image_paths: Sequence[str], calib: Optional[str] = None,
                  intrinsics: Optional[str] = None) -> list[Calibration]:
    """The camera of each image: from ``calib`` (a KITTI calib file for all, or a folder holding
    ``<image stem>.txt`` for each) or ``intrinsics`` ("fx,fy,cx,cy"). Exactly one of them must be
    given; images without a calib file in the folder are an error naming them."""
    if (calib is None) == (intrinsics is None):
        raise ValueError("a 3D model needs the camera of the images: give --calib (a KITTI calib file for all "
                         "images, or a folder of them named as the images) or --intrinsics fx,fy,cx,cy"
                         if calib is None else "--calib and --intrinsics exclude each other: give one")
    if intrinsics is not None:
        return [parse_intrinsics(intrinsics)] * len(image_paths)
    if os.path.isfile(calib):
        return [read_calib(calib)] * len(image_paths)
    if not os.path.isdir(calib):
        raise FileNotFoundError(f"--calib {calib!r}: no such file or folder")
    files = [os.path.join(calib, os.path.splitext(os.path.basename(path))[0] + ".txt") for path in image_paths]
    missing = [path for path, file in zip(image_paths, files) if not os.path.isfile(file)]
    if missing:
        shown = ", ".join(os.path.basename(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(image_paths)} images have no calib file in {calib} "
                                f"(<image name>.txt): {shown}")
    return [read_calib(file) for file in files]


@dataclass(frozen=True)
class ModelView:
    """What the model and the decoding are given for one image: the camera ``P2`` (3, 4) and the
    size ``(W, H)`` of the part of the image the network sees, in the image's pixels, and that
    part's first row ``top`` in the image (0 when it is the whole image; negative when the network
    input extends beyond the image)."""

    P2: np.ndarray
    size: tuple[int, int]
    top: float

    @property
    def whole_image(self) -> bool:
        return self.top == 0


def model_view(calib: Calibration, image_size: Sequence[int], resolution: Sequence[int],
               tolerance: float = ASPECT_TOLERANCE) -> ModelView:
    """The evaluation's view of an image of ``image_size`` (W, H) at the network input
    ``resolution`` (W, H): the image scaled to the input's width about its centre (as
    ``data.kitti_dataset.eval_input``), so the network sees image rows ``top`` .. ``top`` + W *
    res H / res W. The model's geometric depth and the decoding scale their normalised outputs by
    the size they are given, which is right for that band of rows. Evaluation gives them the whole
    image's size and camera, which is what the band is for images of the input's aspect ratio: so
    does this, within ``tolerance``; other images get the band's height and the camera with its
    principal point moved to the band (their 2D boxes come back shifted by ``top``)."""
    width, height = int(image_size[0]), int(image_size[1])
    band = width * float(resolution[1]) / float(resolution[0])
    if abs(band - height) <= tolerance * height:
        return ModelView(calib.P2.copy(), (width, height), 0)
    top = (height - band) / 2
    P2 = calib.P2.astype(np.float64)
    P2[1] -= top * P2[2]  # pixel rows counted from the band's first row
    return ModelView(P2.astype(np.float32), (width, int(round(band))), top)
