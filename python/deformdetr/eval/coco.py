"""COCO box AP through pycocotools, from PostProcess results."""

from __future__ import annotations

import contextlib
import io
from typing import Iterable, Mapping

import numpy as np

__all__ = ["COCO_STAT_NAMES", "coco_detections", "with_category_ids", "evaluate_coco"]

COCO_STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]


def coco_detections(image_id: int, result: Mapping) -> list[dict]:
    """One image's PostProcess result (absolute xyxy boxes) as COCO result entries (xywh), the
    model's labels as category ids (see :func:`with_category_ids`)."""
    boxes = result["boxes"].detach().cpu().double().numpy()
    scores = result["scores"].detach().cpu().tolist()
    labels = result["labels"].detach().cpu().tolist()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else boxes
    return [
        {"image_id": int(image_id), "category_id": int(label), "bbox": [float(v) for v in box], "score": float(score)}
        for box, score, label in zip(xywh, scores, labels)
    ]


def with_category_ids(detections: Iterable[dict], categories) -> list[dict]:
    """COCO result entries whose ``category_id`` holds the model's label, with the data set's
    category id instead (``categories``: a data.categories.Categories); entries of labels without
    a category (the gaps of COCO's ids) are left out."""
    mapped = ((d, categories.id_of(d["category_id"])) for d in detections)
    return [dict(d, category_id=category_id) for d, category_id in mapped if category_id is not None]


def evaluate_coco(coco_gt, detections: Iterable[dict], image_ids: Iterable[int], verbose: bool = False) -> dict:
    """AP/AR of ``detections`` on ``image_ids`` of the ground truth ``coco_gt`` (a pycocotools
    COCO): the 12 summary numbers, then ``per_class``: {category name: {"id", "AP", "AP50"}} for
    each category of the ground truth (None where it has no boxes among the images)."""
    from pycocotools.cocoeval import COCOeval

    detections = list(detections)
    image_ids = sorted(set(int(i) for i in image_ids))
    if not detections:
        return {**{name: 0.0 for name in COCO_STAT_NAMES},
                "per_class": {name: {"id": i, "AP": 0.0, "AP50": 0.0} for i, name in _category_names(coco_gt)}}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {**{name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)},
            "per_class": _per_class_ap(evaluator, coco_gt)}


def _category_names(coco_gt) -> list[tuple[int, str]]:
    return [(int(c["id"]), str(c.get("name", c["id"]))) for c in coco_gt.loadCats(coco_gt.getCatIds())]


def _per_class_ap(evaluator, coco_gt) -> dict:
    """AP (IoU 0.50:0.95) and AP50 of each category, at all areas and 100 detections, from the
    accumulated precision (IoU thresholds x recall x categories x areas x max detections; -1
    where a category has no ground truth)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    names = dict(_category_names(coco_gt))
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        at_50 = values[0][values[0] > -1]
        every = values[values > -1]
        name = names.get(int(category_id), str(category_id))
        per_class[name if name not in per_class else f"{name} ({category_id})"] = {
            "id": int(category_id),
            "AP": float(every.mean()) if every.size else None,
            "AP50": float(at_50.mean()) if at_50.size else None,
        }
    return per_class
