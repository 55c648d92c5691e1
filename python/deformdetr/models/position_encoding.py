"""Position encodings of feature maps: sine (normalised to the unpadded image) or learned."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingLearned", "build_position_encoding"]


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine of the (y, x) pixel index at geometric frequencies, as in DETR. With
    ``normalize``, indices are scaled to [0, scale] over each image's unpadded extent (Deformable
    DETR shifts them by ``offset`` = -0.5 pixel first; MonoDETR by 0). Returns
    (B, 2 * num_pos_feats, H, W), y half first."""

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000,
        normalize: bool = False,
        scale: Optional[float] = None,
        offset: float = -0.5,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = _interleave_sin_cos(x_embed[:, :, :, None] / dim_t)
        pos_y = _interleave_sin_cos(y_embed[:, :, :, None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """(..., F) angles -> (..., F): sin of the even ones and cos of the odd ones, paired."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)


class PositionEmbeddingLearned(nn.Module):
    """Learned row and column embeddings (up to 50 x 50 positions), concatenated (x half first)."""

    def __init__(self, num_pos_feats: int = 256):
        super().__init__()
        self.row_embed = nn.Embedding(50, num_pos_feats)
        self.col_embed = nn.Embedding(50, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height > 50 or width > 50:
            raise ValueError(
                f"learned position embeddings cover feature maps up to 50x50, got {height}x{width}"
            )
        x_emb = self.col_embed(torch.arange(width, device=x.device))
        y_emb = self.row_embed(torch.arange(height, device=x.device))
        pos = torch.cat(
            [x_emb.unsqueeze(0).expand(height, -1, -1), y_emb.unsqueeze(1).expand(-1, width, -1)],
            dim=-1,
        )
        return pos.permute(2, 0, 1).unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def build_position_encoding(
    hidden_dim: int, kind: str = "sine", scale: float = 2 * math.pi, offset: float = -0.5
) -> nn.Module:
    """``offset``: the sine encoding's pixel shift, -0.5 in Deformable DETR, 0 in MonoDETR."""
    half = hidden_dim // 2
    if kind in ("sine", "v2"):
        return PositionEmbeddingSine(half, normalize=True, scale=scale, offset=offset)
    if kind in ("learned", "v3"):
        return PositionEmbeddingLearned(half)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
