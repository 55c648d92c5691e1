"""Decoding MonoDETR's outputs to KITTI-style 3D boxes (the official decode_helper): the top-k
(query, class) scores, the 2D box around the projected 3D centre, the 3D location from that
centre, the depth and the camera (P2), the size (plus the class mean size) and the heading
(multi-bin -> observation angle alpha -> rotation ry)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from deformdetr.ops.boxes import box_cxcylrtb_to_xyxy, box_xyxy_to_cxcywh_reference

__all__ = ["extract_dets_from_outputs", "decode_detections", "decode", "angle2class", "class2angle",
           "img_to_rect", "alpha2ry", "ry2alpha", "KITTI_CLS_MEAN_SIZE", "NUM_HEADING_BINS"]

NUM_HEADING_BINS = 12

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
    [class, alpha, x1, y1, x2, y2 (pixels), h, w, l, x, y, z (the bottom centre, camera frame),
    ry, score], keeping scores >= ``threshold``; the score is multiplied by the depth confidence.
    img_sizes (B, 2) (W, H) and calibs (B, 3, 4) P2 of the original images; ``cls_mean_size``
    (classes, 3), default zeros (the official configuration). Returns a list, or a dict keyed by
    ``img_ids`` if given (as the official)."""
    dets = dets.detach().cpu().numpy() if isinstance(dets, Tensor) else np.asarray(dets)
    img_sizes = img_sizes.detach().cpu().numpy() if isinstance(img_sizes, Tensor) else np.asarray(img_sizes)
    calibs = calibs.detach().cpu().numpy() if isinstance(calibs, Tensor) else np.asarray(calibs)
    if cls_mean_size is None:
        cls_mean_size = np.zeros((max(int(dets[..., 0].max(initial=0)) + 1, 3), 3), dtype=np.float32)
    results = []
    for i in range(dets.shape[0]):
        width, height = img_sizes[i][0], img_sizes[i][1]
        P2 = calibs[i]
        preds = []
        for j in range(dets.shape[1]):
            cls_id = int(dets[i, j, 0])
            score = dets[i, j, 1]
            if score < threshold:
                continue
            x, y = dets[i, j, 2] * width, dets[i, j, 3] * height
            w, h = dets[i, j, 4] * width, dets[i, j, 5] * height
            bbox = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
            depth = dets[i, j, 6]
            dimensions = dets[i, j, 31:34] + cls_mean_size[cls_id]
            x3d, y3d = dets[i, j, 34] * width, dets[i, j, 35] * height
            location = img_to_rect(P2, x3d, y3d, depth).reshape(-1)
            location[1] += dimensions[0] / 2  # KITTI locates boxes at their bottom centre
            heading = dets[i, j, 7:31]
            bin_id = int(np.argmax(heading[:NUM_HEADING_BINS]))
            alpha = class2angle(bin_id, heading[NUM_HEADING_BINS + bin_id], to_label_format=True)
            ry = alpha2ry(P2, alpha, x)
            score = score * dets[i, j, -1]
            preds.append([cls_id, alpha] + bbox + dimensions.tolist() + location.tolist() + [ry, score])
        results.append(preds)
    if img_ids is not None:
        return {img_id: preds for img_id, preds in zip(img_ids, results)}
    return results


def decode(outputs: Mapping[str, Tensor], calibs, img_sizes, topk: int = 50, threshold: float = 0.2,
           cls_mean_size: Optional[np.ndarray] = None, img_ids: Optional[Sequence] = None):
    """Model outputs -> 3D boxes per image (see :func:`decode_detections`), as the official tester."""
    dets = extract_dets_from_outputs(outputs, topk=topk)
    return decode_detections(dets, img_sizes, calibs, cls_mean_size, threshold, img_ids)
