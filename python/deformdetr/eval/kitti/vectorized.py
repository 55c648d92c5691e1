"""The KITTI evaluation's vectorized engine: the devkit's matching (see
:mod:`deformdetr.eval.kitti.rules`) computed over arrays rather than per image and threshold.

Each image's matching only involves detections that overlap some ground truth above the minimum
overlap, and it only changes where the score threshold crosses one of their scores; so the
objects are flattened over all images, the candidate pairs split into connected groups of
overlapping boxes (matching decisions never cross groups), and each group matched once per
score of its detections, batched with groups of similar size into padded arrays. The totals at
each threshold are then sums over the groups. :mod:`deformdetr.eval.kitti.reference` states the
same rules as plain loops; the tests hold this module to it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from deformdetr.eval.kitti.annotations import FLOAT_KEYS, column_shape
from deformdetr.eval.kitti.overlaps import image_box_overlap, rotated_boxes, rotated_overlaps
from deformdetr.eval.kitti.rules import (
    MAX_OCCLUSION,
    MAX_TRUNCATION,
    MIN_HEIGHT,
    NEIGHBOUR,
    NO_DETECTION,
    NUM_SAMPLE_POINTS,
)

__all__ = ["VectorizedCurves"]


class VectorizedCurves:
    """Precision curves of checked annotations (:func:`~deformdetr.eval.kitti.annotations.checked_annotations`),
    one class, difficulty, metric and minimum overlap at a time; what several curves share (the
    flattened objects, the overlaps, the ignore flags) is computed once."""

    def __init__(self, gt_annos: Sequence[dict], dt_annos: Sequence[dict]):
        self.gt = _Flat(gt_annos)
        self.dt = _Flat(dt_annos)
        self.pairs = _Pairs(self.gt, self.dt)
        self._cleaned = {}

    def precision_curve(self, metric: str, min_overlap: float, cls: str, difficulty: int, with_aos: bool):
        """The 41-point interpolated precision and orientation-similarity curves."""
        key = (cls, difficulty)
        if key not in self._cleaned:
            self._cleaned[key] = _clean(self.gt, self.dt, cls, difficulty)
        ignored_gt, ignored_dt, num_valid_gt = self._cleaned[key]
        dontcare_overlap = self.pairs.dontcare_overlap() if metric == "bbox" else None
        return _precision_curve(self.pairs, metric, self.gt, self.dt, ignored_gt, ignored_dt, num_valid_gt,
                                min_overlap, dontcare_overlap, with_aos)


# ---- Flattened annotations.


class _Flat:
    """All images' objects concatenated, with per-image offsets."""

    def __init__(self, annos: Sequence[dict]):
        counts = [len(anno["name"]) for anno in annos]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.total = int(self.starts[-1])
        names = [x for anno in annos for x in anno["name"].tolist()]
        self.name = np.asarray(names, dtype=object)
        # Lower-case names as small integer codes (string comparisons of object arrays are slow).
        lower = [x.lower() for x in names]
        self.name_codes = {}
        codes = [self.name_codes.setdefault(x, len(self.name_codes)) for x in lower]
        self.name_code = np.asarray(codes, dtype=np.int64)

        for k in FLOAT_KEYS:
            if not annos or k in annos[0]:  # ground truths have no score
                parts = [anno[k] for anno in annos]
                setattr(self, k, np.concatenate(parts, 0) if parts else np.zeros((0,) + column_shape(k)))
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
        gt.is_named(NEIGHBOUR[cls_lower]) if cls_lower in NEIGHBOUR else np.zeros(gt.total, bool)
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
                self._cache[metric] = image_box_overlap(
                    self.dt.bbox[self.det], self.gt.bbox[self.gt_index], criterion=-1
                )
            else:
                self._cache[metric] = self._rotated(metric)
        return self._cache[metric]

    def _rotated(self, metric: str) -> np.ndarray:
        """The image blocks of rotated_overlaps, flattened in pair order."""
        gt, dt = self.gt, self.dt
        gt_boxes = rotated_boxes(gt.location, gt.dimensions, gt.rotation_y, metric)
        dt_boxes = rotated_boxes(dt.location, dt.dimensions, dt.rotation_y, metric)
        out = np.empty(len(self.det))
        position = 0
        for i in range(len(gt.counts)):
            n, m = int(dt.counts[i]), int(gt.counts[i])
            if n and m:
                block = rotated_overlaps(
                    dt_boxes[dt.starts[i] : dt.starts[i + 1]], gt_boxes[gt.starts[i] : gt.starts[i + 1]], metric
                )
                out[position : position + n * m] = block.reshape(-1)
            position += n * m
        return out

    def dontcare_overlap(self) -> np.ndarray:
        """Per detection: the largest overlap of its 2D box with a DontCare box of its image,
        measured as intersection over the detection's area (0 when there is none)."""
        if "dontcare" not in self._cache:
            is_dc = self.gt.name[self.gt_index] == "DontCare"
            best = np.zeros(self.dt.total)
            if is_dc.any():
                det, dc = self.det[is_dc], self.gt_index[is_dc]
                value = image_box_overlap(self.dt.bbox[det], self.gt.bbox[dc], criterion=0)
                np.maximum.at(best, det, value)
            self._cache["dontcare"] = best
        return self._cache["dontcare"]


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

    precision = np.zeros(NUM_SAMPLE_POINTS)
    orientation = np.zeros(NUM_SAMPLE_POINTS)
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
        current += 1 / (NUM_SAMPLE_POINTS - 1.0)
        start = i + 1
    return np.asarray(kept)



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
            has = value[rows, pick] > NO_DETECTION
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
