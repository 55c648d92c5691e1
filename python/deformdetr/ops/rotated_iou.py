"""Rotated bird's-eye-view (BEV) and 3D box overlaps with the semantics of the KITTI evaluation
(the devkit's python port: ``rotate_iou_gpu_eval`` and ``d3_box_overlap``), each beside a pure
numpy reference.

Box layouts follow the devkit's annotation order (camera coordinates: x right, y down, z forward):

- BEV boxes ``(N, 5)``: ``(x, z, l, w, ry)``, i.e. ``location[:, [0, 2]]``,
  ``dimensions[:, [0, 2]]`` and ``rotation_y`` of a devkit annotation (whose ``dimensions`` are
  ``(l, h, w)``). The rectangle has extent ``l`` along its local x axis and ``w`` along its local
  z axis; rotation by ``ry`` maps a local offset ``(u, v)`` to
  ``(x + cos(ry) u + sin(ry) v, z - sin(ry) u + cos(ry) v)``.
- 3D boxes ``(N, 7)``: ``(x, y, z, l, h, w, ry)`` = ``location``, ``dimensions``, ``rotation_y``;
  ``(x, y, z)`` is the centre of the bottom face and the box spans ``[y - h, y]`` vertically.

``criterion`` says what the intersection is divided by, exactly as in the devkit:

===========  ============================  ==============================
criterion    ``bev_box_iou``               ``box3d_iou``
===========  ============================  ==============================
-1           union (IoU)                   union volume (3D IoU)
0            area of ``boxes2[j]`` (*)     volume of ``boxes1[i]``
1            area of ``boxes1[i]``         volume of ``boxes2[j]``
2            1: the intersection area      1: the intersection volume (**)
===========  ============================  ==============================

(*) The devkit's CUDA kernel passes the query box first, so its criterion 0 divides by the area
of the second argument's box; kept for parity. (**) MonoDETR's copy of ``d3_box_overlap`` returns
``inc / inc`` (1 where boxes intersect) for criterion 2; second.pytorch's returns the intersection
volume, as here. The evaluation uses criterion -1 only.

Areas and volumes come from the dimensions (``l * w``, ``l * h * w``), as in the devkit.
Dimensions must be non-negative. Two boxes of zero area give NaN (0 / 0) under criterion -1.

The native kernels compute in float64 (the devkit's kernel in float32: how far apart that puts
the two is measured in :mod:`deformdetr.eval.kitti.api`), exactly (convex polygon clipping),
multi-threaded, with the GIL released for large inputs.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from deformdetr._native import _C, num_threads

__all__ = [
    "bev_box_iou",
    "box3d_iou",
    "bev_box_iou_reference",
    "box3d_iou_reference",
]

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821

_CRITERIA = (-1, 0, 1, 2)


def bev_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, criterion: int = -1) -> ArrayLike:
    """(N, M) rotated BEV overlap of boxes1 (N, 5) and boxes2 (M, 5), ``(x, z, l, w, ry)``.

    Takes numpy arrays or torch tensors and returns the same kind (float64; a tensor comes back on
    the device of ``boxes1``)."""
    return _pairwise(_C.bev_box_iou, boxes1, boxes2, criterion, 5, "(x, z, l, w, ry)")


def box3d_iou(boxes1: ArrayLike, boxes2: ArrayLike, criterion: int = -1) -> ArrayLike:
    """(N, M) 3D overlap of KITTI camera boxes boxes1 (N, 7) and boxes2 (M, 7),
    ``(x, y, z, l, h, w, ry)`` with y the bottom of the box and the box spanning ``[y - h, y]``.

    Takes numpy arrays or torch tensors and returns the same kind (float64)."""
    return _pairwise(_C.box3d_iou, boxes1, boxes2, criterion, 7, "(x, y, z, l, h, w, ry)")


def _to_numpy(boxes, name: str, width: int, layout: str) -> np.ndarray:
    if hasattr(boxes, "detach") and hasattr(boxes, "cpu"):  # a torch tensor
        boxes = boxes.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(boxes, dtype=np.float64))
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, width)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}) {layout}, got {array.shape}")
    return array


def _pairwise(kernel, boxes1, boxes2, criterion: int, width: int, layout: str):
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    like = boxes1
    a = _to_numpy(boxes1, "boxes1", width, layout)
    b = _to_numpy(boxes2, "boxes2", width, layout)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    kernel(a, b, out, criterion, num_threads())
    if hasattr(like, "detach") and hasattr(like, "device"):
        import torch

        return torch.from_numpy(out).to(like.device)
    return out


# ---- References in numpy: a different algorithm from the native kernel (which clips one
# rectangle by the other's half-planes). Here the intersection polygon is built as the devkit
# builds it: the corners of each rectangle inside the other plus every crossing of two edges,
# ordered by angle around their centroid, then measured by the shoelace formula.


def bev_corners(boxes: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(N, 4, 2) corners (x, z) of BEV boxes (N, 5), counter-clockwise, computed in ``dtype``."""
    boxes = np.asarray(boxes, dtype=dtype).reshape(-1, 5)
    x, z, length, width, ry = boxes.T
    u = np.array([-0.5, 0.5, 0.5, -0.5], dtype=dtype)[None, :] * length[:, None]
    v = np.array([-0.5, -0.5, 0.5, 0.5], dtype=dtype)[None, :] * width[:, None]
    c, s = np.cos(ry)[:, None], np.sin(ry)[:, None]
    return np.stack([x[:, None] + c * u + s * v, z[:, None] - s * u + c * v], axis=-1)


