"""Deformable DETR's Hungarian matcher, with the cost and the assignment in the native core.

The official matcher scores the whole flattened batch (B*Q predictions) against all the batch's
targets concatenated, then slices each image's block and solves it with scipy. Here each image's
(Q, T_b) cost is computed only for its own targets, in C++, and every image is solved in one
native call that runs images in parallel with the GIL released. The cost is the same formula:

    C = cost_bbox * L1(cxcywh) + cost_class * focal_class_cost - cost_giou * GIoU(xyxy)

with focal_class_cost = pos - neg, p = sigmoid(logit of the target's class),
    pos = alpha (1-p)^2 (-log(p + 1e-8)),  neg = (1-alpha) p^2 (-log(1-p + 1e-8)).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from deformdetr._native import _C, dense, num_threads

__all__ = ["HungarianMatcher", "matching_cost_reference"]


@torch.no_grad()
def matching_cost_reference(outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                            cost_class: float = 2, cost_bbox: float = 5, cost_giou: float = 2,
                            focal_alpha: float = 0.25) -> Tensor:
    """The matcher's cost in pure PyTorch, as the official matcher computes it: the whole batch
    (B*Q predictions) against all targets concatenated, (B, Q, sum of T). Image b's block is
    ``[b, :, offset_b : offset_b + T_b]``. In the dtype of the outputs."""
    from deformdetr.ops.boxes import box_cxcywh_to_xyxy_reference, generalized_box_iou_reference

    batch, queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
    pred_boxes = outputs["pred_boxes"].flatten(0, 1)
    labels = torch.cat([t["labels"] for t in targets]).long()
    boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes.dtype).reshape(-1, 4)
    neg = (1 - focal_alpha) * prob**2 * -(1 - prob + 1e-8).log()
    pos = focal_alpha * (1 - prob) ** 2 * -(prob + 1e-8).log()
    class_cost = pos[:, labels] - neg[:, labels]
    l1_cost = torch.cdist(pred_boxes, boxes, p=1)
    giou_cost = -generalized_box_iou_reference(
        box_cxcywh_to_xyxy_reference(pred_boxes), box_cxcywh_to_xyxy_reference(boxes)
    )
    cost = cost_bbox * l1_cost + cost_class * class_cost + cost_giou * giou_cost
    return cost.view(batch, queries, -1)


class HungarianMatcher(nn.Module):
    """Assigns targets to predictions one-to-one, minimising the matching cost per image.

    Args:
        cost_class: weight of the focal-style classification cost.
        cost_bbox: weight of the L1 distance between (cx, cy, w, h) boxes.
        cost_giou: weight of the negative generalized IoU of the boxes.
        focal_alpha: alpha of the focal-style classification cost.
    """

    def __init__(self, cost_class: float = 2, cost_bbox: float = 5, cost_giou: float = 2, focal_alpha: float = 0.25):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou can't all be 0")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.focal_alpha = float(focal_alpha)

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, "
            f"cost_giou={self.cost_giou}, focal_alpha={self.focal_alpha}"
        )

    @torch.no_grad()
    def forward(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Matches each image's predictions with its targets.

        Args:
            outputs: ``"pred_logits"`` (B, Q, C) class logits and ``"pred_boxes"`` (B, Q, 4)
                normalised (cx, cy, w, h) boxes, on any device.
            targets: B dicts with ``"labels"`` (T_b,) integer classes in [0, C) and ``"boxes"``
                (T_b, 4) (cx, cy, w, h) boxes.

        Returns:
            B pairs ``(query_idx, target_idx)`` of int64 CPU tensors of length min(Q, T_b),
            query_idx ascending, as scipy's linear_sum_assignment returns them.
        """
        logits, boxes = _predictions(outputs)
        batch, queries, _ = logits.shape
        labels, target_boxes, sizes = _targets(targets, batch, logits.dtype)
        pair_counts = [min(queries, size) for size in sizes]
        indices = torch.empty((2, sum(pair_counts)), dtype=torch.int64)
        _C.hungarian_match(
            logits, boxes, torch.tensor(sizes, dtype=torch.int64), labels, target_boxes,
            self.cost_class, self.cost_bbox, self.cost_giou, self.focal_alpha,
            indices[0], indices[1], num_threads(),
        )
        return [(pair[0], pair[1]) for pair in indices.split(pair_counts, dim=1)]


def _predictions(outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise KeyError(f"outputs must contain {key!r}, got keys {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(f"pred_logits must have shape (B, Q, C), got {tuple(logits.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"pred_boxes must have shape (B, Q, 4) = {(*logits.shape[:2], 4)} to match "
            f"pred_logits {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    # The cost is computed in double precision anyway: 16-bit inputs lose nothing as float32.
    dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    return _to_host(logits, dtype), _to_host(boxes, dtype)


def _targets(
    targets: Sequence[Mapping[str, Tensor]], batch: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, list[int]]:
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
    labels, boxes, sizes = [], [], []
    for i, target in enumerate(targets):
        image_labels = checked_labels(i, target["labels"])
        count = image_labels.shape[0]
        image_boxes = checked_boxes(i, "boxes", target["boxes"], count, 4)
        labels.append(image_labels)
        boxes.append(image_boxes)
        sizes.append(count)
    if batch == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty((0, 4), dtype=dtype), sizes
    return _to_host(torch.cat(labels), torch.int64), _to_host(torch.cat(boxes), dtype), sizes


def _to_host(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    # One copy per tensor for the whole batch, whatever device the model runs on.
    return dense(tensor.detach().to(device="cpu", dtype=dtype))


def checked_labels(i: int, labels) -> Tensor:
    """targets[i]["labels"] as int64, or an error naming it: any integer dtype is taken (uint8
    would otherwise index as a boolean mask), floats, bools and complex numbers are refused."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"targets[{i}]['labels'] must be a tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"targets[{i}]['labels'] must hold integer classes, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"targets[{i}]['labels'] must have shape (T,), got {tuple(labels.shape)}")
    return labels.long()  # the same tensor when already int64


def checked_boxes(i: int, key: str, boxes, count: int, width: int) -> Tensor:
    """targets[i][key] as (count, width), or an error naming it."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"targets[{i}][{key!r}] must be a tensor, got {type(boxes).__name__}")
    if count == 0 and boxes.numel() == 0:
        # An image without objects is often written torch.zeros(0); the losses index (T, width).
        return boxes.reshape(0, width)
    if tuple(boxes.shape) != (count, width):
        raise ValueError(
            f"targets[{i}][{key!r}] must have shape (T, {width}) = ({count}, {width}) to match its "
            f"{count} labels, got {tuple(boxes.shape)}"
        )
    return boxes
