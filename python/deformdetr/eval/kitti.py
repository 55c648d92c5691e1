"""KITTI 3D object detection evaluation: AP for 2D boxes, bird's-eye view and 3D, with 40 (R40)
or 11 (R11) recall positions, and AOS, with the semantics of the devkit's python port used by
MonoDETR, OpenPCDet and second.pytorch (``kitti_object_eval_python/eval.py``,
``get_official_eval_result``).

What the devkit does, and this module does the same:

- Difficulty (easy / moderate / hard): a ground-truth object counts when its 2D box is taller
  than 40 / 25 / 25 pixels, its occlusion level is at most 0 / 1 / 2 and its truncation at most
  0.15 / 0.3 / 0.5. Other objects of the class are "ignored" (a detection matched to them is
  neither a true nor a false positive), and so are neighbouring classes (Van for Car,
  Person_sitting for Pedestrian). Detections lower than the minimum height are ignored too.
- DontCare regions: for the 2D metric only, an unmatched detection covering a DontCare box
  (intersection over the detection's area above the minimum overlap) is not a false positive.
- Matching, per image and ground truth in file order: the candidate detections are those with an
  overlap above the class's minimum overlap (2D IoU in pixels, rotated BEV IoU, 3D IoU). To
  collect score thresholds, each ground truth takes its highest-scoring candidate. To count
  TP/FP/FN at a threshold, each takes its highest-overlap candidate among the non-ignored
  detections scoring at least the threshold, else the first ignored candidate.
- Thresholds: up to 41 scores of true positives chosen at recall steps of 1/40; precision at
  each, made monotone from the right; AP_R40 averages positions 1..40, AP_R11 positions
  0, 4, ..., 40; both times 100.
- Minimum overlaps (``MIN_OVERLAPS``): "strict" 0.7 / 0.5 / 0.5 (Car / Pedestrian / Cyclist) for
  every metric, the numbers KITTI ranks by, and "loose" 0.7 / 0.5 / 0.5 for 2D and
  0.5 / 0.25 / 0.25 for BEV and 3D.

The computation differs from the devkit's loops, not in its results: the IoUs run in the native
core (float64; the devkit computes BEV and 3D IoU in float32, so a pair within ~1e-7 of a
minimum overlap can fall on the other side), and the per-threshold matching runs vectorized:
each image's matching only involves detections that overlap some ground truth above the minimum
overlap, and it only changes where the score threshold crosses one of their scores, so it is
computed once per such score for each connected group of overlapping boxes.

Annotations are per-image dicts in the devkit format: ``name`` (N,), ``truncated`` (N,),
``occluded`` (N,), ``alpha`` (N,), ``bbox`` (N, 4) pixels (x1, y1, x2, y2), ``dimensions``
(N, 3) as (l, h, w) (the label files store h, w, l; :func:`read_kitti_label_file` reorders),
``location`` (N, 3) camera coordinates of the bottom centre, ``rotation_y`` (N,), and for
detections ``score`` (N,).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from deformdetr.data.kitti import numbered_lines, parse_label_line

__all__ = [
    "CLASS_NAMES",
    "DIFFICULTIES",
    "METRICS",
    "MIN_OVERLAPS",
    "KittiEvalResult",
    "evaluate_kitti",
    "empty_annotation",
    "read_kitti_label_file",
    "read_kitti_label_dir",
    "read_kitti_result_dir",
    "write_kitti_result_file",
]

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "Truck")
DIFFICULTIES = ("easy", "moderate", "hard")
METRICS = ("bbox", "bev", "3d")

MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)

# Minimum overlaps, [setting][metric][class], as get_official_eval_result's two tables.
MIN_OVERLAPS = {
    "strict": {
        metric: dict(zip(CLASS_NAMES, (0.7, 0.5, 0.5, 0.7, 0.5, 0.7))) for metric in METRICS
    },
    "loose": {
        "bbox": dict(zip(CLASS_NAMES, (0.7, 0.5, 0.5, 0.7, 0.5, 0.5))),
        "bev": dict(zip(CLASS_NAMES, (0.5, 0.25, 0.25, 0.5, 0.25, 0.5))),
        "3d": dict(zip(CLASS_NAMES, (0.5, 0.25, 0.25, 0.5, 0.25, 0.5))),
    },
}

# The neighbouring class whose objects are ignored rather than missed.
_NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}

_NUM_SAMPLE_POINTS = 41
_NO_DETECTION = -10000000.0


# ---- Results.


@dataclass
class KittiEvalResult:
    """APs in percent.

    ``ap[class][metric][difficulty]`` at the strict minimum overlaps (0.7 / 0.5 / 0.5),
    ``ap_loose`` at the loose ones, with ``recall_positions`` (40 or 11) positions; ``metric`` is
    one of the requested metrics plus ``"aos"`` when the 2D metric was asked for and the
    detections carry alphas (the devkit's rule: the first detection's alpha is not -10).
    ``precision[setting][metric]`` holds the (classes, 3, 41) interpolated precision curves.
    ``str(result)`` is the printable summary."""

    ap: dict
    ap_loose: dict
    recall_positions: int
    classes: tuple
    precision: dict = field(repr=False)
    summary: str = field(repr=False)

    def __str__(self) -> str:
        return self.summary

    def ap_at(self, recall_positions: int, setting: str = "strict") -> dict:
        """``ap[class][metric][difficulty]`` for 11 or 40 recall positions."""
        return {
            cls: {
                metric: {
                    diff: _average_precision(curves[c, d], recall_positions)
                    for d, diff in enumerate(DIFFICULTIES)
                }
                for metric, curves in self.precision[setting].items()
            }
            for c, cls in enumerate(self.classes)
        }

    def to_flat_dict(self) -> dict:
        """Strict-overlap APs under MonoDETR's keys: ``Car_3d_moderate_R40``, ``Car_image_easy``
        (2D, R11), ``Car_aos_hard_R40``..."""
        flat = {}
        for positions, suffix in ((11, ""), (40, "_R40")):
            table = self.ap_at(positions)
            for cls, metrics in table.items():
                for metric, values in metrics.items():
                    key = "image" if metric == "bbox" else metric
                    for diff, value in values.items():
                        flat[f"{cls}_{key}_{diff}{suffix}"] = value
        return flat


# ---- Entry point.


def evaluate_kitti(
    gt_annos: Sequence[Mapping],
    dt_annos: Sequence[Mapping],
    classes: Iterable = ("Car", "Pedestrian", "Cyclist"),
    metrics: Iterable[str] = METRICS,
    recall_positions: int = 40,
) -> KittiEvalResult:
    """The official KITTI evaluation of detections ``dt_annos`` against ``gt_annos`` (one
    annotation dict per image, in the same order; see the module docstring).

    ``classes``: names (case-insensitive) or the devkit's class indices (0 Car, 1 Pedestrian,
    2 Cyclist, 3 Van, 4 Person_sitting, 5 Truck). ``metrics``: a subset of ("bbox", "bev", "3d").
    ``recall_positions``: 40 (AP_R40, what MonoDETR and the KITTI benchmark report) or 11."""
    if recall_positions not in (11, 40):
        raise ValueError(f"recall_positions must be 40 or 11, got {recall_positions!r}")
    if len(gt_annos) != len(dt_annos):
        raise ValueError(
            f"gt_annos and dt_annos must have one entry per image each, got {len(gt_annos)} and "
            f"{len(dt_annos)}"
        )
    classes = tuple(_class_name(c) for c in (classes if not isinstance(classes, (str, int)) else [classes]))
    metrics = tuple(metrics) if not isinstance(metrics, str) else (metrics,)
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metrics must be drawn from {METRICS}, got {metric!r}")

    gt = _Flat(gt_annos, "gt_annos", with_score=False)
    dt = _Flat(dt_annos, "dt_annos", with_score=True)
    compute_aos = "bbox" in metrics and _alphas_valid(dt_annos)
    pairs = _Pairs(gt, dt)

    cleaned = {
        (cls, d): _clean(gt, dt, cls, d) for cls in classes for d in range(len(DIFFICULTIES))
    }
    precision = {setting: {} for setting in MIN_OVERLAPS}
    for metric in metrics:
        dontcare_overlap = pairs.dontcare_overlap() if metric == "bbox" else None
        for setting, table in MIN_OVERLAPS.items():
            prec = np.zeros((len(classes), len(DIFFICULTIES), _NUM_SAMPLE_POINTS))
            orient = np.zeros_like(prec)
            for c, cls in enumerate(classes):
                min_overlap = table[metric][cls]
                for d in range(len(DIFFICULTIES)):
                    ignored_gt, ignored_dt, num_valid_gt = cleaned[cls, d]
                    prec[c, d], orient[c, d] = _precision_curve(
                        pairs, metric, gt, dt, ignored_gt, ignored_dt, num_valid_gt,
                        min_overlap, dontcare_overlap, compute_aos and metric == "bbox",
                    )
            precision[setting][metric] = prec
            if compute_aos and metric == "bbox":
                precision[setting]["aos"] = orient

    result = KittiEvalResult(
        ap={}, ap_loose={}, recall_positions=recall_positions, classes=classes,
        precision=precision, summary="",
    )
    result.ap = result.ap_at(recall_positions, "strict")
    result.ap_loose = result.ap_at(recall_positions, "loose")
    result.summary = _summary(result, metrics)
    return result


def _class_name(cls) -> str:
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= cls < len(CLASS_NAMES):
            raise ValueError(f"class index must be in [0, {len(CLASS_NAMES)}), got {cls}")
        return CLASS_NAMES[cls]
    for name in CLASS_NAMES:
        if isinstance(cls, str) and cls.lower() == name.lower():
            return name
    raise ValueError(f"classes must be drawn from {CLASS_NAMES} (or their indices), got {cls!r}")


def _alphas_valid(dt_annos) -> bool:
    """The devkit computes AOS unless the first detection of the first non-empty image has
    alpha == -10 (the "no orientation" marker)."""
    for anno in dt_annos:
        alpha = np.asarray(anno["alpha"]).reshape(-1)
        if alpha.shape[0] != 0:
            return bool(alpha[0] != -10)
    return False


# ---- Flattened annotations.


class _Flat:
    """All images' objects concatenated, with per-image offsets."""

    def __init__(self, annos: Sequence[Mapping], what: str, with_score: bool):
        keys = ["name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y"]
        if with_score:
            keys.append("score")
        widths = {"bbox": 4, "dimensions": 3, "location": 3}
        columns = {k: [] for k in keys}
        counts = []
        for i, anno in enumerate(annos):
            missing = [k for k in keys if k not in anno]
            if missing:
                raise KeyError(f"{what}[{i}] lacks {missing}; an annotation needs {keys}")
            n = len(anno["name"])
            counts.append(n)
            for k in keys:
                value = np.asarray(anno[k]) if k == "name" else np.asarray(anno[k], dtype=np.float64)
                if k in widths:
                    value = value.reshape(-1, widths[k]) if value.size or n == 0 else value
                    if value.shape != (n, widths[k]):
                        raise ValueError(
                            f"{what}[{i}]['{k}'] must have shape ({n}, {widths[k]}), got {value.shape}"
                        )
                else:
                    value = value.reshape(-1)
                    if value.shape != (n,):
                        raise ValueError(f"{what}[{i}]['{k}'] must have shape ({n},), got {value.shape}")
                columns[k].append(value)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self.image = np.repeat(np.arange(len(counts)), self.counts)
        names = [str(x) for v in columns["name"] for x in v.tolist()]
        self.name = np.asarray(names, dtype=object)
        # Lower-case names as small integer codes (string comparisons of object arrays are slow).
        lower = [x.lower() for x in names]
        self.name_codes = {}
        codes = [self.name_codes.setdefault(x, len(self.name_codes)) for x in lower]
        self.name_code = np.asarray(codes, dtype=np.int64)

        for k in keys[1:]:
            width = widths.get(k)
            empty = np.zeros((0, width) if width else (0,))
            setattr(self, k, np.concatenate(columns[k], 0) if columns[k] else empty)
        self.height = self.bbox[:, 3] - self.bbox[:, 1]

    def is_named(self, lower_name: str) -> np.ndarray:
        """Mask of the objects whose lower-cased name is `lower_name`."""
        code = self.name_codes.get(lower_name)
        return self.name_code == code if code is not None else np.zeros(self.total, dtype=bool)