def _points_in_rects(points: np.ndarray, rects: np.ndarray, eps: float) -> np.ndarray:
    """points (P, K, 2) inside-or-on rects (P, 4, 2): projections onto two sides."""
    origin = rects[:, None, 0]
    ab = rects[:, None, 1] - origin
    ad = rects[:, None, 3] - origin
    ap = points - origin
    ab_ap, ab_ab = (ab * ap).sum(-1), (ab * ab).sum(-1)
    ad_ap, ad_ad = (ad * ap).sum(-1), (ad * ad).sum(-1)
    tol_ab = eps * np.maximum(ab_ab, 1.0)
    tol_ad = eps * np.maximum(ad_ad, 1.0)
    return (
        (ab_ap >= -tol_ab) & (ab_ap <= ab_ab + tol_ab) & (ad_ap >= -tol_ad) & (ad_ap <= ad_ad + tol_ad)
    )


def _edge_crossings(c1: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crossings of every edge of c1 (P, 4, 2) with every edge of c2: (P, 16, 2) and a mask."""
    p = c1[:, :, None, :]
    r = (np.roll(c1, -1, axis=1) - c1)[:, :, None, :]
    q = c2[:, None, :, :]
    s = (np.roll(c2, -1, axis=1) - c2)[:, None, :, :]
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    qp = q - p
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / denom
        w = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / denom
    scale = np.abs(r).sum(-1) * np.abs(s).sum(-1)
    ok = (np.abs(denom) > 1e-12 * np.maximum(scale, 1e-300)) & (t >= 0) & (t <= 1) & (w >= 0) & (w <= 1)
    points = p + np.where(ok, t, 0.0)[..., None] * r
    return points.reshape(len(c1), 16, 2), ok.reshape(len(c1), 16)


def rotated_rect_intersection_area_reference(boxes_a: np.ndarray, boxes_b: np.ndarray, dtype=np.float64,
                                             edge_crossings=None) -> np.ndarray:
    """Intersection areas of paired BEV boxes (P, 5) and (P, 5): a (P,) array, computed in
    ``dtype`` throughout. ``edge_crossings(c1, c2)`` -> (P, 16, 2) points and a mask, the
    crossings of every edge of the corners c1 (P, 4, 2) with every edge of c2, replaces the
    default computation; with float32 it lets ``bench/kitti_iou_float32.py`` measure what the
    devkit's float32 arithmetic loses."""
    c1, c2 = bev_corners(boxes_a, dtype), bev_corners(boxes_b, dtype)
    if len(c1) == 0:
        return np.zeros(0, dtype=dtype)
    eps = 1e-12
    in1 = _points_in_rects(c1, c2, eps)
    in2 = _points_in_rects(c2, c1, eps)
    crossings, crossing_ok = (edge_crossings or _edge_crossings)(c1, c2)
    points = np.concatenate([c1, c2, crossings], axis=1)  # (P, 24, 2)
    valid = np.concatenate([in1, in2, crossing_ok], axis=1)
    count = valid.sum(1)
    centroid = (points * valid[..., None]).sum(1) / np.maximum(count, 1).astype(dtype)[:, None]
    rel = points - centroid[:, None, :]
    angle = np.where(valid, np.arctan2(rel[..., 1], rel[..., 0]), np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    rel = np.take_along_axis(rel, order[..., None], axis=1)
    valid = np.take_along_axis(valid, order, axis=1)  # valid points first, by angle
    nxt = np.roll(rel, -1, axis=1)
    nxt_valid = np.roll(valid, -1, axis=1)
    # Close the polygon: the successor of the last valid point is the first point.
    last = (valid & ~nxt_valid)[..., None]
    nxt = np.where(last, rel[:, :1, :], nxt)
    cross = rel[..., 0] * nxt[..., 1] - nxt[..., 0] * rel[..., 1]
    area = 0.5 * np.abs(np.where(valid, cross, 0.0).sum(1))
    return np.where(count >= 3, area, 0.0)


def _divide(inter, size1, size2, criterion):
    with np.errstate(divide="ignore", invalid="ignore"):
        if criterion == -1:
            return inter / (size1 + size2 - inter)
        if criterion == 0:
            return inter / size1
        if criterion == 1:
            return inter / size2
        return inter


def bev_box_iou_reference(boxes1, boxes2, criterion: int = -1) -> np.ndarray:
    """The definition of :func:`bev_box_iou` in numpy (float64, numpy in and out)."""
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    a = _to_numpy(boxes1, "boxes1", 5, "(x, z, l, w, ry)")
    b = _to_numpy(boxes2, "boxes2", 5, "(x, z, l, w, ry)")
    n, m = len(a), len(b)
    inter = rotated_rect_intersection_area_reference(np.repeat(a, m, 0), np.tile(b, (n, 1)))
    inter = inter.reshape(n, m)
    area1 = (a[:, 2] * a[:, 3])[:, None]
    area2 = (b[:, 2] * b[:, 3])[None, :]
    # criterion 0 divides by the second box's area, as the devkit's kernel does.
    return _divide(inter, area2, area1, criterion)


def box3d_iou_reference(boxes1, boxes2, criterion: int = -1) -> np.ndarray:
    """The definition of :func:`box3d_iou` in numpy (float64, numpy in and out)."""
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    a = _to_numpy(boxes1, "boxes1", 7, "(x, y, z, l, h, w, ry)")
    b = _to_numpy(boxes2, "boxes2", 7, "(x, y, z, l, h, w, ry)")
    bev = [0, 2, 3, 5, 6]
    inter_bev = bev_box_iou_reference(a[:, bev], b[:, bev], criterion=2)
    top = np.maximum(a[:, None, 1] - a[:, None, 4], b[None, :, 1] - b[None, :, 4])
    bottom = np.minimum(a[:, None, 1], b[None, :, 1])
    overlap_y = bottom - top
    inter = overlap_y * inter_bev
    volume1 = (a[:, 3] * a[:, 4] * a[:, 5])[:, None]
    volume2 = (b[:, 3] * b[:, 4] * b[:, 5])[None, :]
    value = _divide(inter, volume1, volume2, criterion)
    return np.where((overlap_y > 0) & (inter_bev > 0), value, 0.0)
