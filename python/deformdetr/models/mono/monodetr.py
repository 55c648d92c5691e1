"""MonoDETR (Zhang et al., ICCV 2023): depth-guided DETR for monocular 3D object detection.
The model, its settings (the official configs/monodetr.yaml), and loading of official
checkpoints. Module and parameter names equal the official implementation's."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.models.backbone import Joiner
from deformdetr.models import checkpoint as ckpt
from deformdetr.models import detector
from deformdetr.models.detector import MLP, MultiScaleDetector
from deformdetr.models.deformable_transformer import inverse_sigmoid
from deformdetr.models.mono.depth_predictor import DepthPredictor
from deformdetr.models.mono.depthaware_transformer import DepthAwareTransformer
from deformdetr.models.nested import check_images

__all__ = ["MonoDETR", "MonoDETRConfig", "monodetr", "build_monodetr", "load_monodetr_checkpoint",
           "monodetr_config_from_state_dict"]


@dataclass(frozen=True)
class MonoDETRConfig:
    """The model's settings, named and defaulted as the official ``configs/monodetr.yaml``
    (``model:`` section) and the official code's fixed values (``group_num``, the depth encoder)."""

    num_classes: int = 3
    backbone: str = "resnet50"
    train_backbone: bool = True
    num_feature_levels: int = 4
    dilation: bool = False
    position_embedding: str = "sine"
    # depth predictor
    num_depth_bins: int = 80
    depth_min: float = 1e-3
    depth_max: float = 60.0
    depth_encoder_nheads: int = 8  # fixed officially
    depth_encoder_dim_feedforward: int = 256  # fixed officially
    # transformer
    with_box_refine: bool = True
    two_stage: bool = False
    enc_layers: int = 3
    dec_layers: int = 3
    hidden_dim: int = 256
    dim_feedforward: int = 256
    dropout: float = 0.1
    nheads: int = 8
    num_queries: int = 50
    enc_n_points: int = 4
    dec_n_points: int = 4
    group_num: int = 11  # query groups while training (fixed officially)
    init_box: bool = False
    aux_loss: bool = True
    backbone_from_scratch: bool = False  # not official: train all of the ResNet, with batch norm
    checkpoint_activations: bool = False  # recompute transformer layers in the backward (memory)