def _clean(gt: _Flat, dt: _Flat, cls: str, difficulty: int):
    """The devkit's clean_data for every image at once: ignored_gt / ignored_dt in
    {0: counts, 1: ignored, -1: another class} and the number of counted ground truths."""
    cls_lower = cls.lower()
    same = gt.is_named(cls_lower)
    neighbour = (
        gt.is_named(_NEIGHBOUR[cls_lower]) if cls_lower in _NEIGHBOUR else np.zeros(gt.total, bool)
    )
    too_hard = (
        (gt.occluded > MAX_OCCLUSION[difficulty])
        | (gt.truncated > MAX_TRUNCATION[difficulty])
        | (gt.height <= MIN_HEIGHT[difficulty])
    )
    ignored_gt = np.full(gt.total, -1, dtype=np.int64)
    ignored_gt[neighbour | (same & too_hard)] = 1
    ignored_gt[same & ~too_hard] = 0
    ignored_dt = np.where(dt.is_named(cls_lower), 0, -1).astype(np.int64)
    ignored_dt[np.abs(dt.height) < MIN_HEIGHT[difficulty]] = 1
    return ignored_gt, ignored_dt, int((ignored_gt == 0).sum())


# ---- Overlaps of every detection with every ground truth of its image.


class _Pairs:
    """Every (detection, ground truth) pair of each image, detection-major within an image."""

    def __init__(self, gt: _Flat, dt: _Flat):
        self.gt, self.dt = gt, dt
        per_image = dt.counts * gt.counts
        total = int(per_image.sum())
        image = np.repeat(np.arange(len(per_image)), per_image)
        offset = np.arange(total) - np.repeat(np.cumsum(per_image) - per_image, per_image)
        g = gt.counts[image]
        self.det = dt.starts[image] + offset // np.maximum(g, 1)
        self.gt_index = gt.starts[image] + offset % np.maximum(g, 1)
        self._cache = {}

    def above(self, metric: str, min_overlap: float) -> np.ndarray:
        """Indices of the pairs whose overlap exceeds min_overlap."""
        key = ("above", metric, min_overlap)
        if key not in self._cache:
            self._cache[key] = np.flatnonzero(self.overlaps(metric) > min_overlap)
        return self._cache[key]

    def overlaps(self, metric: str) -> np.ndarray:
        if metric not in self._cache:
            if metric == "bbox":
                self._cache[metric] = _image_box_overlap(
                    self.dt.bbox[self.det], self.gt.bbox[self.gt_index], criterion=-1
                )
            else:
                self._cache[metric] = self._rotated(metric)
        return self._cache[metric]

    def _rotated(self, metric: str) -> np.ndarray:
        from deformdetr.ops.rotated_iou import bev_box_iou, box3d_iou

        gt, dt = self.gt, self.dt
        if metric == "bev":
            def boxes(flat):
                return np.concatenate(
                    [flat.location[:, [0, 2]], flat.dimensions[:, [0, 2]], flat.rotation_y[:, None]], 1
                )
            kernel = bev_box_iou
        else:
            def boxes(flat):
                return np.concatenate([flat.location, flat.dimensions, flat.rotation_y[:, None]], 1)
            kernel = box3d_iou
        gt_boxes, dt_boxes = boxes(gt), boxes(dt)
        # Boxes with a negative (or NaN) dimension, such as DontCare's -1 -1 -1, overlap nothing.
        dims = [2, 3] if metric == "bev" else [3, 4, 5]
        for b in (gt_boxes, dt_boxes):
            bad = ~(b[:, dims] >= 0).all(1)
            b[np.ix_(bad, dims)] = 0.0
        out = np.empty(len(self.det))
        position = 0
        for i in range(len(gt.counts)):
            n, m = int(dt.counts[i]), int(gt.counts[i])
            if n and m:
                block = kernel(
                    dt_boxes[dt.starts[i] : dt.starts[i + 1]], gt_boxes[gt.starts[i] : gt.starts[i + 1]]
                )
                out[position : position + n * m] = block.reshape(-1)
            position += n * m
        out[~np.isfinite(out)] = 0.0  # two boxes of zero area: 0 / 0
        return out

    def dontcare_overlap(self) -> np.ndarray:
        """Per detection: the largest overlap of its 2D box with a DontCare box of its image,
        measured as intersection over the detection's area (0 when there is none)."""
        if "dontcare" not in self._cache:
            is_dc = self.gt.name[self.gt_index] == "DontCare"
            best = np.zeros(self.dt.total)
            if is_dc.any():
                det, dc = self.det[is_dc], self.gt_index[is_dc]
                value = _image_box_overlap(self.dt.bbox[det], self.gt.bbox[dc], criterion=0)
                np.maximum.at(best, det, value)
            self._cache["dontcare"] = best
        return self._cache["dontcare"]


