"""The KITTI devkit's rules as data, shared by the vectorized evaluation and its plain-loop
reference (the devkit's python port: ``kitti_object_eval_python/eval.py``).

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
- AOS: computed with the 2D metric unless the first detection of the first image that has any
  carries alpha == -10 (the "no orientation" marker).

Class indices here are the devkit's (``CLASS_NAMES``: 0 Car, 1 Pedestrian, 2 Cyclist, ...), not
the training labels' order (see :mod:`deformdetr.data.kitti`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "DIFFICULTIES",
    "METRICS",
    "MIN_HEIGHT",
    "MAX_OCCLUSION",
    "MAX_TRUNCATION",
    "MIN_OVERLAPS",
]  # the public rules (re-exported by deformdetr.eval.kitti); the engine imports the rest by name

#: The devkit's class table: index i in ``evaluate_kitti(classes=...)`` is ``CLASS_NAMES[i]``.
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

#: The neighbouring class (lower case) whose objects are ignored rather than missed.
NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}

NUM_SAMPLE_POINTS = 41
#: The devkit's "no candidate yet" score: detections must score above it to be matched.
NO_DETECTION = -10000000.0


def devkit_class_name(cls) -> str:
    """A class given by name (any case) or by the devkit's index -> its name in ``CLASS_NAMES``."""
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= cls < len(CLASS_NAMES):
            raise ValueError(f"class index must be in [0, {len(CLASS_NAMES)}), got {cls}")
        return CLASS_NAMES[cls]
    for name in CLASS_NAMES:
        if isinstance(cls, str) and cls.lower() == name.lower():
            return name
    raise ValueError(f"classes must be drawn from {CLASS_NAMES} (or their indices), got {cls!r}")


def alphas_valid(dt_annos: Sequence[Mapping]) -> bool:
    """The devkit computes AOS unless the first detection of the first non-empty image has
    alpha == -10 (the "no orientation" marker)."""
    for anno in dt_annos:
        alpha = np.asarray(anno["alpha"]).reshape(-1)
        if alpha.shape[0] != 0:
            return bool(alpha[0] != -10)
    return False
