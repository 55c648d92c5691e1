"""MonoDETR's depth predictor: a foreground depth map over linear-increasing depth bins (LID),
predicted from the stride 8/16/32 features fused at stride 16, and a one-layer transformer
encoder whose output, plus an embedding of the predicted depth, is the decoder's depth memory.
Module and parameter names follow the official implementation."""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.ops import Dropout, dropout_after_relu

__all__ = ["DepthPredictor", "TransformerEncoder", "TransformerEncoderLayer", "lid_bin_values", "lid_bin_indices"]


def lid_bin_values(num_bins: int, depth_min: float, depth_max: float) -> Tensor:
    """The official depth of each of the ``num_bins`` LID bins (bin i is proportional to i + 1
    wide; the formula works out to the bin's near edge, depth_min + bin_size * i (i + 1) / 2),
    followed by ``depth_max`` for the last, "beyond range", bin: (num_bins + 1,)."""
    bin_size = 2 * (depth_max - depth_min) / (num_bins * (1 + num_bins))
    index = torch.linspace(0, num_bins - 1, num_bins)
    centres = (index + 0.5).pow(2) * bin_size / 2 - bin_size / 8 + depth_min
    return torch.cat([centres, torch.tensor([depth_max])], dim=0)


def lid_bin_indices(depth: Tensor, num_bins: int, depth_min: float, depth_max: float) -> Tensor:
    """The LID bin of each depth, int64; depths outside [depth_min, depth_max] (and non-finite
    ones) fall in bin ``num_bins``."""
    bin_size = 2 * (depth_max - depth_min) / (num_bins * (1 + num_bins))
    indices = -0.5 + 0.5 * torch.sqrt(1 + 8 * (depth - depth_min) / bin_size)
    outside = (indices < 0) | (indices > num_bins) | ~torch.isfinite(indices)
    indices = indices.masked_fill(outside, num_bins)
    return indices.to(torch.int64)


class TransformerEncoderLayer(nn.Module):
    """DETR's post-norm encoder layer: self-attention (position added to queries and keys), FFN.
    Sequences are (S, B, C)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, src: Tensor, src_key_padding_mask: Optional[Tensor], pos: Optional[Tensor]) -> Tensor:
        q = k = src if pos is None else src + pos
        attended = self.self_attn(q, k, value=src, key_padding_mask=src_key_padding_mask)[0]
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(dropout_after_relu(self.dropout, self.linear1(src)))
        return self.norm2(src + self.dropout2(hidden))


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, src_key_padding_mask: Optional[Tensor], pos: Optional[Tensor]) -> Tensor:
        output = src
        for layer in self.layers:
            output = layer(output, src_key_padding_mask=src_key_padding_mask, pos=pos)
        return output if self.norm is None else self.norm(output)


def _conv_gn(d_model: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(d_model, d_model, kernel_size=(kernel, kernel), stride=(stride, stride), padding=kernel // 2),
        nn.GroupNorm(32, d_model),
    )


class DepthPredictor(nn.Module):
    """Args: d_model (the transformer width; officially 256), the LID bins (num_depth_bins,
    depth_min, depth_max), and the depth encoder's heads and FFN width (officially fixed at 8 and
    256). The depth positional embedding has one row per metre up to ``int(depth_max)``."""

    def __init__(
        self,
        d_model: int = 256,
        num_depth_bins: int = 80,
        depth_min: float = 1e-3,
        depth_max: float = 60.0,
        encoder_nhead: int = 8,
        encoder_dim_feedforward: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_depth_bins = int(num_depth_bins)
        self.depth_min = float(depth_min)
        self.depth_max = float(depth_max)
        # A parameter that is never trained, as officially (so it sits in the state dict).
        self.depth_bin_values = nn.Parameter(
            lid_bin_values(self.num_depth_bins, self.depth_min, self.depth_max), requires_grad=False
        )
        self.downsample = _conv_gn(d_model, 3, stride=2)
        self.proj = _conv_gn(d_model, 1)
        self.upsample = _conv_gn(d_model, 1)
        self.depth_head = nn.Sequential(
            nn.Conv2d(d_model, d_model, kernel_size=(3, 3), padding=1),
            nn.GroupNorm(32, num_channels=d_model),
            nn.ReLU(),
            nn.Conv2d(d_model, d_model, kernel_size=(3, 3), padding=1),
            nn.GroupNorm(32, num_channels=d_model),
            nn.ReLU(),
        )
        self.depth_classifier = nn.Conv2d(d_model, self.num_depth_bins + 1, kernel_size=(1, 1))
        layer = TransformerEncoderLayer(d_model, nhead=encoder_nhead, dim_feedforward=encoder_dim_feedforward,
                                        dropout=dropout)
        self.depth_encoder = TransformerEncoder(layer, 1)
        self.depth_pos_embed = nn.Embedding(int(self.depth_max) + 1, d_model)

    def forward(self, feature: list[Tensor], mask: Tensor, pos: Tensor):
        """feature: the input projections of the 4 levels (strides 8, 16, 32, 64); mask and pos of
        the stride-16 level. Returns (depth_logits (B, D+1, H16, W16), depth_embed (B, C, H16, W16),
        weighted_depth (B, H16, W16), depth_pos_embed_ip (B, C, H16, W16))."""
        if len(feature) != 4:
            raise ValueError(f"the depth predictor needs 4 feature levels, got {len(feature)}")
        src_16 = self.proj(feature[1])
        src_32 = self.upsample(F.interpolate(feature[2], size=src_16.shape[-2:], mode="bilinear"))
        src_8 = self.downsample(feature[0])
        src = self.depth_head((src_8 + src_16 + src_32) / 3)
        depth_logits = self.depth_classifier(src)
        depth_probs = F.softmax(depth_logits, dim=1)
        weighted_depth = (depth_probs * self.depth_bin_values.reshape(1, -1, 1, 1)).sum(dim=1)

        batch, channels, height, width = src.shape
        memory = self.depth_encoder(src.flatten(2).permute(2, 0, 1), mask.flatten(1), pos.flatten(2).permute(2, 0, 1))
        depth_embed = memory.permute(1, 2, 0).reshape(batch, channels, height, width)
        depth_pos_embed_ip = self.interpolate_depth_embed(weighted_depth)
        return depth_logits, depth_embed + depth_pos_embed_ip, weighted_depth, depth_pos_embed_ip

    def interpolate_depth_embed(self, depth: Tensor) -> Tensor:
        """Linear interpolation of the per-metre embedding at each pixel's depth: (B, C, H, W)."""
        depth = depth.clamp(min=0.0, max=self.depth_max)  # both floats: torch's ONNX exporter fails on mixed bounds
        floor = depth.floor()
        delta = (depth - floor).unsqueeze(-1)
        lower = floor.long()
        upper = (lower + 1).clamp(max=self.depth_pos_embed.num_embeddings - 1)
        embed = self.depth_pos_embed(lower) * (1 - delta) + self.depth_pos_embed(upper) * delta
        return embed.permute(0, 3, 1, 2)