class MonoDETR(MultiScaleDetector):
    """Outputs (dict, official keys): ``pred_logits`` (B, Q, C); ``pred_boxes`` (B, Q, 6) the
    projected 3D centre and the distances to the 2D box sides, (cx, cy, l, r, t, b), normalised
    by the input size; ``pred_3d_dim`` (B, Q, 3) (h, w, l) relative to the class mean sizes (zero
    officially); ``pred_depth`` (B, Q, 2) depth and log-variance; ``pred_angle`` (B, Q, 24) 12
    heading-bin logits and 12 residuals; ``pred_depth_map_logits`` (B, D+1, H/16, W/16); and
    ``aux_outputs`` for the earlier decoder layers. While training, Q is ``group_num`` groups of
    ``num_queries``; in eval, ``num_queries``."""

    def __init__(self, backbone: Joiner, depthaware_transformer: DepthAwareTransformer,
                 depth_predictor: DepthPredictor, num_classes: int, num_queries: int, num_feature_levels: int,
                 aux_loss: bool = True, with_box_refine: bool = True, two_stage: bool = False,
                 init_box: bool = False, group_num: int = 11):
        super().__init__()
        if two_stage:
            raise NotImplementedError("two-stage MonoDETR is not supported (off in the official config)")
        if not with_box_refine:
            # The official decoder then never sets the 3D sizes and fails; only refinement runs.
            raise ValueError("MonoDETR needs with_box_refine=True (as the official code)")
        if num_feature_levels != 4:
            raise ValueError("MonoDETR's depth predictor needs num_feature_levels=4")
        self.num_queries = num_queries
        self.group_num = group_num
        self.depthaware_transformer = depthaware_transformer
        self.depth_predictor = depth_predictor
        hidden_dim = depthaware_transformer.d_model
        self.hidden_dim = hidden_dim
        self.num_feature_levels = num_feature_levels
        self.num_classes = num_classes
        # Unused without denoising queries (off officially), but in official state dicts.
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim - 1)
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 6, 3)
        self.dim_embed_3d = MLP(hidden_dim, hidden_dim, 3, 2)
        self.angle_embed = MLP(hidden_dim, hidden_dim, 24, 2)
        self.depth_embed = MLP(hidden_dim, hidden_dim, 2, 2)
        prior_prob = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        if init_box:
            nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
            nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)
        self.query_embed = nn.Embedding(num_queries * group_num, hidden_dim * 2)
        self.input_proj = self.input_projections(backbone, hidden_dim, num_feature_levels)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        # One head per decoder layer, each its own copy (box refinement); the decoder shares the
        # box and size heads.
        num_pred = depthaware_transformer.decoder.num_layers
        for name in ("class_embed", "bbox_embed", "dim_embed_3d", "angle_embed", "depth_embed"):
            setattr(self, name, nn.ModuleList(copy.deepcopy(getattr(self, name)) for _ in range(num_pred)))
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        depthaware_transformer.decoder.bbox_embed = self.bbox_embed
        depthaware_transformer.decoder.dim_embed = self.dim_embed_3d

    def forward(self, images: Tensor, calibs: Tensor, img_sizes: Optional[Tensor] = None) -> dict:
        """images (B, 3, H, W) (all of one size, as officially: no padding); calibs (B, 3, 4) the
        P2 camera matrices; img_sizes (B, 2) (W, H) of the original images, which the geometric
        depth uses with P2's focal length (default: the input size)."""
        check_images(images, self.class_embed[0].weight.dtype)
        batch = images.shape[0]
        if tuple(calibs.shape) != (batch, 3, 4):
            raise ValueError(f"calibs must be (B, 3, 4) = ({batch}, 3, 4) P2 matrices, got {tuple(calibs.shape)}")
        if img_sizes is None:
            img_sizes = torch.tensor([[images.shape[-1], images.shape[-2]]], device=images.device).expand(batch, 2)
        elif tuple(img_sizes.shape) != (batch, 2):
            raise ValueError(f"img_sizes must be (B, 2) = ({batch}, 2) (W, H), got {tuple(img_sizes.shape)}")
        mask = torch.zeros((batch, images.shape[2], images.shape[3]), dtype=torch.bool, device=images.device)
        srcs, masks, pos = self.multi_scale_features(images, mask)
        # All query groups while training; the first group only in eval.
        query_embeds = self.query_embed.weight if self.training else self.query_embed.weight[: self.num_queries]

        depth_map_logits, depth_pos_embed, weighted_depth, _ = self.depth_predictor(srcs, masks[1], pos[1])
        hs, init_reference, inter_references, inter_references_dim = self.depthaware_transformer(
            srcs, masks, pos, query_embeds, depth_pos_embed, masks[1]
        )
        per_layer = [
            self._predict(level, hs[level], init_reference if level == 0 else inter_references[level - 1],
                          inter_references_dim[level], weighted_depth, calibs, img_sizes)
            for level in range(hs.shape[0])
        ]
        out = dict(per_layer[-1])
        out["pred_depth_map_logits"] = depth_map_logits
        if self.aux_loss:
            out["aux_outputs"] = per_layer[:-1]
        return out

    def _predict(self, level: int, hs: Tensor, reference: Tensor, size3d: Tensor, weighted_depth: Tensor,
                 calibs: Tensor, img_sizes: Tensor) -> dict:
        """One decoder layer's predictions; boxes relative to the reference it sampled around."""
        reference = inverse_sigmoid(reference)
        delta = self.bbox_embed[level](hs)
        if reference.shape[-1] == 6:
            boxes = (delta + reference).sigmoid()
        else:
            boxes = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1).sigmoid()
        logits = self.class_embed[level](hs)

        # Three depth estimates, averaged: the regressed depth (inverse sigmoid), the geometric
        # depth (3D height over 2D height, times the focal length), and the depth map at the
        # projected 3D centre.
        box2d_height = torch.clamp((boxes[:, :, 4] + boxes[:, :, 5]) * img_sizes[:, 1:2], min=1.0)
        depth_geo = size3d[:, :, 0] / box2d_height * calibs[:, 0, 0].unsqueeze(1)
        depth_reg = self.depth_embed[level](hs)
        grid = ((boxes[..., :2] - 0.5) * 2).unsqueeze(2).detach()
        depth_map = F.grid_sample(weighted_depth.unsqueeze(1), grid, mode="bilinear", align_corners=True).squeeze(1)
        depth_direct = 1.0 / (depth_reg[:, :, 0:1].sigmoid() + 1e-6) - 1.0
        depth = torch.cat([(depth_direct + depth_geo.unsqueeze(-1) + depth_map) / 3, depth_reg[:, :, 1:2]], -1)
        return {
            "pred_logits": logits,
            "pred_boxes": boxes,
            "pred_3d_dim": size3d,
            "pred_angle": self.angle_embed[level](hs),
            "pred_depth": depth,
        }


