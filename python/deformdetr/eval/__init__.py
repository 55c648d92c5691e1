"""Evaluators: COCO box AP (pycocotools) and KITTI 3D object detection (AP R40 / R11 for 2D, BEV
and 3D, with AOS)."""

from deformdetr.eval.coco import COCO_STAT_NAMES, coco_detections, evaluate_coco
from deformdetr.eval.kitti import (
    KittiEvalResult,
    evaluate_kitti,
    evaluate_kitti_reference,
    kitti_detections,
    read_kitti_label_dir,
    read_kitti_label_file,
    read_kitti_result_dir,
    write_kitti_result_dir,
    write_kitti_result_file,
)

__all__ = [
    "COCO_STAT_NAMES",
    "coco_detections",
    "evaluate_coco",
    "KittiEvalResult",
    "evaluate_kitti",
    "evaluate_kitti_reference",
    "read_kitti_label_dir",
    "read_kitti_label_file",
    "read_kitti_result_dir",
    "write_kitti_result_file",
    "write_kitti_result_dir",
    "kitti_detections",
]
