"""Evaluators: COCO AP (pycocotools) and KITTI AP R40."""
