"""The skeleton both detector families share: a backbone whose feature maps are projected to the
transformer's width, one map per level (extra levels by stride-2 convolutions), and the builders
of their parts from a settings dataclass. Module names are the official ones (``backbone``,
``input_proj``), so both families keep their official state-dict keys."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.models.backbone import Backbone, Joiner, load_backbone_weights
from deformdetr.models.nested import resize_mask
from deformdetr.models.position_encoding import build_position_encoding

__all__ = ["MLP", "MultiScaleDetector", "build_joiner", "transformer_arguments", "config_values", "settings_of",
           "load_pretrained_backbone"]


class MLP(nn.Module):
    """A few linear layers with ReLU between them (the box and 3D heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == self.num_layers - 1 else F.relu(layer(x))
        return x


class MultiScaleDetector(nn.Module):
    """Base of the detectors: ``backbone`` (a :class:`Joiner`), ``input_proj`` (one projection
    per level) and ``num_feature_levels``, set by the subclass."""

    backbone: Joiner
    input_proj: nn.ModuleList
    num_feature_levels: int

    @staticmethod
    def input_projections(backbone: Joiner, hidden_dim: int, num_feature_levels: int) -> nn.ModuleList:
        """1x1 conv + GroupNorm per backbone stage; extra levels are stride-2 3x3 convs."""
        projections = []
        in_channels = backbone.num_channels[0]
        for in_channels in backbone.num_channels[:num_feature_levels]:
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
            )
        for _ in range(num_feature_levels - len(backbone.num_channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                    nn.GroupNorm(32, hidden_dim),
                )
            )
            in_channels = hidden_dim
        for projection in projections:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)
        return nn.ModuleList(projections)

    def multi_scale_features(self, images: Tensor, mask: Tensor) -> tuple[list, list, list]:
        """(maps, masks, position embeddings), one of each per level, the maps projected to the
        transformer's width; levels beyond the backbone's stages are made from the last one."""
        features, pos = self.backbone(images, mask)
        srcs, masks = [], []
        for level, (feature, feature_mask) in enumerate(features[: self.num_feature_levels]):
            srcs.append(self.input_proj[level](feature))
            masks.append(feature_mask)
        for level in range(len(srcs), self.num_feature_levels):
            source = features[-1][0] if level == len(features) else srcs[-1]
            src = self.input_proj[level](source)
            level_mask = resize_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(level_mask)
            pos.append(self.backbone[1](src, level_mask).to(src.dtype))
        return srcs, masks, pos[: self.num_feature_levels]


def build_joiner(config, train_backbone: bool, **position_options) -> Joiner:
    """The ResNet and position encoding a family's settings describe (``backbone``, ``dilation``,
    ``num_feature_levels``, ``hidden_dim``, ``position_embedding``, ``backbone_from_scratch``);
    ``position_options`` go to :func:`build_position_encoding` (the families differ there)."""
    # The position encoding first: module construction draws the random initial values in this order.
    position = build_position_encoding(config.hidden_dim, config.position_embedding, **position_options)
    backbone = Backbone(
        config.backbone,
        train_backbone=train_backbone,
        return_interm_layers=config.num_feature_levels > 1,
        dilation=config.dilation,
        from_scratch=config.backbone_from_scratch,
    )
    return Joiner(backbone, position)


def transformer_arguments(config) -> dict:
    """The deformable transformer's arguments from a family's settings (official names on both sides)."""
    return dict(
        d_model=config.hidden_dim,
        nhead=config.nheads,
        num_encoder_layers=config.enc_layers,
        num_decoder_layers=config.dec_layers,
        dim_feedforward=config.dim_feedforward,
        dropout=config.dropout,
        activation="relu",
        return_intermediate_dec=True,
        num_feature_levels=config.num_feature_levels,
        dec_n_points=config.dec_n_points,
        enc_n_points=config.enc_n_points,
    )


def config_values(config, *names: str) -> dict:
    """The named settings of ``config`` as keyword arguments (names the model takes as they are)."""
    return {name: getattr(config, name) for name in names}


def settings_of(config_class, family: str, base=None, **overrides):
    """``base`` (default: the class's defaults) with ``overrides``, refusing names that are not
    settings of ``config_class`` (a TypeError listing the known ones)."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {family} setting(s) {unknown}; known: {sorted(known)}")
    return replace(base if base is not None else config_class(), **overrides)


def load_pretrained_backbone(model: MultiScaleDetector, pretrained: Union[bool, str, None]) -> None:
    """``pretrained``: True for torchvision's ImageNet weights, a path or URL of a ResNet state
    dict, or False/None for none."""
    if pretrained:
        source: Optional[str] = None if pretrained is True else str(pretrained)
        load_backbone_weights(model.backbone[0], source)