def _image_box_overlap(boxes: np.ndarray, query: np.ndarray, criterion: int) -> np.ndarray:
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


# ---- Matching and precision.


def _precision_curve(pairs, metric, gt, dt, ignored_gt, ignored_dt, num_valid_gt, min_overlap,
                     dontcare_overlap, compute_aos):
    """The 41-point interpolated precision (and orientation similarity) curve of one class,
    difficulty and minimum overlap."""
    overlaps = pairs.overlaps(metric)
    above = pairs.above(metric, min_overlap)
    candidate = above[
        (ignored_dt[pairs.det[above]] != -1) & (ignored_gt[pairs.gt_index[above]] != -1)
    ]
    groups = _Groups(pairs, candidate, overlaps, gt, dt, ignored_gt, ignored_dt, dontcare_overlap,
                     min_overlap)

    tp_scores = groups.threshold_scores()
    thresholds = _get_thresholds(tp_scores, num_valid_gt)

    # Per threshold: totals over every detection, then the matched groups' corrections.
    counted_dt = ignored_dt == 0
    scores = dt.score
    dc_covered = (
        dontcare_overlap > min_overlap if dontcare_overlap is not None else np.zeros(dt.total, bool)
    )
    sorted_counted = np.sort(scores[counted_dt])
    sorted_dc = np.sort(scores[counted_dt & dc_covered])
    level_scores, deltas = groups.level_deltas(compute_aos)  # sorted by score, ascending
    cumulative = np.cumsum(deltas[::-1], axis=0)[::-1]  # sums over levels scoring >= each level
    cumulative = np.concatenate([cumulative, np.zeros((1, deltas.shape[1]))], 0)

    count = len(thresholds)
    at_least = len(sorted_counted) - np.searchsorted(sorted_counted, thresholds, side="left")
    dc_at_least = len(sorted_dc) - np.searchsorted(sorted_dc, thresholds, side="left")
    # (the matched counted ground truths would give the recall: num_valid_gt minus them are missed)
    tp, _matched_gt, assigned, assigned_dc, similarity = cumulative[
        np.searchsorted(level_scores, thresholds, side="left")
    ].T
    fp = (at_least - assigned) - (dc_at_least - assigned_dc)

    precision = np.zeros(_NUM_SAMPLE_POINTS)
    orientation = np.zeros(_NUM_SAMPLE_POINTS)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision[:count] = tp / (tp + fp)
        if compute_aos:
            orientation[:count] = similarity / (tp + fp)
    for i in range(count):
        precision[i] = np.max(precision[i:])
        if compute_aos:
            orientation[i] = np.max(orientation[i:])
    return precision, orientation


