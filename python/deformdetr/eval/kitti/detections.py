"""MonoDETR's decoded detections (:class:`~deformdetr.models.mono.decode.Detection3D` rows, with
training labels) as devkit annotations: what the evaluation scores and what result files hold."""

from __future__ import annotations

import numpy as np

from deformdetr.data.kitti import kitti_class_name
from deformdetr.models.mono.decode import detection_columns

__all__ = ["kitti_detections"]


def kitti_detections(rows) -> dict:
    """One image's decoded rows -> a devkit annotation dict with scores: class names from the
    training labels (:func:`~deformdetr.data.kitti.kitti_class_name`), ``dimensions`` as (l, h, w),
    truncation and occlusion 0 (a detection has none). Score it with ``evaluate_kitti``, write it
    with ``write_kitti_result_file``."""
    column = detection_columns(rows)
    count = len(column["score"])
    return {
        "name": np.array([kitti_class_name(label) for label in column["label"]], dtype="<U10"),
        "truncated": np.zeros(count),
        "occluded": np.zeros(count, dtype=np.int64),
        "alpha": column["alpha"],
        "bbox": np.stack([column["x1"], column["y1"], column["x2"], column["y2"]], axis=1),
        "dimensions": np.stack([column["l"], column["h"], column["w"]], axis=1),
        "location": np.stack([column["x"], column["y"], column["z"]], axis=1),
        "rotation_y": column["ry"],
        "score": column["score"],
    }
