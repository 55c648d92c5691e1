"""MonoDETR's Hungarian matcher. The cost of prediction i and target j is

    cost_class * focal_class_cost + cost_3dcenter * L1(projected 3D centre)
    + cost_bbox * L1(l, r, t, b) - cost_giou * GIoU(2D boxes)

(boxes (cx, cy, l, r, t, b), targets' ``boxes_3d``). While training with query groups, each
group of queries is matched to the targets on its own (one-to-many over groups)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from deformdetr.models.matcher import checked_labels
from deformdetr.ops.boxes import box_cxcylrtb_to_xyxy, generalized_box_iou
from deformdetr.ops.matching import batched_linear_sum_assignment

__all__ = ["MonoHungarianMatcher"]


class MonoHungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 2, cost_3dcenter: float = 10, cost_bbox: float = 5,
                 cost_giou: float = 2, focal_alpha: float = 0.25):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("MonoHungarianMatcher: cost_class, cost_bbox and cost_giou can't all be 0")
        self.cost_class = cost_class
        self.cost_3dcenter = cost_3dcenter
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha

    @torch.no_grad()
    def cost_matrix(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """(B, Q, T) costs of every prediction against all the batch's targets (T in total)."""
        batch, queries = outputs["pred_boxes"].shape[:2]
        prob = outputs["pred_logits"].flatten(0, 1).sigmoid()
        boxes = outputs["pred_boxes"].flatten(0, 1)
        labels = torch.cat([checked_labels(i, t["labels"]) for i, t in enumerate(targets)]).to(prob.device)
        target_boxes = torch.cat([t["boxes_3d"] for t in targets]).to(boxes)
        alpha, gamma = self.focal_alpha, 2.0
        neg = (1 - alpha) * (prob**gamma) * (-(1 - prob + 1e-8).log())
        pos = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
        cost_class = pos[:, labels] - neg[:, labels]
        cost_3dcenter = torch.cdist(boxes[:, 0:2], target_boxes[:, 0:2], p=1)
        cost_bbox = torch.cdist(boxes[:, 2:6], target_boxes[:, 2:6], p=1)
        cost_giou = -generalized_box_iou(box_cxcylrtb_to_xyxy(boxes), box_cxcylrtb_to_xyxy(target_boxes))
        cost = (self.cost_bbox * cost_bbox + self.cost_3dcenter * cost_3dcenter + self.cost_class * cost_class
                + self.cost_giou * cost_giou)
        return cost.view(batch, queries, -1)

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]],
                group_num: int = 1) -> list[tuple[Tensor, Tensor]]:
        """Returns per image (query_idx, target_idx) int64 CPU tensors: for each group in turn, its
        min(Q / group_num, T_b) pairs (query indices ascending within a group)."""
        batch, queries = outputs["pred_boxes"].shape[:2]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        if queries % group_num != 0:
            raise ValueError(f"{queries} queries do not split into {group_num} equal groups")
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        cost = self.cost_matrix(outputs, targets).cpu()
        group_size = queries // group_num
        blocks = [c[i] for i, c in enumerate(cost.split(sizes, -1))]  # (Q, T_b) per image
        problems = [block[g * group_size:(g + 1) * group_size] for block in blocks for g in range(group_num)]
        solved = batched_linear_sum_assignment(problems)
        indices = []
        for i in range(batch):
            rows, cols = [], []
            for g in range(group_num):
                r, c = solved[i * group_num + g]
                rows.append(r + g * group_size)
                cols.append(c)
            indices.append((torch.cat(rows).to(torch.int64), torch.cat(cols).to(torch.int64)))
        return indices
