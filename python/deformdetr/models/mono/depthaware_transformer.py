"""MonoDETR's depth-aware transformer: Deformable DETR's visual encoder, and a decoder whose
layers attend first to the depth memory (depth cross-attention), then among the queries
(self-attention, per query group while training), then to the visual memory (deformable
cross-attention), then an FFN. Reference points grow from (x, y) to 6-d boxes
(cx, cy, l, r, t, b) with iterative refinement. Names follow the official implementation."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from deformdetr.models.detector import MLP
from deformdetr.models.deformable_transformer import (
    DeformableTransformer,
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
    _with_pos,
)
from deformdetr.ops import Dropout

__all__ = ["DepthAwareTransformer", "DepthAwareDecoder", "DepthAwareDecoderLayer"]


class DepthAwareDecoderLayer(DeformableTransformerDecoderLayer):
    """Deformable DETR's decoder layer (``cross_attn``, ``self_attn``, FFN and their norms) with a
    depth cross-attention (``cross_attn_depth``, ``norm_depth``) in front, and the official
    self-attention input projections (``sa_*``; ``sa_v_proj`` exists but, as officially, the
    values are the unprojected queries)."""

    def __init__(self, *args, group_num: int = 1, **kwargs):
        """Arguments as :class:`DeformableTransformerDecoderLayer`'s, and ``group_num``."""
        super().__init__(*args, **kwargs)
        d_model, n_heads, dropout = self.self_attn.embed_dim, self.self_attn.num_heads, self.self_attn.dropout
        self.cross_attn_depth = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout_depth = Dropout(dropout)
        self.norm_depth = nn.LayerNorm(d_model)
        self.group_num = group_num
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.nhead = n_heads

    def forward(self, tgt, query_pos, reference_points, src, src_spatial_shapes, level_start_index,
                src_padding_mask, *, depth_pos_embed, mask_depth):
        """tgt, query_pos (B, Q, C); depth_pos_embed (S_depth, B, C) with mask_depth (B, S_depth)."""
        attended = self.cross_attn_depth(tgt.transpose(0, 1), depth_pos_embed, depth_pos_embed,
                                         key_padding_mask=mask_depth)[0]
        tgt = self.norm_depth(tgt + self.dropout_depth(attended.transpose(0, 1)))

        qk = _with_pos(tgt, query_pos)
        q = (self.sa_qcontent_proj(qk) + self.sa_qpos_proj(qk)).transpose(0, 1)
        k = (self.sa_kcontent_proj(qk) + self.sa_kpos_proj(qk)).transpose(0, 1)
        v = tgt.transpose(0, 1)
        if self.training and self.group_num > 1:
            attended = self._grouped_self_attention(q, k, v)
        else:
            attended = self.self_attn(q, k, v)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attended))

        attended = self.cross_attn(_with_pos(tgt, query_pos), reference_points, src, src_spatial_shapes,
                                   level_start_index, src_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self._ffn(tgt)

    def _grouped_self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Training with query groups (Group DETR): the (G * Q, B, C) queries attend only within
        their own group of Q; the groups run as extra batch entries. Returns (B, G * Q, C)."""
        total, batch = q.shape[:2]
        if total % self.group_num != 0:
            raise ValueError(f"{total} queries do not split into {self.group_num} equal groups")
        size = total // self.group_num

        def stack_groups(x: Tensor) -> Tensor:
            return torch.cat(x.split(size, dim=0), dim=1)  # (Q, G * B, C), group-major

        attended = self.self_attn(stack_groups(q), stack_groups(k), stack_groups(v))[0]
        return torch.cat(attended.split(batch, dim=1), dim=0).transpose(0, 1)


class DepthAwareDecoder(DeformableTransformerDecoder):
    """With ``bbox_embed`` (box refinement) each layer refines the references; ``dim_embed`` gives
    each layer's 3D size. ``query_scale`` and ``ref_point_head`` exist, as officially, for
    variants (DAB queries) that the official default configuration leaves off; they are unused."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, return_intermediate: bool = False,
                 d_model: int = 256):
        super().__init__(decoder_layer, num_layers, return_intermediate)
        self.dim_embed = None
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, 2, 2)

    def layer_extras(self, lid: int, output: Tensor) -> tuple:
        """Each layer's 3D sizes (h, w, l), from the size head MonoDETR shares with the decoder."""
        if self.dim_embed is None:
            raise RuntimeError("the depth-aware decoder needs dim_embed (set by MonoDETR)")
        return (self.dim_embed[lid](output),)


class DepthAwareTransformer(DeformableTransformer):
    """Deformable DETR's transformer (``encoder``, ``level_embed``, ``reference_points``) with the
    depth-aware decoder. Only the official default query setup (learned queries, no two-stage)."""

    def __init__(self, group_num: int = 11, **arguments):
        """``arguments``: those of :class:`DeformableTransformer` (``two_stage`` is off)."""
        given = inspect.signature(DeformableTransformer).bind(**arguments, two_stage=False)
        given.apply_defaults()
        a = given.arguments
        # The decoder first: module construction draws the random initial values in this order.
        layer = DepthAwareDecoderLayer(a["d_model"], a["dim_feedforward"], a["dropout"], a["activation"],
                                       a["num_feature_levels"], a["nhead"], a["dec_n_points"], group_num=group_num)
        decoder = DepthAwareDecoder(layer, a["num_decoder_layers"], a["return_intermediate_dec"], a["d_model"])
        super().__init__(**{**a, "decoder": decoder})
        self.group_num = group_num

    def forward(self, srcs, masks, pos_embeds, query_embed: Tensor, depth_pos_embed: Tensor,
                depth_mask: Tensor):
        """query_embed (Q, 2C) (position half first); depth_pos_embed (B, C, H16, W16) the depth
        memory with its padding mask depth_mask (B, H16, W16). Returns (hs, init_reference,
        inter_references, inter_references_dim)."""
        levels = self.encode(srcs, masks, pos_embeds)
        tgt, query_pos, reference_points = self.learned_queries(query_embed, levels.memory.shape[0])
        hs, inter_references, inter_references_dim = self.decode(
            tgt, reference_points, query_pos, levels,
            depth_pos_embed=depth_pos_embed.flatten(2).permute(2, 0, 1), mask_depth=depth_mask.flatten(1),
        )
        return hs, reference_points, inter_references, inter_references_dim
