"""Deformable DETR (Zhu et al., ICLR 2021): the detector, its five official variants, and loading
of official checkpoints. Module and parameter names equal the official implementation's."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from deformdetr._deprecated import moved_names
from deformdetr.models.backbone import Joiner
from deformdetr.models import checkpoint as ckpt
from deformdetr.models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from deformdetr.models import detector
from deformdetr.models.detector import MLP, MultiScaleDetector
from deformdetr.models.nested import as_padded_batch, check_images

__all__ = [
    "MLP",
    "DeformableDETR",
    "DeformableDETRConfig",
    "VARIANTS",
    "deformable_detr",
    "build_deformable_detr",
    "config_from_state_dict",
]

__getattr__ = moved_names(__name__, {name: f"deformdetr.models.checkpoint:{name}" for name in (
    "load_checkpoint", "read_checkpoint", "model_state_of", "settings_from_args", "state_dict_mismatches")})


class DeformableDETR(MultiScaleDetector):
    def __init__(
        self,
        backbone: Joiner,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_feature_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
    ):
        super().__init__()
        if two_stage and not with_box_refine:
            # The official two-stage model always runs with box refinement; its encoder head
            # reuses the refinement heads' extra copy.
            raise ValueError("two_stage=True requires with_box_refine=True (as in the official code)")
        self.num_queries = num_queries
        self.transformer = transformer
        hidden_dim = transformer.d_model
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_feature_levels = num_feature_levels
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        self.input_proj = self.input_projections(backbone, hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self._init_heads(num_classes)
        self._share_or_clone_heads()

    def _init_heads(self, num_classes: int) -> None:
        # Focal-loss prior: every class starts at probability 0.01.
        prior_prob = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)

    def _share_or_clone_heads(self) -> None:
        """One head per decoder layer (plus one for the two-stage encoder): independent copies
        with box refinement, the same module repeated without it (state-dict keys as official)."""
        decoder = self.transformer.decoder
        num_pred = decoder.num_layers + 1 if self.two_stage else decoder.num_layers
        if self.with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(self.class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(self.bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList(self.class_embed for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(self.bbox_embed for _ in range(num_pred))
            decoder.bbox_embed = None
        if self.two_stage:
            decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def forward(self, images: Union[Tensor, Sequence[Tensor]], mask: Optional[Tensor] = None) -> dict:
        """images: a list of (3, H, W) tensors of any sizes (padded here), or a (B, 3, H, W)
        tensor with an optional (B, H, W) mask, True at padding. Boxes come out normalised
        (cx, cy, w, h) relative to each image's own (unpadded) size."""
        images, mask = as_padded_batch(images, mask)
        check_images(images, self.class_embed[0].weight.dtype)
        srcs, masks, pos = self.multi_scale_features(images, mask)
        query_embeds = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(
            srcs, masks, pos, query_embeds
        )
        outputs_class, outputs_coord = self._predict(hs, init_reference, inter_references)
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": c, "pred_boxes": b} for c, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out

    def _predict(self, hs: Tensor, init_reference: Tensor, inter_references: Tensor):
        """Class logits and boxes of every decoder layer, each relative to the reference that
        layer sampled around."""
        classes, coords = [], []
        for level in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if level == 0 else inter_references[level - 1])
            delta = self.bbox_embed[level](hs[level])
            if reference.shape[-1] == 4:
                boxes = delta + reference
            else:
                boxes = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            classes.append(self.class_embed[level](hs[level]))
            coords.append(boxes.sigmoid())
        return torch.stack(classes), torch.stack(coords)


@dataclass(frozen=True)
class DeformableDETRConfig:
    """The model's settings, named and defaulted as the official ``main.py`` arguments."""

    num_classes: int = 91
    backbone: str = "resnet50"
    dilation: bool = False
    position_embedding: str = "sine"
    position_embedding_scale: float = 2 * math.pi
    num_feature_levels: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    hidden_dim: int = 256
    dropout: float = 0.1
    nheads: int = 8
    num_queries: int = 300
    dec_n_points: int = 4
    enc_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False
    aux_loss: bool = True
    lr_backbone: float = 2e-5  # > 0 trains layer2..layer4 of the backbone, as officially
    backbone_from_scratch: bool = False  # not official: train all of the ResNet, with batch norm
    checkpoint_activations: bool = False  # recompute transformer layers in the backward (memory)


#: The five official variants (the official configs/*.sh), as overrides of the defaults.
VARIANTS = {
    "single_scale": dict(num_feature_levels=1),
    "single_scale_dc5": dict(num_feature_levels=1, dilation=True),
    "multi_scale": dict(),
    "box_refine": dict(with_box_refine=True),
    "two_stage": dict(with_box_refine=True, two_stage=True),
}


