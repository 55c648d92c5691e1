"""Box geometry: format conversions, pairwise IoU and generalized IoU (GIoU), each beside its
pure-PyTorch reference.

Boxes are ``(..., 4)`` tensors, ``(cx, cy, w, h)`` or ``(x0, y0, x1, y1)``; the IoU functions take
``(N, 4)`` and ``(M, 4)`` xyxy boxes and return ``(N, M)``. The values equal torchvision's
``box_iou`` / ``generalized_box_iou`` (and DETR's ``box_ops``).

Dispatch: float32/float64 CPU tensors that need no gradient run the native kernels. CUDA
tensors, tensors that require grad (when grad mode is on: losses must stay differentiable) and
16-bit floats run the ``*_reference`` formulas in torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deformdetr._native import _C, dense, num_threads

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_cxcylrtb_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "generalized_box_iou_pairs",
    "box_cxcywh_to_xyxy_reference",
    "box_xyxy_to_cxcywh_reference",
    "box_iou_reference",
    "generalized_box_iou_reference",
]

_NATIVE_DTYPES = (torch.float32, torch.float64)


# ---- Native dispatch.


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1) = (cx - w/2, cy - h/2, cx + w/2, cy + h/2)."""
    if _needs_reference(boxes):
        return box_cxcywh_to_xyxy_reference(boxes)
    return _convert(_C.box_cxcywh_to_xyxy, boxes)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h) = ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0)."""
    if _needs_reference(boxes):
        return box_xyxy_to_cxcywh_reference(boxes)
    return _convert(_C.box_xyxy_to_cxcywh, boxes)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU (intersection over union) of every xyxy box of boxes1 (N, 4) with every box of
    boxes2 (M, 4): an (N, M) tensor. Two empty boxes give NaN (0/0), as torchvision does."""
    if _needs_reference(boxes1, boxes2):
        return box_iou_reference(boxes1, boxes2)
    return _pairwise(_C.box_iou, boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of every xyxy box of boxes1 (N, 4) with every
    box of boxes2 (M, 4): IoU minus the share of the smallest enclosing box that the union does
    not cover, in [-1, 1]. Raises ValueError for a degenerate box (x1 < x0 or y1 < y0, or NaN),
    where DETR asserts."""
    if _needs_reference(boxes1, boxes2):
        return generalized_box_iou_reference(boxes1, boxes2)
    return _pairwise(_C.generalized_box_iou, boxes1, boxes2)


def _needs_reference(*boxes: Tensor) -> bool:
    for b in boxes:
        if not isinstance(b, Tensor):
            raise TypeError(f"boxes must be torch tensors, got {type(b).__name__}")
        if not b.is_floating_point():
            raise TypeError(f"boxes must be a floating point tensor, got dtype {b.dtype}")
    return any(
        b.device.type != "cpu"
        or b.dtype not in _NATIVE_DTYPES
        or (b.requires_grad and torch.is_grad_enabled())
        for b in boxes
    )


def _convert(kernel, boxes: Tensor) -> Tensor:
    boxes = dense(boxes.detach())
    out = torch.empty_like(boxes)
    kernel(boxes, out, num_threads())
    return out


def _pairwise(kernel, boxes1: Tensor, boxes2: Tensor) -> Tensor:
    _check_box_rows(boxes1, "boxes1")
    _check_box_rows(boxes2, "boxes2")
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    boxes1 = dense(boxes1.detach().to(dtype))
    boxes2 = dense(boxes2.detach().to(dtype))
    out = boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))
    kernel(boxes1, boxes2, out, num_threads())
    return out


def _check_box_rows(boxes: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (xyxy boxes), got {tuple(boxes.shape)}")


# ---- References: the definitions in torch, differentiable, any device.


def box_cxcywh_to_xyxy_reference(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_cxcylrtb_to_xyxy(boxes: Tensor) -> Tensor:
    """MonoDETR's boxes (cx, cy, l, r, t, b): a centre (the projected 3D centre) and the distances
    to the box's left, right, top and bottom sides -> (cx - l, cy - t, cx + r, cy + b)."""
    cx, cy, left, right, top, bottom = boxes.unbind(-1)
    return torch.stack((cx - left, cy - top, cx + right, cy + bottom), dim=-1)


def box_xyxy_to_cxcywh_reference(boxes: Tensor) -> Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Of xyxy boxes that broadcast against each other: (N, 1, 4) with (1, M, 4) for every pair,
    (N, 4) with (N, 4) for the pairs in the same row."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    size = (bottom_right - top_left).clamp(min=0)
    intersection = size[..., 0] * size[..., 1]
    union = _area(boxes1) + _area(boxes2) - intersection
    return intersection, union


def _generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of broadcasting xyxy boxes (see :func:`_intersection_and_union`)."""
    intersection, union = _intersection_and_union(boxes1, boxes2)
    iou = intersection / union
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    size = (bottom_right - top_left).clamp(min=0)
    enclosing = size[..., 0] * size[..., 1]
    return iou - (enclosing - union) / enclosing


def box_iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    _check_box_rows(boxes1, "boxes1")
    _check_box_rows(boxes2, "boxes2")
    intersection, union = _intersection_and_union(boxes1[:, None], boxes2[None])
    return intersection / union


def generalized_box_iou_pairs(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of each xyxy box of boxes1 (N, 4) with the box in the same row of boxes2
    (N, 4): ``torch.diag(generalized_box_iou(boxes1, boxes2))`` (the DETR losses' form, equal
    bit for bit) without the N x N matrix and without the degenerate-box check, which on a GPU
    waits for the device. For the losses of matched predictions: their targets are checked on
    the way in, and a NaN prediction makes the loss NaN, which training reports."""
    _check_box_rows(boxes1, "boxes1")
    _check_box_rows(boxes2, "boxes2")
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"pairs of boxes need as many rows on each side, got {tuple(boxes1.shape)} "
                         f"and {tuple(boxes2.shape)}")
    return _generalized_iou(boxes1, boxes2)


def generalized_box_iou_reference(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    _check_box_rows(boxes1, "boxes1")
    _check_box_rows(boxes2, "boxes2")
    for boxes, name in ((boxes1, "boxes1"), (boxes2, "boxes2")):
        # As DETR's assert (NaN fails it too); on CUDA this check synchronises, as DETR's does.
        if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
            raise ValueError(
                f"{name} contains a degenerate box: generalized IoU needs x1 >= x0 and y1 >= y0 "
                "(xyxy boxes)"
            )
    return _generalized_iou(boxes1[:, None], boxes2[None])