def build_monodetr(config: MonoDETRConfig) -> MonoDETR:
    backbone = detector.build_joiner(config, train_backbone=config.train_backbone, offset=0.0)
    transformer = DepthAwareTransformer(**detector.transformer_arguments(config), group_num=config.group_num)
    transformer.set_activation_checkpointing(config.checkpoint_activations)
    depth_predictor = DepthPredictor(
        d_model=config.hidden_dim, encoder_nhead=config.depth_encoder_nheads,
        encoder_dim_feedforward=config.depth_encoder_dim_feedforward,
        **detector.config_values(config, "num_depth_bins", "depth_min", "depth_max", "dropout"))
    model = MonoDETR(backbone, transformer, depth_predictor, **detector.config_values(
        config, "num_classes", "num_queries", "num_feature_levels", "aux_loss", "with_box_refine", "two_stage",
        "init_box", "group_num"))
    model.config = config
    return model


def make_monodetr_config(**overrides) -> MonoDETRConfig:
    return detector.settings_of(MonoDETRConfig, "MonoDETR", **overrides)


def monodetr(num_classes: int = 3, pretrained_backbone: Union[bool, str, None] = None, **overrides) -> MonoDETR:
    """MonoDETR with the official configuration (configs/monodetr.yaml); ``overrides`` use its
    names (hidden_dim, enc_layers, dec_layers, num_queries, group_num, backbone, ...).
    ``pretrained_backbone``: True for torchvision's ImageNet weights, or a path/URL."""
    model = build_monodetr(make_monodetr_config(num_classes=num_classes, **overrides))
    detector.load_pretrained_backbone(model, pretrained_backbone)
    return model


def load_monodetr_checkpoint(path: str, map_location="cpu", strict: bool = True, **overrides) -> MonoDETR:
    """Builds the model a MonoDETR checkpoint (the official ``{"model_state": ...}``, ours, or a
    bare state dict) was saved from and loads its weights: :func:`deformdetr.models.load_checkpoint`
    for MonoDETR only. ``overrides`` settle what the state dict cannot tell (``group_num``: the
    query rows are num_queries x group_num; ``nheads``; ``depth_min``)."""
    return ckpt.load_checkpoint(path, map_location, strict, family=FAMILY.name, **overrides)


# What a state dict cannot tell (query rows are num_queries x group_num; heads and points per head
# multiply into one weight shape): assumed at the official values when nothing gives them.
_UNRECORDED = ("nheads", "depth_encoder_nheads", "group_num")


def _assumed_settings(checkpoint: dict, given: dict) -> list:
    # The official files ({"model_state": ...}) come from the one official configuration, whose
    # fixed values are the defaults; any other file without args may have been trained otherwise.
    if "model_state" in checkpoint:
        return []
    defaults = MonoDETRConfig()
    return [f"{k}={getattr(defaults, k)}" for k in _UNRECORDED if k not in given]


def monodetr_config_from_state_dict(state: dict, nheads: int = 8, group_num: int = 11,
                                    known=()) -> dict:
    prefix = "depthaware_transformer"
    if f"{prefix}.level_embed" not in state:
        raise ckpt.CheckpointError(f"not a MonoDETR state dict: no '{prefix}.level_embed'")
    query_rows = state["query_embed.weight"].shape[0]
    if query_rows % group_num != 0:
        raise ckpt.CheckpointError(f"query_embed has {query_rows} rows, not a multiple of group_num={group_num}: "
                              "pass the checkpoint's group_num")
    depth_encoder = "depth_predictor.depth_encoder.layers.0."
    settings = dict(
        **ckpt.transformer_settings(state, prefix, nheads),
        **ckpt.backbone_settings(state),
        num_queries=query_rows // group_num,
        group_num=group_num,
        num_depth_bins=state["depth_predictor.depth_classifier.weight"].shape[0] - 1,
        depth_max=float(state["depth_predictor.depth_bin_values"][-1]),
        depth_encoder_dim_feedforward=state[depth_encoder + "linear1.weight"].shape[0],
    )
    if "num_classes" not in known:
        settings["num_classes"] = ckpt.rows_of(state, "class_embed.0.weight", "num_classes")
    return settings


FAMILY = ckpt.register_family(ckpt.Family(
    name="monodetr",
    marker="depthaware_transformer.level_embed",
    config_class=MonoDETRConfig,
    infer=lambda state, given: monodetr_config_from_state_dict(
        state, nheads=given.get("nheads", 8), group_num=given.get("group_num", 11), known=given),
    assumed=_assumed_settings,
    build=lambda **settings: build_monodetr(make_monodetr_config(**settings)),
    official_layout=lambda model: {"model_state": model.state_dict()},  # as the official trainer saves it
))
