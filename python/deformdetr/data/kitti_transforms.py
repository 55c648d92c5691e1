"""MonoDETR's KITTI augmentations (the official ``kitti_dataset``'s, ``kitti_utils``'s affine
helpers and ``pd.py``'s photometric distortion), written without OpenCV.

Randomness comes from NumPy's global generator, as in the official code (seed it, or use the
official ``worker_init_fn`` pattern, for reproducible runs)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from deformdetr.data.kitti import KittiObject, wrap_angle

__all__ = [
    "get_affine_transform",
    "affine_transform",
    "affine_image",
    "flip_objects",
    "flip_image",
    "photometric_distort",
    "transform_P2",
]


def get_affine_transform(center, crop_size, output_size) -> tuple[np.ndarray, np.ndarray]:
    """The official crop/scale map (rotation 0): the (2, 3) matrix sending ``center`` to the
    centre of ``output_size`` (W, H) and scaling uniformly by output W / crop W (the crop's height
    is not used: the official construction fixes the scale by widths), and its inverse."""
    cx, cy = float(center[0]), float(center[1])
    out_w, out_h = float(output_size[0]), float(output_size[1])
    scale = out_w / float(crop_size[0])
    trans = np.array([[scale, 0.0, out_w / 2 - scale * cx], [0.0, scale, out_h / 2 - scale * cy]])
    inv = np.array([[1 / scale, 0.0, cx - out_w / 2 / scale], [0.0, 1 / scale, cy - out_h / 2 / scale]])
    return trans, inv


def affine_transform(points, trans) -> np.ndarray:
    """Applies a (2, 3) affine map to a point (2,) or points (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    out = points.reshape(-1, 2) @ np.asarray(trans)[:, :2].T + np.asarray(trans)[:, 2]
    return out.reshape(points.shape)


def affine_image(image: Image.Image, trans_inv, output_size) -> Image.Image:
    """Resamples ``image`` (bilinear) into ``output_size`` (W, H); ``trans_inv`` maps output pixels
    to input pixels (PIL's convention, as the official)."""
    size = (int(output_size[0]), int(output_size[1]))
    return image.transform(size, Image.Transform.AFFINE, data=tuple(np.asarray(trans_inv).reshape(-1).tolist()),
                           resample=Image.Resampling.BILINEAR)


def transform_P2(P2, trans, flip_width: float = None) -> np.ndarray:
    """The (3, 4) matrix that projects rectified points straight to pixels of the augmented
    image: ``trans`` (2, 3) after P2, after mirroring columns (u -> W - u) when ``flip_width``
    is given. Exact for :meth:`Calibration.rect_to_img` (which, as the official, divides by the
    point's z): the shifts are scaled by z, not by P2's third row (which differs by P2[2, 3], a
    few millimetres). With the official flip the labels' 3D positions are not mirrored, so this
    matrix has a negative focal length when flipped."""
    P2 = np.asarray(P2, dtype=np.float64).reshape(3, 4)
    A = np.eye(3)
    A[:2] = np.asarray(trans, dtype=np.float64)
    if flip_width is not None:
        A = A @ np.array([[-1.0, 0.0, float(flip_width)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = P2.copy()
    out[:2] = A[:2, :2] @ P2[:2] + np.outer(A[:2, 2], [0.0, 0.0, 1.0, 0.0])
    return out.astype(np.float32)


def flip_image(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def flip_objects(objects: Sequence[KittiObject], image_width: float) -> list[KittiObject]:
    """The official label flip (``aug_calib`` off, as the official config): 2D boxes mirrored,
    alpha -> pi - alpha and ry -> pi - ry (wrapped to [-pi, pi]); the 3D locations and the
    camera stay as they are (the projected centre is mirrored where the targets are encoded).
    Returns new objects; flipping twice gives the originals back."""
    flipped = []
    for obj in objects:
        obj = obj.copy()
        x1, x2 = float(obj.box2d[0]), float(obj.box2d[2])
        obj.box2d[0], obj.box2d[2] = image_width - x2, image_width - x1
        obj.alpha = wrap_angle(math.pi - obj.alpha)
        obj.ry = wrap_angle(math.pi - obj.ry)
        flipped.append(obj)
    return flipped


# ---- photometric distortion (the official pd.PhotometricDistort, an SSD augmentation) ---------


def _rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """Float RGB -> HSV as OpenCV's float conversion: H in degrees [0, 360), S in [0, 1], V the
    channel maximum (so in the input's range)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    v = image.max(axis=-1)
    delta = v - image.min(axis=-1)
    s = np.where(v != 0, delta / np.where(v != 0, v, 1), 0.0)
    safe = np.where(delta != 0, delta, 1)
    h = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    h = np.where(delta == 0, 0.0, h)
    h = np.where(h < 0, h + 360, h)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    h = (h % 360) / 60
    sector = np.floor(h).astype(np.int64) % 6
    frac = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    choices = [np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros_like(hsv)
    for k, c in enumerate(choices):
        out = np.where((sector == k)[..., None], c, out)
    return out.astype(np.float32)


def photometric_distort(image: np.ndarray) -> np.ndarray:
    """The official photometric distortion of a (H, W, 3) float 0..255 image: random brightness
    (+-32), then contrast (x 0.5..1.5) before or after saturation (x 0.5..1.5) and hue (+-18
    degrees) in HSV, then a random channel permutation; each step with probability 1/2 and in the
    official order of random draws. Returns float32 (the caller clips, see the dataset)."""
    rand = np.random
    im = np.array(image, dtype=np.float32, copy=True)
    if rand.randint(2):
        im += rand.uniform(-32, 32)

    def contrast(x):
        if rand.randint(2):
            x *= rand.uniform(0.5, 1.5)
        return x

    def hsv_steps(x):
        hsv = _rgb_to_hsv(x)
        if rand.randint(2):
            hsv[..., 1] *= rand.uniform(0.5, 1.5)
        if rand.randint(2):
            hsv[..., 0] += rand.uniform(-18.0, 18.0)
            hsv[..., 0] = np.where(hsv[..., 0] > 360, hsv[..., 0] - 360, hsv[..., 0])
            hsv[..., 0] = np.where(hsv[..., 0] < 0, hsv[..., 0] + 360, hsv[..., 0])
        return _hsv_to_rgb(hsv)

    if rand.randint(2):
        im = hsv_steps(contrast(im))
    else:
        im = contrast(hsv_steps(im))
    if rand.randint(2):
        perms = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
        im = im[..., list(perms[rand.randint(len(perms))])]
    return im
