"""The depth-map loss of MonoDETR (after CaDDN's DDN loss): each pixel's target is the LID bin of
the depth of the object whose 2D box covers it (the nearest object where boxes overlap; the
"beyond range" bin for background), scored by a softmax focal loss, with foreground pixels
weighted ``fg_weight`` and background ``bg_weight``, summed and divided by the pixel count."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.models.mono.depth_predictor import lid_bin_indices

__all__ = ["DDNLoss", "softmax_focal_loss"]


def softmax_focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       eps: float = 1e-6) -> Tensor:
    """Per-pixel focal loss over the classes of dim 1: (B, C, ...) logits, (B, ...) int64 targets.
    As the official (kornia's) version, every class contributes with weight ``eps`` besides the
    target class's 1."""
    log_prob = F.log_softmax(logits, dim=1)
    focal = -alpha * torch.pow(1.0 - F.softmax(logits, dim=1), gamma) * log_prob
    one_hot = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0) + eps
    return (one_hot * focal).sum(1)


def _box_corners(boxes_xyxy: Tensor) -> Tensor:
    """Pixel box corners: (x0, y0) floored, (x1, y1) ceiled, as integers."""
    return torch.cat([boxes_xyxy[:, :2].floor(), boxes_xyxy[:, 2:].ceil()], 1).long()


class DDNLoss(nn.Module):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, fg_weight: float = 13, bg_weight: float = 1,
                 num_depth_bins: int = 80, depth_min: float = 1e-3, depth_max: float = 60.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.fg_weight = fg_weight
        self.bg_weight = bg_weight
        self.num_depth_bins = num_depth_bins
        self.depth_min = depth_min
        self.depth_max = depth_max

    def forward(self, depth_logits: Tensor, gt_boxes2d: Tensor, num_gt_per_img: Sequence[int],
                gt_center_depth: Tensor) -> Tensor:
        """depth_logits (B, D+1, H, W); gt_boxes2d (N, 4) xyxy in depth-map pixels for all images
        together, num_gt_per_img how many belong to each; gt_center_depth (N,)."""
        batch, _, height, width = depth_logits.shape
        corners = _box_corners(gt_boxes2d).split(list(num_gt_per_img), dim=0)
        depths = gt_center_depth.split(list(num_gt_per_img), dim=0)
        depth_map = torch.zeros((batch, height, width), device=depth_logits.device, dtype=depth_logits.dtype)
        fg_mask = torch.zeros((batch, height, width), dtype=torch.bool, device=depth_logits.device)
        for b in range(len(corners)):
            # Farthest first, so that nearer objects overwrite them. Python slices, as officially
            # (a negative corner counts from the end).
            image_depths, order = torch.sort(depths[b], dim=0, descending=True)
            for (u1, v1, u2, v2), depth in zip(corners[b][order].tolist(), image_depths):
                depth_map[b, v1:v2, u1:u2] = depth
            for u1, v1, u2, v2 in corners[b].tolist():
                fg_mask[b, v1:v2, u1:u2] = True
        target = lid_bin_indices(depth_map, self.num_depth_bins, self.depth_min, self.depth_max)
        loss = softmax_focal_loss(depth_logits, target, self.alpha, self.gamma)
        weights = self.fg_weight * fg_mask + self.bg_weight * ~fg_mask
        loss = loss * weights
        num_pixels = fg_mask.numel()
        return loss[fg_mask].sum() / num_pixels + loss[~fg_mask].sum() / num_pixels
