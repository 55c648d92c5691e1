"""Decoding MonoDETR's outputs to KITTI-style 3D boxes (the official decode_helper): the top-k
(query, class) scores, the 2D box around the projected 3D centre, the 3D location from that
centre, the depth and the camera (P2), the size (plus the class mean size) and the heading
(multi-bin -> observation angle alpha -> rotation ry)."""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from deformdetr.ops.boxes import box_cxcylrtb_to_xyxy, box_xyxy_to_cxcywh_reference

__all__ = ["Detection3D", "detection_columns", "extract_dets_from_outputs", "decode_detections", "decode",
           "angle2class", "class2angle", "img_to_rect", "alpha2ry", "ry2alpha", "KITTI_CLS_MEAN_SIZE",
           "NUM_HEADING_BINS"]

NUM_HEADING_BINS = 12

# The columns of extract_dets_from_outputs' rows, in the order it concatenates them.
_LABEL = 0
_SCORE = 1
_BOX_2D = slice(2, 6)  # cx, cy, w, h of the 2D box, normalised by the image size
_DEPTH = 6
_HEADING = slice(7, 7 + 2 * NUM_HEADING_BINS)  # bin scores, then per-bin residuals
_SIZE_3D = slice(31, 34)  # h, w, l
_CENTRE_3D = slice(34, 36)  # the projected 3D centre x, y, normalised
_DEPTH_CONFIDENCE = 36  # exp(-log-variance of the depth)


class Detection3D(NamedTuple):
    """One decoded detection, a row of :func:`decode_detections`: its training label (index in
    ``deformdetr.data.kitti.KITTI_CLASS_NAMES``: Pedestrian, Car, Cyclist), the observation angle,
    the 2D box in pixels of the original image, the size, the bottom centre of the 3D box in the
    camera frame, the rotation about the camera's y axis and the score. A tuple, so rows also
    stack into (N, 14) arrays, whose columns :func:`detection_columns` names."""

    label: int
    alpha: float
    x1: float
    y1: float
    x2: float
    y2: float
    h: float
    w: float
    l: float  # noqa: E741 (KITTI's name)
    x: float
    y: float
    z: float
    ry: float
    score: float


def detection_columns(rows) -> dict:
    """Decoded rows (:class:`Detection3D` or sequences in its field order) -> one float64 column
    per field name."""
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(Detection3D._fields))
    return {name: table[:, i] for i, name in enumerate(Detection3D._fields)}

#: The official KITTI class mean sizes (h, w, l) of Pedestrian, Car, Cyclist. The official
#: configuration (``meanshape: False``) uses zeros instead: sizes are predicted absolutely.
KITTI_CLS_MEAN_SIZE = np.array([[1.76255119, 0.66068622, 0.84422524],
                                [1.52563191462, 1.62856739989, 3.88311640418],
                                [1.73698127, 0.59706367, 1.76282397]])


def angle2class(angle: float) -> tuple[int, float]:
    """A heading angle -> (bin, residual) over 12 bins centred at multiples of 30 degrees."""
    angle = angle % (2 * np.pi)
    per_class = 2 * np.pi / float(NUM_HEADING_BINS)
    shifted = (angle + per_class / 2) % (2 * np.pi)
    class_id = int(shifted / per_class)
    return class_id, shifted - (class_id * per_class + per_class / 2)


def class2angle(cls: int, residual: float, to_label_format: bool = False) -> float:
    """(bin, residual) -> angle; with ``to_label_format``, in (-pi, pi] as KITTI labels."""
    angle = cls * (2 * np.pi / float(NUM_HEADING_BINS)) + residual
    if to_label_format and angle > np.pi:
        angle = angle - 2 * np.pi
    return angle


def _intrinsics(P2: np.ndarray):
    fu, fv, cu, cv = P2[0, 0], P2[1, 1], P2[0, 2], P2[1, 2]
    return fu, fv, cu, cv, P2[0, 3] / (-fu), P2[1, 3] / (-fv)


def img_to_rect(P2: np.ndarray, u, v, depth) -> np.ndarray:
    """Pixels (u, v) at depth (rectified camera z) -> (N, 3) points in the rectified camera frame."""
    fu, fv, cu, cv, tx, ty = _intrinsics(np.asarray(P2))
    x = ((u - cu) * depth) / fu + tx
    y = ((v - cv) * depth) / fv + ty
    return np.concatenate((np.reshape(x, (-1, 1)), np.reshape(y, (-1, 1)), np.reshape(depth, (-1, 1))), axis=1)


def _wrap(angle: float) -> float:
    if angle > np.pi:
        angle -= 2 * np.pi
    if angle < -np.pi:
        angle += 2 * np.pi
    return angle


def alpha2ry(P2: np.ndarray, alpha: float, u: float) -> float:
    """Observation angle alpha at image column u -> rotation ry about the camera's Y axis."""
    return _wrap(alpha + np.arctan2(u - P2[0, 2], P2[0, 0]))