def build_deformable_detr(config: DeformableDETRConfig) -> DeformableDETR:
    backbone = detector.build_joiner(config, train_backbone=config.lr_backbone > 0,
                            scale=config.position_embedding_scale)
    transformer = DeformableTransformer(
        **detector.transformer_arguments(config), two_stage=config.two_stage, two_stage_num_proposals=config.num_queries
    )
    transformer.set_activation_checkpointing(config.checkpoint_activations)
    model = DeformableDETR(backbone, transformer, **detector.config_values(
        config, "num_classes", "num_queries", "num_feature_levels", "aux_loss", "with_box_refine", "two_stage"))
    model.config = config
    return model


def deformable_detr(
    variant: str = "multi_scale",
    num_classes: int = 91,
    pretrained_backbone: Union[bool, str, None] = None,
    **overrides,
) -> DeformableDETR:
    """Builds one of the five official variants ("single_scale", "single_scale_dc5",
    "multi_scale", "box_refine", "two_stage") with the official defaults; ``overrides`` use the
    official argument names (hidden_dim, nheads, enc_layers, ...). ``pretrained_backbone``: True
    for torchvision's ImageNet weights, or a path/URL of a ResNet state dict."""
    model = build_deformable_detr(make_config(variant, num_classes=num_classes, **overrides))
    detector.load_pretrained_backbone(model, pretrained_backbone)
    return model


def make_config(variant: str = "multi_scale", **overrides) -> DeformableDETRConfig:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    config = detector.settings_of(DeformableDETRConfig, "Deformable DETR", **{**VARIANTS[variant], **overrides})
    _check_sizes(config)
    return config


def _check_sizes(config) -> None:
    """Sizes that would otherwise fail deep inside a torch layer, with no word of the setting."""
    for name in ("num_classes", "num_queries", "dec_layers", "num_feature_levels", "nheads",
                 "dim_feedforward", "enc_n_points", "dec_n_points"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.enc_layers < 0:
        raise ValueError(f"enc_layers must be 0 or more, got {config.enc_layers}")
    if config.hidden_dim % 32 != 0:  # the input projections' GroupNorm has 32 groups
        raise ValueError(f"hidden_dim must be a multiple of 32 (GroupNorm(32) in the input "
                         f"projections), got {config.hidden_dim}")
    if config.hidden_dim % config.nheads != 0:
        raise ValueError(f"hidden_dim ({config.hidden_dim}) must be divisible by nheads ({config.nheads})")


def config_from_state_dict(state: dict, nheads: int = 8, known: Iterable[str] = ()) -> dict:
    """The settings a state dict's keys and shapes determine. The attention projections give
    heads x levels x points together, so the points per head follow from ``nheads``. Settings in
    ``known`` are not read from the state dict (whose head may be missing, for fine-tuning)."""
    if FAMILY.marker not in state:
        raise ckpt.CheckpointError(f"not a Deformable DETR state dict: no {FAMILY.marker!r}")
    two_stage = "transformer.enc_output.weight" in state
    settings = dict(
        **ckpt.transformer_settings(state, "transformer", nheads),
        **ckpt.backbone_settings(state),
        with_box_refine="transformer.decoder.bbox_embed.0.layers.0.weight" in state,
        two_stage=two_stage,
    )
    if "num_classes" not in known:
        settings["num_classes"] = ckpt.rows_of(state, "class_embed.0.weight", "num_classes")
    if not two_stage and "num_queries" not in known:
        settings["num_queries"] = ckpt.rows_of(state, "query_embed.weight", "num_queries")
    return settings


# What a state dict cannot tell, and why; assumed at the official defaults when neither the
# checkpoint's args nor the caller give it.
_UNRECORDED = {
    "nheads": "heads and points per head multiply into one weight shape",
    "dilation": "a dilated (DC5) ResNet has the same weights",
}


def _assumed_settings(checkpoint: dict, given: dict) -> list:
    two_stage = "transformer.enc_output.weight" in ckpt.model_state_of(checkpoint, "")
    unrecorded = dict(_UNRECORDED, **({"num_queries": "a two-stage model has no query embedding"}
                                      if two_stage else {}))
    defaults = DeformableDETRConfig()
    return [f"{k}={getattr(defaults, k)} ({why})" for k, why in unrecorded.items() if k not in given]


def official_checkpoint(model: DeformableDETR) -> dict:
    """The layout the official main.py saves: the state dict and its arguments (an
    argparse.Namespace of the settings, which carry the official names; the official code takes
    the number of classes from its data set, so it is not among them)."""
    args = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in ("num_classes", "backbone_from_scratch")}
    if model.config.backbone_from_scratch:
        args["backbone_from_scratch"] = True  # not official, but needed to rebuild the model
    return {"model": model.state_dict(), "args": argparse.Namespace(**args)}


FAMILY = ckpt.register_family(ckpt.Family(
    name="deformable_detr",
    marker="transformer.level_embed",
    config_class=DeformableDETRConfig,
    infer=lambda state, given: config_from_state_dict(state, nheads=given.get("nheads", 8), known=given),
    assumed=_assumed_settings,
    build=lambda **settings: build_deformable_detr(make_config("multi_scale", **settings)),
    official_layout=official_checkpoint,
    exclude_from_args=("num_classes",),  # official args do not hold it: the head tells
))
