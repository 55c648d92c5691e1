"""COCO box AP through pycocotools, from PostProcess results."""

from __future__ import annotations

import contextlib
import io
from typing import Iterable, Mapping

import numpy as np

__all__ = ["COCO_STAT_NAMES", "coco_detections", "evaluate_coco"]

COCO_STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]


def coco_detections(image_id: int, result: Mapping) -> list[dict]:
    """One image's PostProcess result (absolute xyxy boxes) as COCO result entries (xywh)."""
    boxes = result["boxes"].detach().cpu().double().numpy()
    scores = result["scores"].detach().cpu().tolist()
    labels = result["labels"].detach().cpu().tolist()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else boxes
    return [
        {"image_id": int(image_id), "category_id": int(label), "bbox": [float(v) for v in box], "score": float(score)}
        for box, score, label in zip(xywh, scores, labels)
    ]


def evaluate_coco(coco_gt, detections: Iterable[dict], image_ids: Iterable[int], verbose: bool = False) -> dict:
    """AP/AR of ``detections`` on ``image_ids`` of the ground truth ``coco_gt`` (a pycocotools COCO)."""
    from pycocotools.cocoeval import COCOeval

    detections = list(detections)
    image_ids = sorted(set(int(i) for i in image_ids))
    if not detections:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