def ry2alpha(P2: np.ndarray, ry: float, u: float) -> float:
    return _wrap(ry - np.arctan2(u - P2[0, 2], P2[0, 0]))


@torch.no_grad()
def extract_dets_from_outputs(outputs: Mapping[str, Tensor], topk: int = 50) -> Tensor:
    """The ``topk`` best (query, class) pairs of each image as (B, topk, 37) rows: class, score,
    2D box (cx, cy, w, h, normalised), depth, 24 heading values, 3 sizes, projected 3D centre
    (x, y normalised), depth confidence exp(-log-variance)."""
    logits = outputs["pred_logits"]
    boxes_all = outputs["pred_boxes"]
    batch, queries, classes = logits.shape
    topk = min(topk, queries * classes)
    scores, index = torch.topk(logits.sigmoid().view(batch, -1), topk, dim=1)
    query = (index // classes).unsqueeze(-1)
    labels = (index % classes).unsqueeze(-1)

    def gather(x: Tensor) -> Tensor:
        return torch.gather(x, 1, query.repeat(1, 1, x.shape[-1]))

    boxes = gather(boxes_all)
    heading = gather(outputs["pred_angle"])
    size_3d = gather(outputs["pred_3d_dim"])
    depth = gather(outputs["pred_depth"][:, :, 0:1])
    sigma = gather(torch.exp(-outputs["pred_depth"][:, :, 1:2]))
    xywh_2d = box_xyxy_to_cxcywh_reference(box_cxcylrtb_to_xyxy(boxes))
    return torch.cat([labels.to(scores.dtype), scores.unsqueeze(-1), xywh_2d, depth, heading, size_3d,
                      boxes[:, :, 0:2], sigma], dim=2)


def decode_detections(dets, img_sizes, calibs, cls_mean_size: Optional[np.ndarray] = None,
                      threshold: float = 0.2, img_ids: Optional[Sequence] = None):
    """Rows of :func:`extract_dets_from_outputs` (a tensor or array) -> per image a list of
    :class:`Detection3D` (label, alpha, x1, y1, x2, y2 (pixels), h, w, l, x, y, z (the bottom
    centre, camera frame), ry, score), keeping scores >= ``threshold``; the score is multiplied
    by the depth confidence.
    img_sizes (B, 2) (W, H) and calibs (B, 3, 4) P2 of the original images; ``cls_mean_size``
    (classes, 3), default zeros (the official configuration). Returns a list, or a dict keyed by
    ``img_ids`` if given (as the official)."""
    dets = dets.detach().cpu().numpy() if isinstance(dets, Tensor) else np.asarray(dets)
    img_sizes = img_sizes.detach().cpu().numpy() if isinstance(img_sizes, Tensor) else np.asarray(img_sizes)
    calibs = calibs.detach().cpu().numpy() if isinstance(calibs, Tensor) else np.asarray(calibs)
    if cls_mean_size is None:
        cls_mean_size = np.zeros((max(int(dets[..., _LABEL].max(initial=0)) + 1, 3), 3), dtype=np.float32)
    results = []
    for i in range(dets.shape[0]):
        width, height = img_sizes[i][0], img_sizes[i][1]
        P2 = calibs[i]
        preds = []
        for det in dets[i]:
            cls_id = int(det[_LABEL])
            score = det[_SCORE]
            if score < threshold:
                continue
            cx, cy, box_w, box_h = det[_BOX_2D]
            x, y = cx * width, cy * height
            w, h = box_w * width, box_h * height
            bbox = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
            depth = det[_DEPTH]
            dimensions = det[_SIZE_3D] + cls_mean_size[cls_id]
            x3d, y3d = det[_CENTRE_3D][0] * width, det[_CENTRE_3D][1] * height
            location = img_to_rect(P2, x3d, y3d, depth).reshape(-1)
            location[1] += dimensions[0] / 2  # KITTI locates boxes at their bottom centre
            heading = det[_HEADING]
            bin_id = int(np.argmax(heading[:NUM_HEADING_BINS]))
            alpha = class2angle(bin_id, heading[NUM_HEADING_BINS + bin_id], to_label_format=True)
            ry = alpha2ry(P2, alpha, x)
            score = score * det[_DEPTH_CONFIDENCE]
            preds.append(Detection3D(cls_id, alpha, *bbox, *dimensions.tolist(), *location.tolist(), ry, score))
        results.append(preds)
    if img_ids is not None:
        return {img_id: preds for img_id, preds in zip(img_ids, results)}
    return results


def decode(outputs: Mapping[str, Tensor], calibs, img_sizes, topk: int = 50, threshold: float = 0.2,
           cls_mean_size: Optional[np.ndarray] = None, img_ids: Optional[Sequence] = None):
    """Model outputs -> 3D boxes per image (see :func:`decode_detections`), as the official tester."""
    dets = extract_dets_from_outputs(outputs, topk=topk)
    return decode_detections(dets, img_sizes, calibs, cls_mean_size, threshold, img_ids)
