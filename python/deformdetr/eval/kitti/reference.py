"""The KITTI evaluation as plain loops: one image, ground truth and detection at a time, in the
order the devkit's python port (``eval.py``: ``clean_data``, ``compute_statistics_jit``,
``get_thresholds``, ``eval_class``) applies its rules (listed in
:mod:`deformdetr.eval.kitti.rules`), so that a reader can check it against the devkit, and the
vectorized engine (:mod:`deformdetr.eval.kitti.vectorized`) can be checked against it. Slow: for
tests and for reading, not for evaluating a data set.

It shares with :func:`~deformdetr.eval.kitti.api.evaluate_kitti` what is not matching: the
argument and annotation checks, the result and its APs (:func:`~deformdetr.eval.kitti.api.evaluate_with`),
and the rotated BEV / 3D IoU (:func:`~deformdetr.eval.kitti.overlaps.rotated_overlaps`, the native
kernels, held to their own references in :mod:`deformdetr.ops.rotated_iou`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from deformdetr.eval.kitti.api import DEFAULT_CLASSES, KittiEvalResult, evaluate_with
from deformdetr.eval.kitti.overlaps import rotated_boxes, rotated_overlaps
from deformdetr.eval.kitti.rules import (
    MAX_OCCLUSION,
    MAX_TRUNCATION,
    METRICS,
    MIN_HEIGHT,
    NEIGHBOUR,
    NO_DETECTION,
    NUM_SAMPLE_POINTS,
)

__all__ = ["evaluate_kitti_reference"]


def evaluate_kitti_reference(
    gt_annos: Sequence[Mapping],
    dt_annos: Sequence[Mapping],
    classes: Iterable = DEFAULT_CLASSES,
    metrics: Iterable[str] = METRICS,
    recall_positions: int = 40,
) -> KittiEvalResult:
    """:func:`~deformdetr.eval.kitti.api.evaluate_kitti` computed by plain loops: the same
    arguments and the same result (precision curves equal to rounding)."""
    return evaluate_with(_LoopCurves, gt_annos, dt_annos, classes, metrics, recall_positions)


@dataclass
class _Image:
    """One image as one class, difficulty and metric see it."""

    ignored_gt: list  # per ground truth: 0 counts, 1 ignored, -1 another class
    ignored_dt: list  # per detection: the same
    overlaps: np.ndarray  # (detections, ground truths)
    scores: np.ndarray
    gt_alphas: np.ndarray
    dt_alphas: np.ndarray
    dt_boxes: np.ndarray  # 2D boxes of the detections
    dontcare_boxes: list  # 2D boxes of the DontCare regions (2D metric only)


class _LoopCurves:
    def __init__(self, gt_annos: Sequence[dict], dt_annos: Sequence[dict]):
        self.gt_annos, self.dt_annos = gt_annos, dt_annos
        self._overlaps = {}

    def precision_curve(self, metric: str, min_overlap: float, cls: str, difficulty: int, with_aos: bool):
        """eval_class for one class, difficulty, metric and minimum overlap."""
        if metric not in self._overlaps:
            self._overlaps[metric] = [_overlaps(gt, dt, metric) for gt, dt in zip(self.gt_annos, self.dt_annos)]
        images = []
        for gt, dt, overlaps in zip(self.gt_annos, self.dt_annos, self._overlaps[metric]):
            dontcare = [box for name, box in zip(gt["name"], gt["bbox"]) if name == "DontCare"]
            images.append(_Image(
                ignored_gt=_ignored_ground_truths(gt, cls, difficulty),
                ignored_dt=_ignored_detections(dt, cls, difficulty),
                overlaps=overlaps, scores=dt["score"], gt_alphas=gt["alpha"], dt_alphas=dt["alpha"],
                dt_boxes=dt["bbox"], dontcare_boxes=dontcare if metric == "bbox" else [],
            ))
        num_valid_gt = sum(image.ignored_gt.count(0) for image in images)
        scores = [score for image in images for score in _true_positive_scores(image, min_overlap)]
        thresholds = _thresholds(scores, num_valid_gt)

        precision = np.zeros(NUM_SAMPLE_POINTS)
        orientation = np.zeros(NUM_SAMPLE_POINTS)
        for t, threshold in enumerate(thresholds):
            tp = fp = 0
            similarity = 0.0
            for image in images:
                image_tp, image_fp, image_similarity = _counts_at(image, min_overlap, threshold)
                tp, fp, similarity = tp + image_tp, fp + image_fp, similarity + image_similarity
            precision[t] = tp / (tp + fp) if tp + fp else math.nan
            if with_aos:
                orientation[t] = similarity / (tp + fp) if tp + fp else math.nan
        for t in range(len(thresholds)):  # monotone from the right
            precision[t] = np.max(precision[t:])
            orientation[t] = np.max(orientation[t:])
        return precision, orientation


def _ignored_ground_truths(gt: dict, cls: str, difficulty: int) -> list:
    """clean_data for the ground truths of one image."""
    flags = []
    for i, name in enumerate(gt["name"]):
        name = name.lower()
        height = gt["bbox"][i][3] - gt["bbox"][i][1]
        too_hard = (gt["occluded"][i] > MAX_OCCLUSION[difficulty] or gt["truncated"][i] > MAX_TRUNCATION[difficulty]
                    or height <= MIN_HEIGHT[difficulty])
        if name == cls.lower() and not too_hard:
            flags.append(0)
        elif name == cls.lower() or name == NEIGHBOUR.get(cls.lower()):
            flags.append(1)
        else:
            flags.append(-1)
    return flags


def _ignored_detections(dt: dict, cls: str, difficulty: int) -> list:
    """clean_data for the detections of one image: a short detection is ignored whatever its class."""
    flags = []
    for i, name in enumerate(dt["name"]):
        if abs(dt["bbox"][i][3] - dt["bbox"][i][1]) < MIN_HEIGHT[difficulty]:
            flags.append(1)
        elif name.lower() == cls.lower():
            flags.append(0)
        else:
            flags.append(-1)
    return flags


def _overlaps(gt: dict, dt: dict, metric: str) -> np.ndarray:
    """(detections, ground truths) overlaps of one image."""
    out = np.zeros((len(dt["name"]), len(gt["name"])))
    if metric == "bbox":
        for j, box in enumerate(dt["bbox"]):
            for i, query in enumerate(gt["bbox"]):
                out[j, i] = _box_overlap(box, query, over_union=True)
    elif out.size:
        boxes = [rotated_boxes(a["location"], a["dimensions"], a["rotation_y"], metric) for a in (dt, gt)]
        out = rotated_overlaps(boxes[0], boxes[1], metric)
    return out


def _box_overlap(box, query, over_union: bool) -> float:
    """The devkit's 2D overlap: the intersection over the union, or over the area of ``box``;
    0 unless the boxes overlap in both directions."""
    iw = min(box[2], query[2]) - max(box[0], query[0])
    ih = min(box[3], query[3]) - max(box[1], query[1])
    if not (iw > 0 and ih > 0):
        return 0.0
    area = (box[2] - box[0]) * (box[3] - box[1])
    inter = iw * ih
    if over_union:
        return inter / (area + (query[2] - query[0]) * (query[3] - query[1]) - inter)
    return inter / area


def _true_positive_scores(image: _Image, min_overlap: float) -> list:
    """compute_statistics_jit without false positives: each ground truth, in order, takes its
    highest-scoring free candidate (overlap above the minimum); the scores of the counted pairs."""
    assigned = [False] * len(image.ignored_dt)
    scores = []
    for i, flag_gt in enumerate(image.ignored_gt):
        if flag_gt == -1:
            continue
        pick, best_score = None, NO_DETECTION
        for j, flag_dt in enumerate(image.ignored_dt):
            if flag_dt == -1 or assigned[j]:
                continue
            if image.overlaps[j, i] > min_overlap and image.scores[j] > best_score:
                pick, best_score = j, image.scores[j]
        if pick is None:
            continue
        assigned[pick] = True
        if flag_gt == 0 and image.ignored_dt[pick] == 0:
            scores.append(image.scores[pick])
    return scores


def _counts_at(image: _Image, min_overlap: float, threshold: float) -> tuple:
    """compute_statistics_jit at a score threshold: (true positives, false positives, summed
    orientation similarity of the true positives)."""
    n = len(image.ignored_dt)
    available = [image.ignored_dt[j] != -1 and image.scores[j] >= threshold for j in range(n)]
    assigned = [False] * n
    tp, similarity = 0, 0.0
    for i, flag_gt in enumerate(image.ignored_gt):
        if flag_gt == -1:
            continue
        # The highest-overlap counted candidate, else the first ignored one.
        pick, best_overlap, pick_is_ignored = None, 0.0, False
        for j in range(n):
            overlap = image.overlaps[j, i]
            if not available[j] or assigned[j] or not overlap > min_overlap:
                continue
            if image.ignored_dt[j] == 0 and (overlap > best_overlap or pick_is_ignored):
                pick, best_overlap, pick_is_ignored = j, overlap, False
            elif image.ignored_dt[j] == 1 and pick is None:
                pick, pick_is_ignored = j, True
        if pick is None:
            continue
        assigned[pick] = True
        if flag_gt == 0 and image.ignored_dt[pick] == 0:
            tp += 1
            similarity += (1.0 + math.cos(image.gt_alphas[i] - image.dt_alphas[pick])) / 2.0
    fp = sum(1 for j in range(n) if available[j] and image.ignored_dt[j] == 0 and not assigned[j])
    # An unmatched counted detection inside a DontCare region is no false positive (2D only).
    for region in image.dontcare_boxes:
        for j in range(n):
            if not available[j] or image.ignored_dt[j] != 0 or assigned[j]:
                continue
            if _box_overlap(image.dt_boxes[j], region, over_union=False) > min_overlap:
                assigned[j] = True
                fp -= 1
    return tp, fp, similarity


def _thresholds(scores: list, num_gt: int) -> list:
    """get_thresholds: walk the true positives' scores from the highest and keep one each time
    the recall reaches the next of 41 evenly spaced sample points (and always the last)."""
    scores = sorted(scores, reverse=True)
    kept, recall = [], 0.0
    for i, score in enumerate(scores):
        last = i == len(scores) - 1
        left = (i + 1) / num_gt
        right = left if last else (i + 2) / num_gt
        if not last and right - recall < recall - left:
            continue
        kept.append(score)
        recall += 1 / (NUM_SAMPLE_POINTS - 1.0)
    return kept