def _get_thresholds(scores: np.ndarray, num_gt: int) -> np.ndarray:
    """The devkit's get_thresholds: walk the true positives' scores from the highest and keep one
    each time the recall reaches the next of 41 evenly spaced sample points."""
    n = len(scores)
    if n == 0:
        return np.zeros(0)
    scores = np.sort(scores)[::-1]
    index = np.arange(n)
    left = (index + 1) / num_gt
    right = np.where(index < n - 1, (index + 2) / num_gt, left)
    kept = []
    current = 0.0
    start = 0
    while start < n:
        keep = ~((right[start:] - current) < (current - left[start:]))
        keep[-1] = True  # the last score is always kept
        i = start + int(np.argmax(keep))
        kept.append(scores[i])
        current += 1 / (_NUM_SAMPLE_POINTS - 1.0)
        start = i + 1
    return np.asarray(kept)


def _average_precision(curve: np.ndarray, recall_positions: int) -> float:
    total = 0.0
    if recall_positions == 40:
        for i in range(1, curve.shape[-1]):
            total = total + curve[i]
        return float(total / 40 * 100)
    for i in range(0, curve.shape[-1], 4):
        total = total + curve[i]
    return float(total / 11 * 100)


def _next_pow2(x: np.ndarray) -> np.ndarray:
    return (1 << np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64)).astype(np.int64)


