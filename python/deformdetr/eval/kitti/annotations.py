"""The devkit's annotation dict, one per image, for ground truths and detections alike:

``name`` (N,), ``truncated`` (N,), ``occluded`` (N,), ``alpha`` (N,), ``bbox`` (N, 4) pixels
(x1, y1, x2, y2), ``dimensions`` (N, 3) as (l, h, w) (label files store h, w, l; the readers in
:mod:`deformdetr.eval.kitti.files` reorder), ``location`` (N, 3) camera coordinates of the bottom
centre, ``rotation_y`` (N,), and for detections ``score`` (N,).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["ANNOTATION_KEYS", "FLOAT_KEYS", "column_shape", "checked_annotations", "empty_annotation"]

#: The keys every annotation has (detections have "score" too).
ANNOTATION_KEYS = ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y")
#: The numeric keys, checked and held as float64.
FLOAT_KEYS = ANNOTATION_KEYS[1:] + ("score",)
_WIDTHS = {"bbox": 4, "dimensions": 3, "location": 3}


def column_shape(key: str) -> tuple:
    """The shape of one object's value under a numeric key: (4,), (3,) or ()."""
    return (_WIDTHS[key],) if key in _WIDTHS else ()


def checked_annotations(annos: Sequence[Mapping], what: str, with_score: bool) -> list[dict]:
    """Each image's annotation with every key present and shaped as documented: names as an
    object array of ``str``, the rest float64. Errors name ``what[i]`` and the key."""
    keys = list(ANNOTATION_KEYS) + (["score"] if with_score else [])
    checked = []
    for i, anno in enumerate(annos):
        missing = [k for k in keys if k not in anno]
        if missing:
            raise KeyError(f"{what}[{i}] lacks {missing}; an annotation needs {keys}")
        n = len(anno["name"])
        image = {"name": np.asarray([str(x) for x in np.asarray(anno["name"]).tolist()], dtype=object)}
        for k in keys[1:]:
            value = np.asarray(anno[k], dtype=np.float64)
            expected = (n,) + column_shape(k)
            if value.size or n == 0:
                value = value.reshape((-1,) + column_shape(k))
            if value.shape != expected:
                raise ValueError(f"{what}[{i}]['{k}'] must have shape {expected}, got {value.shape}")
            image[k] = value
        checked.append(image)
    return checked


def empty_annotation(with_score: bool = True) -> dict:
    """An image without objects."""
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
