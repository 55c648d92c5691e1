"""``MSDeformAttn``: the multi-scale deformable attention module of Deformable DETR.

Parameter names and initialisation follow the official implementation, so its state dicts load
as they are: ``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.ops.ms_deform_attn import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        for name, size in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if size < 1:
                raise ValueError(f"{name} must be at least 1, got {size}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start at zero weight with a bias that fans the points of head h out along the
        # direction 2*pi*h/M, point k at distance k+1 (in pixels of each level).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]
        offsets = offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        query                    (N, Lq, C)
        reference_points         (N, Lq, L, 2) normalised (x, y), or (N, Lq, L, 4) boxes (cx, cy, w, h),
                                 or (N, Lq, L, 6) MonoDETR boxes (cx, cy, l, r, t, b)
        input_flatten            (N, S, C), the L feature maps flattened and concatenated
        input_spatial_shapes     (L, 2) int64 (H, W)
        input_level_start_index  (L,) int64
        input_padding_mask       (N, S) bool, True at padding (those values are zeroed)
        returns                  (N, Lq, C)
        """
        batch, queries, _ = query.shape
        value_len = input_flatten.shape[1]
        self._check_inputs(query, reference_points, input_flatten, input_padding_mask)
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, value_len, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(
            batch, queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = F.softmax(weights, -1).view(
            batch, queries, self.n_heads, self.n_levels, self.n_points
        )
        locations = self._sampling_locations(reference_points, offsets, input_spatial_shapes)
        output = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights
        )
        return self.output_proj(output)

    def _sampling_locations(
        self, reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor
    ) -> Tensor:
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by that level's (W, H).
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            return (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        # Boxes: offsets are relative to half the box size, spread over the points.
        size = reference_points[:, :, None, :, None, 2:]
        if reference_points.shape[-1] == 6:
            # MonoDETR's (cx, cy, l, r, t, b): the box is l + r wide and t + b high.
            size = size[..., 0::2] + size[..., 1::2]
        return reference_points[:, :, None, :, None, :2] + offsets / self.n_points * size * 0.5

    def _check_inputs(self, query, reference_points, input_flatten, input_padding_mask) -> None:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must have shape (N, Lq, {self.d_model}), got {tuple(query.shape)}"
            )
        if input_flatten.dim() != 3 or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"input_flatten must have shape (N, S, {self.d_model}), got {tuple(input_flatten.shape)}"
            )
        expected = (query.shape[0], query.shape[1], self.n_levels)
        if (
            reference_points.dim() != 4
            or tuple(reference_points.shape[:3]) != expected
            or reference_points.shape[-1] not in (2, 4, 6)
        ):
            raise ValueError(
                f"reference_points must have shape {expected + (2,)}, {expected + (4,)} or "
                f"{expected + (6,)}, "
                f"got {tuple(reference_points.shape)}"
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != tuple(
            input_flatten.shape[:2]
        ):
            raise ValueError(
                f"input_padding_mask must have shape {tuple(input_flatten.shape[:2])}, "
                f"got {tuple(input_padding_mask.shape)}"
            )