class _Groups:
    """Connected groups of detections and ground truths linked by candidate pairs (overlap above
    the minimum). Matching decisions never cross groups, so each group is matched on its own,
    batched with groups of similar size into padded arrays."""

    def __init__(self, pairs, candidate, overlaps, gt, dt, ignored_gt, ignored_dt, dontcare_overlap,
                 min_overlap):
        det = pairs.det[candidate]  # candidate: indices of the candidate pairs
        gti = pairs.gt_index[candidate]
        ov = overlaps[candidate]
        self.buckets = []
        if len(det) == 0:
            return
        # Graph nodes: the candidate detections and ground truths, renumbered.
        dets, det_local = np.unique(det, return_inverse=True)
        gts, gt_local = np.unique(gti, return_inverse=True)
        nd, ng = len(dets), len(gts)
        label = _connected_components(det_local, nd + gt_local, nd + ng)
        det_group, gt_group = label[:nd], label[nd:]
        num_groups = int(label.max()) + 1
        # Rank of each node inside its group, in original order (dets and gts are sorted).
        det_rank = _rank_within(det_group)
        gt_rank = _rank_within(gt_group)
        det_count = np.bincount(det_group, minlength=num_groups)
        gt_count = np.bincount(gt_group, minlength=num_groups)
        shape_key = _next_pow2(gt_count) * (1 << 20) + _next_pow2(det_count)
        dc = (
            dontcare_overlap[dets] > min_overlap if dontcare_overlap is not None else np.zeros(nd, bool)
        )
        for key in np.unique(shape_key):
            members = np.flatnonzero(shape_key == key)
            gp, dp = int(key >> 20), int(key & ((1 << 20) - 1))
            slot = np.full(num_groups, -1, dtype=np.int64)
            slot[members] = np.arange(len(members))
            b = _Bucket(len(members), gp, dp)
            in_bucket_d = slot[det_group] >= 0
            s, r = slot[det_group][in_bucket_d], det_rank[in_bucket_d]
            flat_d = dets[in_bucket_d]
            b.score[s, r] = dt.score[flat_d]
            b.ignored_dt[s, r] = ignored_dt[flat_d]
            b.dontcare[s, r] = dc[in_bucket_d]
            b.alpha_dt[s, r] = dt.alpha[flat_d]
            b.real_dt[s, r] = True
            in_bucket_g = slot[gt_group] >= 0
            s, r = slot[gt_group][in_bucket_g], gt_rank[in_bucket_g]
            flat_g = gts[in_bucket_g]
            b.ignored_gt[s, r] = ignored_gt[flat_g]
            b.alpha_gt[s, r] = gt.alpha[flat_g]
            pair_group = det_group[det_local]
            in_bucket_p = slot[pair_group] >= 0
            ps = slot[pair_group][in_bucket_p]
            b.overlap[ps, gt_rank[gt_local][in_bucket_p], det_rank[det_local][in_bucket_p]] = ov[in_bucket_p]
            self.buckets.append(b)

    def threshold_scores(self) -> np.ndarray:
        """Scores of the true positives when every ground truth takes its highest-scoring
        candidate (the devkit's compute_statistics_jit with compute_fp=False)."""
        found = [b.match_by_score() for b in self.buckets]
        return np.concatenate(found) if found else np.zeros(0)

    def level_deltas(self, compute_aos: bool):
        """For each group and each of its detections' scores s (a "level": the detections
        scoring >= s are available), how the counts (tp, matched counted gts, matched counted
        detections, of which DontCare-covered, orientation similarity) change from the next
        higher level. Sorted by level score, ascending."""
        scores, deltas = [], []
        for b in self.buckets:
            s, d = b.match_by_overlap_per_level(compute_aos)
            scores.append(s)
            deltas.append(d)
        if not scores:
            return np.zeros(0), np.zeros((0, 5))
        scores = np.concatenate(scores)
        deltas = np.concatenate(deltas, 0)
        order = np.argsort(scores, kind="stable")
        return scores[order], deltas[order]


