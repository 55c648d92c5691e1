"""Torch-facing wrappers of the native core, each beside a pure-PyTorch reference."""

from deformdetr.ops.ms_deform_attn import (
    check_level_geometry,
    ms_deform_attn,
    ms_deform_attn_reference,
    use_reference,
)
from deformdetr.ops.ms_deform_attn_module import MSDeformAttn

__all__ = [
    "ms_deform_attn", "ms_deform_attn_reference", "use_reference", "check_level_geometry",
    "MSDeformAttn",
]
from deformdetr.ops.matching import batched_linear_sum_assignment, linear_sum_assignment
from deformdetr.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_cxcywh_to_xyxy_reference,
    box_iou,
    box_iou_reference,
    box_xyxy_to_cxcywh,
    box_xyxy_to_cxcywh_reference,
    generalized_box_iou,
    generalized_box_iou_reference,
)

__all__ += [
    "linear_sum_assignment",
    "batched_linear_sum_assignment",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "box_cxcywh_to_xyxy_reference",
    "box_xyxy_to_cxcywh_reference",
    "box_iou_reference",
    "generalized_box_iou_reference",
]
from deformdetr.ops.rotated_iou import (
    bev_box_iou,
    bev_box_iou_reference,
    box3d_iou,
    box3d_iou_reference,
)

__all__ += ["bev_box_iou", "box3d_iou", "bev_box_iou_reference", "box3d_iou_reference"]
