"""The deformable transformer: an encoder of multi-scale deformable self-attention over the
flattened feature maps and a decoder of self-attention plus deformable cross-attention, with
optional iterative box refinement and two-stage proposals. Names follow the official code."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from deformdetr.ops import Dropout, MSDeformAttn, dropout_after_relu, reference_in_use, spatial_shapes_tensor

__all__ = [
    "DeformableTransformer",
    "DeformableTransformerEncoder",
    "DeformableTransformerEncoderLayer",
    "DeformableTransformerDecoder",
    "DeformableTransformerDecoderLayer",
    "EncodedLevels",
    "inverse_sigmoid",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _pixel_indices(count, device) -> Tensor:
    """0, 1, ..., count - 1 as float32: the official code's linspace(0, count - 1, count), exactly
    (small integers and halves are exact in float32), with a size that torch.export traces
    symbolically where linspace's step count would be baked in."""
    return torch.arange(count, dtype=torch.float32, device=device)


def _clones(module: nn.Module, count: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(count)])


def _activation(name: str):
    activations = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if name not in activations:
        raise ValueError(f"activation must be one of {sorted(activations)}, got {name!r}")
    return activations[name]


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


def _run_layer(layer: nn.Module, recompute: bool, *args, **kwargs):
    """``layer(*args, **kwargs)``; with ``recompute`` (training with activation checkpointing), its
    activations are not kept but recomputed in the backward (same values: the RNG state of
    dropout is replayed)."""
    if recompute and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


def _ratios_for(valid_ratios: Tensor, reference_dims: int) -> Tensor:
    """The valid ratios (N, L, 2) (w, h) repeated to scale references of ``reference_dims``
    coordinates: (x, y) points, (cx, cy, w, h) boxes, MonoDETR's (cx, cy, l, r, t, b)."""
    repeats = reference_dims // 2
    return valid_ratios if repeats == 1 else torch.cat([valid_ratios] * repeats, -1)


class _FeedForward(nn.Module):
    """Base of the layers: the feed-forward block after their attention blocks (linear1 ->
    activation -> dropout -> linear2 -> dropout, residual, layer norm). Its dropouts and norm take
    the official names, numbered after the layer's attention blocks."""

    def _init_ffn(self, d_model: int, d_ffn: int, dropout: float, activation: str, index: int) -> None:
        """linear1, activation, dropout<index>, linear2, dropout<index + 1>, norm<index>, in the
        official order (module construction draws the random initial values in this order)."""
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        setattr(self, f"dropout{index}", Dropout(dropout))
        self.linear2 = nn.Linear(d_ffn, d_model)
        setattr(self, f"dropout{index + 1}", Dropout(dropout))
        setattr(self, f"norm{index}", nn.LayerNorm(d_model))
        self._ffn_index = index

    def _ffn(self, x: Tensor) -> Tensor:
        i = self._ffn_index
        dropout_in, dropout_out, norm = (getattr(self, name) for name in (f"dropout{i}", f"dropout{i + 1}", f"norm{i}"))
        hidden = self.linear1(x)
        # ReLU and dropout in one pass where the native dropout runs (the same values).
        hidden = (dropout_after_relu(dropout_in, hidden) if self.activation is F.relu
                  else dropout_in(self.activation(hidden)))
        return norm(x + dropout_out(self.linear2(hidden)))


@dataclass(frozen=True)
class EncodedLevels:
    """The multi-scale feature maps flattened into one sequence of S positions, with the
    geometry the deformable attention samples by."""

    memory: Tensor  # (N, S, C): the encoder's output (its input, in flatten_levels)
    padding_mask: Tensor  # (N, S), True at padding
    spatial_shapes: Tensor  # (L, 2) int64 (H, W) per level
    level_start_index: Tensor  # (L,) where each level starts in S
    valid_ratios: Tensor  # (N, L, 2) (w, h) unpadded fraction of each level
    shapes: list  # [(H, W)] per level, as Python ints (no device sync to read them)

    @property
    def attention_shapes(self):
        """The level sizes as the attention in use takes them: the tensor for the native kernels;
        the Python sizes for the pure-PyTorch reference, which reads them anyway, and which
        torch.export then traces symbolically (one exported graph for every image size)."""
        return self.shapes if reference_in_use() else self.spatial_shapes


class DeformableTransformerEncoderLayer(_FeedForward):
    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self._init_ffn(d_model, d_ffn, dropout, activation, index=2)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attended = self.self_attn(
            _with_pos(src, pos), reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attended))
        return self._ffn(src)


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.checkpoint_activations = False

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios: Tensor, device) -> Tensor:
        """Each query's pixel centre on every level, normalised by the unpadded extent:
        (N, S, L, 2) (x, y)."""
        points = []
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(_pixel_indices(height, device) + 0.5, _pixel_indices(width, device) + 0.5,
                                          indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None,
                shapes_list=None):
        shapes = shapes_list if shapes_list is not None else [tuple(s) for s in spatial_shapes.tolist()]
        reference_points = self.get_reference_points(shapes, valid_ratios, device=src.device)
        output = src
        for layer in self.layers:
            output = _run_layer(layer, self.checkpoint_activations, output, pos, reference_points, spatial_shapes,
                                level_start_index, padding_mask)
        return output


