"""From model outputs to detections: the top-k (query, class) pairs by sigmoid score, with boxes
in absolute (x0, y0, x1, y1) pixels of each image."""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import torch
from torch import Tensor, nn

from deformdetr.ops.boxes import box_cxcywh_to_xyxy

__all__ = ["PostProcess"]


class PostProcess(nn.Module):
    def __init__(self, num_select: int = 100):
        super().__init__()
        if isinstance(num_select, bool) or not isinstance(num_select, int):
            raise TypeError(f"num_select must be an int, got {type(num_select).__name__}")
        if num_select < 1:
            raise ValueError(f"num_select must be at least 1, got {num_select}")
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], target_sizes: Union[Tensor, Sequence]) -> list[dict]:
        """outputs: "pred_logits" (B, Q, C) and "pred_boxes" (B, Q, 4) normalised (cx, cy, w, h).
        target_sizes: (B, 2) each image's (height, width) in pixels, a tensor or a sequence of
        B pairs. Returns B dicts with "scores" (K,), "labels" (K,) and "boxes" (K, 4),
        K = min(num_select, Q * C), best first. Boxes are float32 when pred_boxes are 16-bit."""
        logits, boxes = _predictions(outputs)
        batch, queries, classes = logits.shape
        target_sizes = _target_sizes(target_sizes, batch, boxes.device)
        # reshape, not view: permuted logits are not contiguous.
        prob = logits.sigmoid().reshape(batch, queries * classes)
        scores, flat_index = torch.topk(prob, min(self.num_select, queries * classes), dim=1)
        query_index = flat_index // classes
        labels = flat_index % classes
        xyxy = _pixel_boxes(boxes, target_sizes)
        xyxy = torch.gather(xyxy, 1, query_index.unsqueeze(-1).expand(-1, -1, 4))
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xyxy)]


def _predictions(outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a dict of the model's outputs, got {type(outputs).__name__}")
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise ValueError(f"outputs must hold {key!r}, got keys {sorted(outputs)}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3:
        raise ValueError(f"outputs['pred_logits'] must have shape (B, Q, C), got {tuple(logits.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[:2] != logits.shape[:2]:
        raise ValueError(
            f"outputs['pred_boxes'] must have shape (B, Q, 4) = {(*logits.shape[:2], 4)} to match "
            f"pred_logits {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    return logits, boxes


def _target_sizes(target_sizes, batch: int, device: torch.device) -> Tensor:
    if isinstance(target_sizes, (list, tuple)):
        target_sizes = _stacked_sizes(target_sizes, device)
    if not isinstance(target_sizes, Tensor):
        raise TypeError(
            f"target_sizes must be a (B, 2) tensor or a list of (height, width), "
            f"got {type(target_sizes).__name__}"
        )
    if tuple(target_sizes.shape) != (batch, 2):
        raise ValueError(
            f"target_sizes must have shape ({batch}, 2) (height, width per image), "
            f"got {tuple(target_sizes.shape)}"
        )
    return target_sizes.to(device)


def _stacked_sizes(sizes: Sequence, device: torch.device) -> Tensor:
    if not sizes:
        return torch.empty((0, 2), device=device)
    try:
        if all(isinstance(size, Tensor) for size in sizes):
            return torch.stack(list(sizes)).to(device)
        return torch.as_tensor(sizes, device=device)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"target_sizes must be a list of (height, width) pairs: {error}") from None


def _pixel_boxes(boxes: Tensor, target_sizes: Tensor) -> Tensor:
    """(B, Q, 4) xyxy pixel boxes, in float32 at least: a 16-bit box (bf16 under autocast) holds
    pixel coordinates of a 1333-wide image only to about 8 px."""
    dtype = torch.promote_types(boxes.dtype, torch.float32)  # float32 and float64 unchanged
    xyxy = box_cxcywh_to_xyxy(boxes.to(dtype))
    height, width = target_sizes.to(dtype).unbind(1)
    return xyxy * torch.stack([width, height, width, height], dim=1)[:, None, :]
