"""KITTI 3D object detection evaluation: AP for 2D boxes, bird's-eye view and 3D, with 40 (R40)
or 11 (R11) recall positions, and AOS, with the semantics of the devkit's python port used by
MonoDETR, OpenPCDet and second.pytorch (``kitti_object_eval_python/eval.py``,
``get_official_eval_result``). The rules it follows are listed in
:mod:`deformdetr.eval.kitti.rules`; annotations are the devkit's per-image dicts
(:mod:`deformdetr.eval.kitti.annotations`).

The matching runs vectorized (:mod:`deformdetr.eval.kitti.vectorized`), with the devkit's results;
:func:`~deformdetr.eval.kitti.reference.evaluate_kitti_reference` computes the same result with
plain loops, one image and threshold at a time, as the devkit states its rules.

The overlaps are where the results can differ. The BEV and 3D IoUs run in the native core in
float64; the devkit casts the boxes to float32 and computes the BEV intersection in float32,
its edge crossings by a determinant formula on absolute coordinates (products of coordinates
~1e3 m^2, so cancellation costs ~1e-4 m far from the camera). Measured with that arithmetic
emulated in numpy float32 (``bench/kitti_iou_float32.py``: 200,000 pairs per setting of a box
and a jittered copy, IoU > 0.1, seed 0), the devkit's IoU and ours differ, for pedestrian-sized
boxes 40-80 m away, by 2.8e-5 (BEV) / 2.3e-5 (3D) in the median and at most 7.4e-4 / 6.2e-4 for
99.9% of the pairs; at 5-15 m by at most 1.9e-4 / 1.8e-4; for cars 40-80 m away by at most
9.3e-4 / 8.1e-4. And in 6 of the 200,000 distant pedestrian pairs by more than 1e-2 (up to 0.4):
where a corner lies within float32 rounding of the other box's edge, or two edges are nearly
parallel, float32 clipping drops or misplaces a vertex of the intersection (the devkit's known
wrong IoUs for nearly coincident boxes). A pair that close to a minimum overlap can be a true
positive for one evaluation and not for the other. Such pairs are rare: on the random data sets
of ``bench/compare_kitti_eval.py`` the devkit's APs and ours agreed within 3.2e-14
(bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from deformdetr.eval.kitti.annotations import checked_annotations
from deformdetr.eval.kitti.rules import (
    DIFFICULTIES,
    METRICS,
    MIN_OVERLAPS,
    NUM_SAMPLE_POINTS,
    alphas_valid,
    devkit_class_name,
)
from deformdetr.eval.kitti.summary import summary_text
from deformdetr.eval.kitti.vectorized import VectorizedCurves

__all__ = ["KittiEvalResult", "evaluate_kitti", "evaluate_with", "average_precision"]

DEFAULT_CLASSES = ("Car", "Pedestrian", "Cyclist")


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
                    diff: average_precision(curves[c, d], recall_positions)
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


def evaluate_kitti(
    gt_annos: Sequence[Mapping],
    dt_annos: Sequence[Mapping],
    classes: Iterable = DEFAULT_CLASSES,
    metrics: Iterable[str] = METRICS,
    recall_positions: int = 40,
) -> KittiEvalResult:
    """The official KITTI evaluation of detections ``dt_annos`` against ``gt_annos`` (one
    annotation dict per image, in the same order).

    ``classes``: names (case-insensitive) or the devkit's class indices (0 Car, 1 Pedestrian,
    2 Cyclist, 3 Van, 4 Person_sitting, 5 Truck; not the training labels' order).
    ``metrics``: a subset of ("bbox", "bev", "3d"). ``recall_positions``: 40 (AP_R40, what
    MonoDETR and the KITTI benchmark report) or 11."""
    return evaluate_with(VectorizedCurves, gt_annos, dt_annos, classes, metrics, recall_positions)


def evaluate_with(engine, gt_annos, dt_annos, classes, metrics, recall_positions) -> KittiEvalResult:
    """:func:`evaluate_kitti` with the precision curves from ``engine(gt, dt)`` (checked
    annotations), whose ``precision_curve(metric, min_overlap, cls, difficulty, with_aos)``
    gives one curve and its orientation similarity; arguments are checked here."""
    if recall_positions not in (11, 40):
        raise ValueError(f"recall_positions must be 40 or 11, got {recall_positions!r}")
    if len(gt_annos) != len(dt_annos):
        raise ValueError(
            f"gt_annos and dt_annos must have one entry per image each, got {len(gt_annos)} and "
            f"{len(dt_annos)}"
        )
    classes = tuple(devkit_class_name(c) for c in ([classes] if isinstance(classes, (str, int)) else classes))
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metrics must be drawn from {METRICS}, got {metric!r}")

    curves = engine(checked_annotations(gt_annos, "gt_annos", with_score=False),
                    checked_annotations(dt_annos, "dt_annos", with_score=True))
    compute_aos = "bbox" in metrics and alphas_valid(dt_annos)
    precision = {setting: {} for setting in MIN_OVERLAPS}
    for metric in metrics:
        with_aos = compute_aos and metric == "bbox"
        for setting, table in MIN_OVERLAPS.items():
            prec = np.zeros((len(classes), len(DIFFICULTIES), NUM_SAMPLE_POINTS))
            orient = np.zeros_like(prec)
            for c, cls in enumerate(classes):
                for d in range(len(DIFFICULTIES)):
                    prec[c, d], orient[c, d] = curves.precision_curve(metric, table[metric][cls], cls, d, with_aos)
            precision[setting][metric] = prec
            if with_aos:
                precision[setting]["aos"] = orient

    result = KittiEvalResult(
        ap={}, ap_loose={}, recall_positions=recall_positions, classes=classes,
        precision=precision, summary="",
    )
    result.ap = result.ap_at(recall_positions, "strict")
    result.ap_loose = result.ap_at(recall_positions, "loose")
    result.summary = summary_text(result, metrics)
    return result


def average_precision(curve: np.ndarray, recall_positions: int) -> float:
    """AP in percent of a 41-point precision curve: the mean of positions 1..40 (R40) or of
    0, 4, ..., 40 (R11)."""
    total = 0.0
    if recall_positions == 40:
        for i in range(1, curve.shape[-1]):
            total = total + curve[i]
        return float(total / 40 * 100)
    for i in range(0, curve.shape[-1], 4):
        total = total + curve[i]
    return float(total / 11 * 100)