class DeformableTransformerDecoderLayer(_FeedForward):
    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self._init_ffn(d_model, d_ffn, dropout, activation, index=3)

    def forward(self, tgt, query_pos, reference_points, src, src_spatial_shapes, level_start_index,
                src_padding_mask=None):
        q = k = _with_pos(tgt, query_pos)
        attended = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1))[0]
        tgt = self.norm2(tgt + self.dropout2(attended.transpose(0, 1)))
        attended = self.cross_attn(
            _with_pos(tgt, query_pos), reference_points, src, src_spatial_shapes, level_start_index,
            src_padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(attended))
        return self._ffn(tgt)


class DeformableTransformerDecoder(nn.Module):
    """With ``bbox_embed`` set (box refinement), each layer refines the reference boxes that the
    next layer samples around; the refined references are detached, as in the paper."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, return_intermediate: bool = False):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.checkpoint_activations = False
        self.return_intermediate = return_intermediate
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, reference_points, src, src_spatial_shapes, src_level_start_index,
                src_valid_ratios, query_pos=None, src_padding_mask=None, **layer_inputs):
        """Runs the layers; ``layer_inputs`` go to each layer as keywords (the depth-aware
        decoder's depth memory). Returns (states, references) plus :meth:`layer_extras`, each
        stacked over the layers with ``return_intermediate``, else of the last layer."""
        output = tgt
        per_layer = []
        for lid, layer in enumerate(self.layers):
            scale = _ratios_for(src_valid_ratios, reference_points.shape[-1])
            reference_points_input = reference_points[:, :, None] * scale[:, None]
            output = _run_layer(layer, self.checkpoint_activations, output, query_pos, reference_points_input,
                                src, src_spatial_shapes, src_level_start_index, src_padding_mask, **layer_inputs)
            if self.bbox_embed is not None:
                reference_points = self._refine(self.bbox_embed[lid](output), reference_points)
            per_layer.append((output, reference_points, *self.layer_extras(lid, output)))
        if self.return_intermediate:
            return tuple(torch.stack(values) for values in zip(*per_layer))
        return per_layer[-1]

    def layer_extras(self, lid: int, output: Tensor) -> tuple:
        """What a decoder family computes from each layer's output besides the references (the
        depth-aware decoder's 3D sizes); returned after the states and references."""
        return ()

    @staticmethod
    def _refine(delta: Tensor, reference_points: Tensor) -> Tensor:
        """New references from a head's output: the whole box refined when the references are
        boxes of the head's size (4-d; MonoDETR's 6-d), else only the centre."""
        if reference_points.shape[-1] == delta.shape[-1]:
            refined = delta + inverse_sigmoid(reference_points)
        else:
            refined = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
        return refined.sigmoid().detach()


class DeformableTransformer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.1,
                 activation: str = "relu", return_intermediate_dec: bool = False, num_feature_levels: int = 4,
                 dec_n_points: int = 4, enc_n_points: int = 4, two_stage: bool = False,
                 two_stage_num_proposals: int = 300, decoder: Optional[nn.Module] = None):
        """``decoder``: a decoder to use instead of the deformable one (MonoDETR passes its
        depth-aware decoder); it is initialised with the rest of the transformer."""
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        encoder_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        if decoder is None:
            decoder_layer = DeformableTransformerDecoderLayer(
                d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, dec_n_points
            )
            decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers, return_intermediate_dec)
        self.decoder = decoder
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder and decoder layer in the backward instead of keeping its
        activations: less memory in training, the same gradients, some more time."""
        self.encoder.checkpoint_activations = self.decoder.checkpoint_activations = bool(enabled)

    def get_proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """Sine embedding of proposal boxes (logits): (N, K, 4) -> (N, K, 2 * d_model). The
        official code fixes 128 features per coordinate, which is d_model // 2 at its d_model 256."""
        num_pos_feats, temperature, scale = self.d_model // 2, 10000, 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
        pos = proposals.sigmoid() * scale
        pos = pos[:, :, :, None] / dim_t
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(self, memory: Tensor, memory_padding_mask: Tensor, spatial_shapes):
        """One proposal per encoder position (its pixel, size 0.05 * 2^level) as logits, inf where
        invalid; and the memory projected for the proposal heads."""
        batch = memory.shape[0]
        proposals = []
        cursor = 0
        for level, (height, width) in enumerate(spatial_shapes):
            level_mask = memory_padding_mask[:, cursor : cursor + height * width].view(batch, height, width, 1)
            valid_h = torch.sum(~level_mask[:, :, 0, 0], 1)
            valid_w = torch.sum(~level_mask[:, 0, :, 0], 1)
            grid_y, grid_x = torch.meshgrid(_pixel_indices(height, memory.device), _pixel_indices(width, memory.device),
                                            indexing="ij")
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(batch, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0**level)
            proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
            cursor += height * width
        output_proposals = torch.cat(proposals, 1)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
        output_proposals = output_proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
        output_memory = output_memory.masked_fill(~valid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    @staticmethod
    def get_valid_ratio(mask: Tensor) -> Tensor:
        """The unpadded fraction of the map, (N, 2) (w, h)."""
        _, height, width = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)

    def flatten_levels(self, srcs, masks, pos_embeds) -> tuple[EncodedLevels, Tensor]:
        """The feature maps and masks of all levels flattened and concatenated (``memory`` not
        yet encoded), with the position (+ level) embeddings beside them."""
        src_flatten, mask_flatten, lvl_pos_embed_flatten, shapes = [], [], [], []
        for level, (src, mask, pos_embed) in enumerate(zip(srcs, masks, pos_embeds)):
            height, width = src.shape[-2:]  # symbolic under torch.export: int() would bake them in
            shapes.append((height, width))
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            lvl_pos_embed_flatten.append(
                pos_embed.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            )
        src_flatten = torch.cat(src_flatten, 1)
        spatial_shapes = spatial_shapes_tensor(shapes, src_flatten.device)
        levels = EncodedLevels(
            memory=src_flatten,
            padding_mask=torch.cat(mask_flatten, 1),
            spatial_shapes=spatial_shapes,
            level_start_index=torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])),
            valid_ratios=torch.stack([self.get_valid_ratio(m) for m in masks], 1),
            shapes=shapes,
        )
        return levels, torch.cat(lvl_pos_embed_flatten, 1)

    def encode(self, srcs, masks, pos_embeds) -> EncodedLevels:
        """The encoder's memory over the flattened levels, with their geometry."""
        levels, pos = self.flatten_levels(srcs, masks, pos_embeds)
        memory = self.encoder(levels.memory, levels.attention_shapes, levels.level_start_index,
                              levels.valid_ratios, pos, levels.padding_mask, shapes_list=levels.shapes)
        return replace(levels, memory=memory)

    def learned_queries(self, query_embed: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """(content, position, reference points) of learned queries: ``query_embed`` (Q, 2C) holds
        the position half first; the references are predicted from the positions."""
        query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)
        query_pos = query_pos.unsqueeze(0).expand(batch, -1, -1)
        tgt = tgt.unsqueeze(0).expand(batch, -1, -1)
        return tgt, query_pos, self.reference_points(query_pos).sigmoid()

    def decode(self, tgt, reference_points, query_pos, levels: EncodedLevels, **layer_inputs):
        """The decoder's queries attending to the encoded levels (see the decoder's forward)."""
        return self.decoder(tgt, reference_points, levels.memory, levels.attention_shapes, levels.level_start_index,
                            levels.valid_ratios, query_pos, levels.padding_mask, **layer_inputs)

    def forward(self, srcs, masks, pos_embeds, query_embed: Optional[Tensor] = None):
        if not self.two_stage and query_embed is None:
            raise ValueError("query_embed is required unless two_stage=True")
        levels = self.encode(srcs, masks, pos_embeds)
        memory = levels.memory
        batch, _, channels = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            output_memory, output_proposals = self.gen_encoder_output_proposals(memory, levels.padding_mask,
                                                                                levels.shapes)
            if memory.shape[1] < self.two_stage_num_proposals:
                raise ValueError(
                    f"two-stage selects {self.two_stage_num_proposals} proposals but the feature "
                    f"maps hold only {memory.shape[1]} positions: use larger images (or fewer queries)"
                )
            head = self.decoder.num_layers
            enc_outputs_class = self.decoder.class_embed[head](output_memory)
            enc_outputs_coord_unact = self.decoder.bbox_embed[head](output_memory) + output_proposals
            topk = torch.topk(enc_outputs_class[..., 0], self.two_stage_num_proposals, dim=1)[1]
            topk_coords_unact = torch.gather(
                enc_outputs_coord_unact, 1, topk.unsqueeze(-1).repeat(1, 1, 4)
            ).detach()
            reference_points = topk_coords_unact.sigmoid()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact)))
            query_pos, tgt = torch.split(pos_trans_out, channels, dim=2)
        else:
            tgt, query_pos, reference_points = self.learned_queries(query_embed, batch)
        init_reference = reference_points
        hs, inter_references = self.decode(tgt, reference_points, query_pos, levels)
        return hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact
