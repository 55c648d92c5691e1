"""The detector's backbone: a ResNet returning one or three stages, with padding masks, joined
with the position encoding (module names as in the official ``backbone.0`` / ``backbone.1``)."""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from deformdetr.models.nested import resize_mask
from deformdetr.models.resnet import RESNET_URLS, RESNETS

__all__ = ["Backbone", "Joiner", "load_backbone_weights"]

class Backbone(nn.Module):
    """ResNet body. Multi-scale returns layer2..layer4 (strides 8, 16, 32); single-scale layer4.

    As officially, the stem and layer1 stay frozen, as do all layers when ``train_backbone`` is
    False, and batch norm is frozen. ``from_scratch=True`` (not official; for training without
    ImageNet weights, e.g. the synthetic demo) trains every layer with ordinary batch norm."""

    def __init__(
        self,
        name: str = "resnet50",
        train_backbone: bool = True,
        return_interm_layers: bool = True,
        dilation: bool = False,
        from_scratch: bool = False,
    ):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"backbone must be one of {sorted(RESNETS)}, got {name!r}")
        self.name = name
        norm_layer = nn.BatchNorm2d if from_scratch else None
        self.body = RESNETS[name](dilate_last=dilation, with_head=False, norm_layer=norm_layer)
        for param_name, parameter in self.body.named_parameters():
            trainable = train_backbone and (
                from_scratch or any(layer in param_name for layer in ("layer2", "layer3", "layer4"))
            )
            parameter.requires_grad_(trainable)
        width = self.body.block.expansion  # 4 for ResNet-50/101, 1 for ResNet-18/34
        if return_interm_layers:
            self.return_layers = ["layer2", "layer3", "layer4"]
            self.strides = [8, 16, 32]
            self.num_channels = [128 * width, 256 * width, 512 * width]
        else:
            self.return_layers = ["layer4"]
            self.strides = [32]
            self.num_channels = [512 * width]
        if dilation:
            self.strides[-1] //= 2

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        stages = self.body.forward_stages(images, self.return_layers)
        return [(x, resize_mask(mask, x.shape[-2:])) for x in (stages[n] for n in self.return_layers)]


class Joiner(nn.Sequential):
    """``self[0]`` the backbone, ``self[1]`` the position encoding."""

    def __init__(self, backbone: Backbone, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def forward(self, images: Tensor, mask: Tensor):
        features = self[0](images, mask)
        positions = [self[1](x, m).to(x.dtype) for x, m in features]
        return features, positions


def load_backbone_weights(backbone: Backbone, source: Optional[str] = None) -> None:
    """Loads ImageNet weights into the ResNet body from a local file or a URL (through
    torch.hub's cache); ``None`` means torchvision's official weights for this ResNet."""
    source = source or RESNET_URLS[backbone.name]
    if os.path.exists(source):
        state = torch.load(source, map_location="cpu", weights_only=True)
    elif "://" in source:
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", check_hash=False)
    else:
        raise FileNotFoundError(f"backbone weights {source!r}: no such file (nor a URL)")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    expected = backbone.body.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected or state[k].shape != expected[k].shape]
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {source!r} do not fit a {backbone.name}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected or of another shape {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    backbone.body.load_state_dict(state)
