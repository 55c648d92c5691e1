"""Evaluators: KITTI 3D object detection (AP R40 / R11 for 2D, BEV and 3D, with AOS)."""

from deformdetr.eval.kitti import (
    KittiEvalResult,
    evaluate_kitti,
    read_kitti_label_dir,
    read_kitti_label_file,
    read_kitti_result_dir,
    write_kitti_result_file,
)

__all__ = [
    "KittiEvalResult",
    "evaluate_kitti",
    "read_kitti_label_dir",
    "read_kitti_label_file",
    "read_kitti_result_dir",
    "write_kitti_result_file",
]
