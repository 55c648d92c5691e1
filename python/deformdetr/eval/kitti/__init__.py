"""KITTI 3D object detection evaluation (AP R40 / R11 for 2D, BEV and 3D, and AOS) with the
devkit's semantics, split as OpenPCDet splits the devkit's python port:

- :mod:`~deformdetr.eval.kitti.api`: :func:`evaluate_kitti` and :class:`KittiEvalResult`;
- :mod:`~deformdetr.eval.kitti.rules`: the devkit's rules as constants (difficulties, minimum
  overlaps, the devkit's class table);
- :mod:`~deformdetr.eval.kitti.annotations`: the per-image annotation dicts, checked;
- :mod:`~deformdetr.eval.kitti.overlaps`: 2D, BEV and 3D overlaps;
- :mod:`~deformdetr.eval.kitti.vectorized`: the vectorized matching engine;
- :mod:`~deformdetr.eval.kitti.reference`: :func:`evaluate_kitti_reference`, the same
  evaluation as plain loops, to check the engine against (as the ops' ``*_reference``);
- :mod:`~deformdetr.eval.kitti.summary`: the printed summary;
- :mod:`~deformdetr.eval.kitti.files`: label and result files;
- :mod:`~deformdetr.eval.kitti.detections`: MonoDETR's decoded detections as annotations.

Class order: the devkit numbers classes Car first (:data:`CLASS_NAMES`: 0 Car, 1 Pedestrian,
2 Cyclist, 3 Van, 4 Person_sitting, 5 Truck), and those indices mean something only in
:func:`evaluate_kitti`'s ``classes`` argument. Training labels follow the official MonoDETR
order instead (Pedestrian 0, Car 1, Cyclist 2: :data:`deformdetr.data.kitti.KITTI_CLASS_NAMES`).
Annotations and label files carry names, so the two orders meet only as names.
"""

from deformdetr.eval.kitti.annotations import empty_annotation
from deformdetr.eval.kitti.api import KittiEvalResult, evaluate_kitti
from deformdetr.eval.kitti.detections import kitti_detections
from deformdetr.eval.kitti.files import (
    read_kitti_label_dir,
    read_kitti_label_file,
    read_kitti_result_dir,
    write_kitti_result_dir,
    write_kitti_result_file,
)
from deformdetr.eval.kitti.reference import evaluate_kitti_reference
from deformdetr.eval.kitti import rules as _rules
from deformdetr.eval.kitti.rules import *  # noqa: F401,F403  (the public rules: rules.__all__)

__all__ = [
    *_rules.__all__,
    "KittiEvalResult",
    "evaluate_kitti",
    "evaluate_kitti_reference",
    "empty_annotation",
    "read_kitti_label_file",
    "read_kitti_label_dir",
    "read_kitti_result_dir",
    "write_kitti_result_file",
    "write_kitti_result_dir",
    "kitti_detections",
]
