"""From model outputs to detections: the top-k (query, class) pairs by sigmoid score, with boxes
in absolute (x0, y0, x1, y1) pixels of each image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deformdetr.ops.boxes import box_cxcywh_to_xyxy

__all__ = ["PostProcess"]


class PostProcess(nn.Module):
    def __init__(self, num_select: int = 100):
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """target_sizes: (B, 2) each image's (height, width) in pixels. Returns B dicts with
        "scores" (K,), "labels" (K,) and "boxes" (K, 4), K = min(num_select, Q * C), best first."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, queries, classes = logits.shape
        if tuple(target_sizes.shape) != (batch, 2):
            raise ValueError(
                f"target_sizes must have shape ({batch}, 2) (height, width per image), "
                f"got {tuple(target_sizes.shape)}"
            )
        prob = logits.sigmoid().view(batch, -1)
        scores, flat_index = torch.topk(prob, min(self.num_select, queries * classes), dim=1)
        query_index = flat_index // classes
        labels = flat_index % classes
        xyxy = box_cxcywh_to_xyxy(boxes)
        xyxy = torch.gather(xyxy, 1, query_index.unsqueeze(-1).expand(-1, -1, 4))
        height, width = target_sizes.to(xyxy.dtype).unbind(1)
        xyxy = xyxy * torch.stack([width, height, width, height], dim=1)[:, None, :]
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xyxy)]
