"""Evaluators: COCO box AP (pycocotools) and KITTI 3D object detection (AP R40 / R11 for 2D, BEV
and 3D, with AOS). KITTI's label and result files are read and written by
:mod:`deformdetr.eval.kitti`."""

from deformdetr._deprecated import moved_names
from deformdetr.eval.coco import COCO_STAT_NAMES, coco_detections, evaluate_coco
from deformdetr.eval.kitti import KittiEvalResult, evaluate_kitti, evaluate_kitti_reference, kitti_detections

__all__ = [
    "COCO_STAT_NAMES",
    "coco_detections",
    "evaluate_coco",
    "KittiEvalResult",
    "evaluate_kitti",
    "evaluate_kitti_reference",
    "kitti_detections",
]

__getattr__ = moved_names(__name__, {name: f"deformdetr.eval.kitti:{name}" for name in (
    "read_kitti_label_dir", "read_kitti_label_file", "read_kitti_result_dir", "write_kitti_result_dir",
    "write_kitti_result_file")})