def _connected_components(a: np.ndarray, b: np.ndarray, count: int) -> np.ndarray:
    """Component labels 0..k-1 of the nodes 0..count-1 of the undirected graph with edges
    (a[i], b[i]): label propagation (each node takes the smallest label among its neighbours)
    with pointer jumping; the groups here are small, so it converges in a few rounds."""
    label = np.arange(count)
    while True:
        smallest = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, smallest)
        np.minimum.at(new, b, smallest)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1].reshape(-1)


def _rank_within(group: np.ndarray) -> np.ndarray:
    """Position of each element among the elements of its group, in array order."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - run_start
    return rank


class _Bucket:
    """`count` groups padded to `gp` ground truths and `dp` detections."""

    def __init__(self, count: int, gp: int, dp: int):
        self.count, self.gp, self.dp = count, gp, dp
        self.overlap = np.full((count, gp, dp), -np.inf)  # -inf: not a candidate pair
        self.score = np.full((count, dp), -np.inf)
        self.ignored_dt = np.full((count, dp), -1, dtype=np.int64)
        self.dontcare = np.zeros((count, dp), dtype=bool)
        self.alpha_dt = np.zeros((count, dp))
        self.real_dt = np.zeros((count, dp), dtype=bool)
        self.ignored_gt = np.full((count, gp), -1, dtype=np.int64)
        self.alpha_gt = np.zeros((count, gp))

    def match_by_score(self) -> np.ndarray:
        rows = np.arange(self.count)
        assigned = np.zeros((self.count, self.dp), dtype=bool)
        found = []
        for g in range(self.gp):
            candidate = np.isfinite(self.overlap[:, g, :]) & ~assigned
            value = np.where(candidate, self.score, -np.inf)
            pick = np.argmax(value, axis=1)
            has = value[rows, pick] > _NO_DETECTION
            ig_gt = self.ignored_gt[:, g]
            has &= ig_gt != -1
            assigned[rows[has], pick[has]] = True
            tp = has & (ig_gt == 0) & (self.ignored_dt[rows, pick] == 0)
            found.append(self.score[rows[tp], pick[tp]])
        return np.concatenate(found)

    def match_by_overlap_per_level(self, compute_aos: bool):
        # One row per (group, level): level k makes the detections scoring >= the group's k-th
        # highest detection score available.
        level_score = -np.sort(-self.score, axis=1)  # (count, dp), descending, -inf padding
        rows_group = np.repeat(np.arange(self.count), self.dp)
        level = level_score.reshape(-1)
        real = np.isfinite(level)
        rows_group, level = rows_group[real], level[real]
        nrows = len(level)
        rows = np.arange(nrows)
        available = self.score[rows_group] >= level[:, None]
        ignored_dt = self.ignored_dt[rows_group]
        counted_dt = ignored_dt == 0
        ignored_det = ignored_dt == 1
        assigned = np.zeros((nrows, self.dp), dtype=bool)
        stats = np.zeros((nrows, 5))  # tp, matched counted gts, matched counted dts, of them DC, sim
        for g in range(self.gp):
            ov = self.overlap[rows_group, g, :]
            candidate = np.isfinite(ov) & available & ~assigned
            valid = candidate & counted_dt
            any_valid = valid.any(1)
            best_valid = np.argmax(np.where(valid, ov, -np.inf), axis=1)
            ignored_candidate = candidate & ignored_det
            any_ignored = ignored_candidate.any(1)
            first_ignored = np.argmax(ignored_candidate, axis=1)
            pick = np.where(any_valid, best_valid, first_ignored)
            ig_gt = self.ignored_gt[rows_group, g]
            has = (any_valid | any_ignored) & (ig_gt != -1)
            assigned[rows[has], pick[has]] = True
            pick_counted = has & counted_dt[rows, pick]
            tp = pick_counted & (ig_gt == 0)
            stats[:, 0] += tp
            stats[:, 1] += has & (ig_gt == 0)
            stats[:, 2] += pick_counted
            stats[:, 3] += pick_counted & self.dontcare[rows_group, pick]
            if compute_aos:
                delta = self.alpha_gt[rows_group, g] - self.alpha_dt[rows_group, pick]
                stats[:, 4] += np.where(tp, (1.0 + np.cos(delta)) / 2.0, 0.0)
        # Differences between consecutive levels of a group (the first level's from zero).
        previous = np.zeros_like(stats)
        same_group = np.r_[False, rows_group[1:] == rows_group[:-1]]
        previous[same_group] = stats[np.flatnonzero(same_group) - 1]
        return level, stats - previous


# ---- Summary.


def _summary(result: KittiEvalResult, metrics) -> str:
    out = io.StringIO()
    label = "AP_R40" if result.recall_positions == 40 else "AP"
    shown = [m for m in ("bbox", "bev", "3d", "aos") if m in result.precision["strict"]]
    names = {"bbox": "bbox", "bev": "bev ", "3d": "3d  ", "aos": "aos "}
    for cls in result.classes:
        for setting, table in (("strict", result.ap), ("loose", result.ap_loose)):
            overlaps = ", ".join(
                f"{MIN_OVERLAPS[setting][m][cls]:.2f}" if m in metrics else "-" for m in METRICS
            )
            print(f"{cls} {label}@{overlaps}:", file=out)
            for metric in shown:
                values = table[cls][metric]
                digits = 2 if metric == "aos" else 4
                text = ", ".join(f"{values[d]:.{digits}f}" for d in DIFFICULTIES)
                print(f"{names[metric]} AP:{text}", file=out)
    return out.getvalue()


# ---- Label files (KITTI label_2 format).


def empty_annotation(with_score: bool = True) -> dict:
    anno = {
        "name": np.zeros(0, dtype="<U10"),
        "truncated": np.zeros(0),
        "occluded": np.zeros(0, dtype=np.int64),
        "alpha": np.zeros(0),
        "bbox": np.zeros((0, 4)),
        "dimensions": np.zeros((0, 3)),
        "location": np.zeros((0, 3)),
        "rotation_y": np.zeros(0),
    }
    if with_score:
        anno["score"] = np.zeros(0)
    return anno


def read_kitti_label_file(path) -> dict:
    """One label_2 file as a devkit annotation dict: 15 fields per line
    (type, truncated, occluded, alpha, bbox x1 y1 x2 y2, dimensions h w l, location x y z,
    rotation_y) or 16 with a score. ``dimensions`` come back as (l, h, w), the devkit's order;
    ``score`` is 0 when the file has none (as the devkit)."""
    rows = []
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            rows.append(parse_label_line(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
    anno = empty_annotation()
    if not rows:
        return anno
    values = np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 14)
    anno["name"] = np.array([r[0] for r in rows])
    anno["truncated"] = values[:, 0]
    anno["occluded"] = values[:, 1].astype(np.int64)
    anno["alpha"] = values[:, 2]
    anno["bbox"] = values[:, 3:7]
    anno["dimensions"] = values[:, 7:10][:, [2, 0, 1]]  # h w l -> l h w
    anno["location"] = values[:, 10:13]
    anno["rotation_y"] = values[:, 13]
    # As the devkit: the first line decides whether the file carries scores (else all 0).
    if rows[0][2] is not None:
        anno["score"] = np.array([r[2] for r in rows], dtype=np.float64)
    else:
        anno["score"] = np.zeros(len(rows))
    return anno


def _label_path(directory, image_id) -> Path:
    name = f"{int(image_id):06d}.txt" if not isinstance(image_id, str) else (
        image_id if image_id.endswith(".txt") else f"{image_id}.txt"
    )
    return Path(directory) / name


def read_kitti_label_dir(directory, ids: Iterable) -> list:
    """Ground-truth label files ``{id:06d}.txt`` of ``ids`` (ints or name stems), in order."""
    return [read_kitti_label_file(_label_path(directory, i)) for i in ids]


def read_kitti_result_dir(directory, ids: Iterable, missing_ok: bool = False) -> list:
    """Result files ``{id:06d}.txt`` of ``ids`` (ints or name stems), in order. A missing file is
    an error unless ``missing_ok`` (then: no detections for that image)."""
    annos = []
    for i in ids:
        path = _label_path(directory, i)
        if missing_ok and not path.exists():
            annos.append(empty_annotation())
        else:
            annos.append(read_kitti_label_file(path))
    return annos


def write_kitti_result_file(path, objects) -> None:
    """Writes detections in the label_2 format with a score (16 fields per line).

    ``objects``: a devkit annotation dict (``dimensions`` as (l, h, w)), or a list of per-object
    dicts with the same keys holding one object's values. ``truncated``, ``occluded`` and
    ``alpha`` default to 0, 0 and -10 when absent. The file is written atomically."""
    anno = _objects_to_annotation(objects)
    n = len(anno["name"])
    lines = []
    for i in range(n):
        l, h, w = (float(v) for v in anno["dimensions"][i])
        fields = [
            str(anno["name"][i]),
            _fmt(anno["truncated"][i]),
            str(int(anno["occluded"][i])),
            _fmt(anno["alpha"][i]),
            *(_fmt(v) for v in anno["bbox"][i]),
            _fmt(h), _fmt(w), _fmt(l),
            *(_fmt(v) for v in anno["location"][i]),
            _fmt(anno["rotation_y"][i]),
            _fmt(anno["score"][i]),
        ]
        if any(" " in f or not f for f in fields[:1]):
            raise ValueError(f"object {i}: name {fields[0]!r} must be one word")
        lines.append(" ".join(fields))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _fmt(value) -> str:
    return f"{float(value):.8g}"


def _objects_to_annotation(objects) -> dict:
    if isinstance(objects, Mapping):
        anno = dict(objects)
        n = len(anno["name"])
    else:
        objects = list(objects)
        n = len(objects)
        anno = {}
        for key in ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location",
                    "rotation_y", "score"):
            if all(key in o for o in objects):
                anno[key] = [o[key] for o in objects]
    defaults = {"truncated": 0.0, "occluded": 0, "alpha": -10.0}
    for key, value in defaults.items():
        if key not in anno:
            anno[key] = [value] * n
    required = ("name", "bbox", "dimensions", "location", "rotation_y", "score")
    missing = [k for k in required if k not in anno]
    if missing:
        raise KeyError(f"objects lack {missing}")
    out = {"name": list(anno["name"])}
    for key in ("truncated", "occluded", "alpha", "rotation_y", "score"):
        out[key] = np.asarray(anno[key], dtype=np.float64).reshape(n)
    for key, width in (("bbox", 4), ("dimensions", 3), ("location", 3)):
        out[key] = np.asarray(anno[key], dtype=np.float64).reshape(n, width)
    return out
