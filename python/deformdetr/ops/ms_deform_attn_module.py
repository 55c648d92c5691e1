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

from deformdetr.ops.eager import eager_on_cpu
from deformdetr.ops.ms_deform_attn import ms_deform_attn, spatial_shapes_tensor

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
        input_spatial_shapes     (L, 2) int64 (H, W); a list of L (H, W) pairs is converted
        input_level_start_index  (L,) int64; a list of L ints is converted
        input_padding_mask       (N, S) bool, True at padding (those values are zeroed)
        returns                  (N, Lq, C)
        """
        spatial_shapes = self._level_tensor(
            "input_spatial_shapes", input_spatial_shapes, (self.n_levels, 2), input_flatten
        )
        level_start_index = self._level_tensor(
            "input_level_start_index", input_level_start_index, (self.n_levels,), input_flatten
        )
        _check_mask_dtype(input_padding_mask)
        self._check_inputs(query, reference_points, input_flatten, input_padding_mask)
        batch, queries, _ = query.shape
        value_len = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None and _may_pad(input_padding_mask):
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
        locations = self._sampling_locations(reference_points, offsets, spatial_shapes)
        # Sizes given as a list go on as they are: the reference reads them without the tensor's
        # values (what torch.export needs to trace them).
        sizes = input_spatial_shapes if isinstance(input_spatial_shapes, (list, tuple)) else spatial_shapes
        output = ms_deform_attn(value, sizes, level_start_index, locations, weights)
        return self.output_proj(output)

    def _sampling_locations(
        self, reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor
    ) -> Tensor:
        if reference_points.shape[-1] == 2:
            return _point_locations(reference_points, offsets, spatial_shapes)
        # Boxes: offsets are relative to half the box size, spread over the points.
        size = reference_points[:, :, None, :, None, 2:]
        if reference_points.shape[-1] == 6:
            # MonoDETR's (cx, cy, l, r, t, b): the box is l + r wide and t + b high.
            size = size[..., 0::2] + size[..., 1::2]
        return reference_points[:, :, None, :, None, :2] + offsets / self.n_points * size * 0.5

    def _level_tensor(self, name: str, levels, shape: tuple, input_flatten: Tensor) -> Tensor:
        # Only shapes are checked: reading values would synchronise with a CUDA device (the
        # kernels' binding checks them on the CPU).
        if isinstance(levels, (list, tuple)) and levels and isinstance(levels[0], (list, tuple)):
            levels = spatial_shapes_tensor(levels, input_flatten.device)
        elif isinstance(levels, (list, tuple)):
            levels = torch.as_tensor(levels, dtype=torch.int64, device=input_flatten.device)
        if not isinstance(levels, Tensor):
            raise TypeError(
                f"{name} must be an int64 tensor or a list, got {type(levels).__name__}"
            )
        if tuple(levels.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (one per level, n_levels={self.n_levels}), "
                f"got {tuple(levels.shape)}"
            )
        return levels

    def _check_inputs(self, query, reference_points, input_flatten, input_padding_mask) -> None:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"query must have shape (N, Lq, {self.d_model}), got {tuple(query.shape)}"
            )
        if input_flatten.dim() != 3 or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"input_flatten must have shape (N, S, {self.d_model}), got {tuple(input_flatten.shape)}"
            )
        if input_flatten.shape[0] != query.shape[0]:
            raise ValueError(
                f"input_flatten has batch size {input_flatten.shape[0]} but query has "
                f"{query.shape[0]}: input_flatten {tuple(input_flatten.shape)}, "
                f"query {tuple(query.shape)}"
            )
        self._check_reference_points(query, reference_points)
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != tuple(
            input_flatten.shape[:2]
        ):
            raise ValueError(
                f"input_padding_mask must have shape {tuple(input_flatten.shape[:2])}, "
                f"got {tuple(input_padding_mask.shape)}"
            )

    def _check_reference_points(self, query, reference_points) -> None:
        expected = (query.shape[0], query.shape[1], self.n_levels)
        if (
            reference_points.dim() != 4
            or tuple(reference_points.shape[:3]) != expected
            or reference_points.shape[-1] not in (2, 4, 6)
        ):
            raise ValueError(
                f"reference_points must have shape (N, Lq, n_levels, 2|4|6) = "
                f"({', '.join(map(str, expected))}, 2|4|6) "
                f"to match query (N, Lq) = {expected[:2]} and n_levels={self.n_levels}, "
                f"got {tuple(reference_points.shape)}"
            )


def _may_pad(mask: Tensor) -> bool:
    """Whether the padding mask may mark a position. Only on the CPU, eagerly, is it read: there
    it costs microseconds, and a batch of images of one size (inference on one image, most
    training batches at full resolution) skips zeroing the value (a copy and a pass over it, in
    each attention layer, and their backward); on a GPU reading it would wait for the device,
    and under torch.compile or torch.export it would break the graph."""
    return not eager_on_cpu(mask) or bool(mask.any())


def _point_locations(reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor) -> Tensor:
    """``reference + offset / (W, H)``: offsets are in pixels of each sample's level. The official
    arithmetic, laid out with (point, x/y) flattened last so that both broadcasts run over rows of
    P * 2 contiguous values instead of pairs: 5x faster on the CPU at the encoder's size (7.0
    against 35.8 ms for 17821 queries, ``python bench/eager_tweaks.py``), the same values bit for
    bit (the sizes are cast to the offsets' dtype first, as type promotion does)."""
    batch, queries, heads, levels, points, _ = offsets.shape
    normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
    per_sample = normalizer[:, None, :].expand(levels, points, 2).reshape(levels * points * 2)
    reference = reference_points[:, :, None, :, None, :].expand(batch, queries, 1, levels, points, 2)
    reference = reference.reshape(batch, queries, 1, levels * points * 2)
    flat = offsets.reshape(batch, queries, heads, levels * points * 2)
    return (reference + flat / per_sample).view(offsets.shape)


def _check_mask_dtype(mask: Optional[Tensor]) -> None:
    # Bool only, as officially: 0/1 masks disagree on which value marks padding (an attention
    # mask's 1 means "attend"), so converting them would silently invert some.
    if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool):
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(
            f"input_padding_mask must be a bool tensor, True at padding, got {got}; "
            f"for a 0/1 mask with 1 at padding pass mask.bool()"
        )
