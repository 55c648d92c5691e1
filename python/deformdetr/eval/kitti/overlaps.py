"""The overlaps the KITTI evaluation matches by: 2D boxes with the devkit's arithmetic, and the
rotated bird's-eye-view and 3D IoUs from the native core (:mod:`deformdetr.ops.rotated_iou`,
float64; see :mod:`deformdetr.eval.kitti.api` for how that differs from the devkit's float32)."""

from __future__ import annotations

import numpy as np

from deformdetr.ops.rotated_iou import bev_box_iou, box3d_iou

__all__ = ["image_box_overlap", "rotated_boxes", "rotated_overlaps"]


def image_box_overlap(boxes: np.ndarray, query: np.ndarray, criterion: int) -> np.ndarray:
    """Paired 2D overlaps with the devkit's image_box_overlap arithmetic: 0 unless the boxes
    overlap in both directions; criterion -1 divides by the union, 0 by the area of ``boxes``."""
    iw = np.minimum(boxes[:, 2], query[:, 2]) - np.maximum(boxes[:, 0], query[:, 0])
    ih = np.minimum(boxes[:, 3], query[:, 3]) - np.maximum(boxes[:, 1], query[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inter = iw * ih
    if criterion == -1:
        query_area = (query[:, 2] - query[:, 0]) * (query[:, 3] - query[:, 1])
        denominator = area + query_area - inter
    else:
        denominator = area
    ok = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, denominator, 1.0), 0.0)


def rotated_boxes(location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray, metric: str) -> np.ndarray:
    """Annotation columns -> the boxes of :func:`rotated_overlaps`: BEV ``(x, z, l, w, ry)`` or 3D
    ``(x, y, z, l, h, w, ry)``. Boxes with a negative (or NaN) dimension, such as DontCare's
    -1 -1 -1, get zero dimensions: they overlap nothing."""
    if metric == "bev":
        boxes = np.concatenate([location[:, [0, 2]], dimensions[:, [0, 2]], rotation_y[:, None]], 1)
        dims = [2, 3]
    else:
        boxes = np.concatenate([location, dimensions, rotation_y[:, None]], 1)
        dims = [3, 4, 5]
    bad = ~(boxes[:, dims] >= 0).all(1)
    boxes[np.ix_(bad, dims)] = 0.0
    return boxes


def rotated_overlaps(dt_boxes: np.ndarray, gt_boxes: np.ndarray, metric: str) -> np.ndarray:
    """(detections, ground truths) BEV or 3D IoU of one image's :func:`rotated_boxes`; two boxes
    of zero area (0 / 0) overlap 0."""
    kernel = bev_box_iou if metric == "bev" else box3d_iou
    out = kernel(dt_boxes, gt_boxes)
    out[~np.isfinite(out)] = 0.0
    return out
