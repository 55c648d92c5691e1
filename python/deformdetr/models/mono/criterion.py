"""MonoDETR's training loss: Hungarian matching (per query group while training), then, on the
matched pairs, the official terms: focal classification (``loss_ce``), L1 of the 2D box sides
(``loss_bbox``) and GIoU of the 2D boxes (``loss_giou``), L1 of the projected 3D centre
(``loss_center``), Laplacian aleatoric-uncertainty depth (``loss_depth``), dimension-aware L1
of the 3D sizes (``loss_dim``), multi-bin heading (``loss_angle``), and on the whole depth map
the DDN focal loss (``loss_depth_map``, final layer only). Names and weights are official."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from deformdetr.models.criterion import SetCriterion, per_layer_weights
from deformdetr.models.mono.ddn_loss import DDNLoss
from deformdetr.models.mono.matcher import MonoHungarianMatcher
from deformdetr.ops.boxes import box_cxcylrtb_to_xyxy, box_cxcywh_to_xyxy_reference, generalized_box_iou_pairs

__all__ = ["MonoSetCriterion", "build_monodetr_criterion", "monodetr_weight_dict", "MONODETR_LOSSES"]

#: The official list of losses.
MONODETR_LOSSES = ("labels", "boxes", "cardinality", "depths", "dims", "angles", "center", "depth_map")

NUM_HEADING_BINS = 12


class MonoSetCriterion(SetCriterion):
    """Targets: one dict per image with ``labels`` (T,), ``boxes`` (T, 4) normalised 2D boxes
    (cx, cy, w, h), ``boxes_3d`` (T, 6) (cx, cy, l, r, t, b) around the projected 3D centre,
    ``depth`` (T, 1), ``size_3d`` (T, 3) (h, w, l) relative to the class mean sizes,
    ``heading_bin`` (T, 1) int64 and ``heading_res`` (T, 1). While training (``self.training``),
    every target is matched once per query group and counted ``group_num`` times."""

    loss_methods = {
        **SetCriterion.loss_methods,
        "depths": "loss_depths",
        "dims": "loss_dims",
        "angles": "loss_angles",
        "center": "loss_3dcenter",
        "depth_map": "loss_depth_map",
    }

    target_box_widths = {"boxes": 4, "boxes_3d": 6, "size_3d": 3}

    def __init__(self, num_classes: int, matcher: MonoHungarianMatcher, weight_dict: Mapping[str, float],
                 focal_alpha: float = 0.25, losses: Sequence[str] = MONODETR_LOSSES, group_num: int = 11,
                 ddn_loss: DDNLoss = None):
        super().__init__(num_classes, matcher, weight_dict, losses=losses, focal_alpha=focal_alpha)
        self.group_num = group_num
        self.ddn_loss = ddn_loss if ddn_loss is not None else DDNLoss()

    def _matched(self, outputs, key, targets, target_key, indices):
        batch_idx, query_idx = self._matched_queries(indices, outputs[key].device)
        src = outputs[key][batch_idx, query_idx]
        target = torch.cat([t[target_key][j] for t, (_, j) in zip(targets, indices)]).to(src.device)
        return src, target

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> dict:
        src, target = self._matched(outputs, "pred_boxes", targets, "boxes_3d", indices)
        target = target.to(src.dtype)
        loss_bbox = F.l1_loss(src[:, 2:6], target[:, 2:6], reduction="none").sum() / num_boxes
        giou = generalized_box_iou_pairs(box_cxcylrtb_to_xyxy(src), box_cxcylrtb_to_xyxy(target))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_3dcenter(self, outputs, targets, indices, num_boxes) -> dict:
        src, target = self._matched(outputs, "pred_boxes", targets, "boxes_3d", indices)
        return {"loss_center": F.l1_loss(src[:, 0:2], target[:, 0:2].to(src.dtype), reduction="none").sum() / num_boxes}

    def loss_depths(self, outputs, targets, indices, num_boxes) -> dict:
        """Laplacian aleatoric uncertainty: sqrt(2) exp(-s) |d - d*| + s, s the log-variance."""
        src, target = self._matched(outputs, "pred_depth", targets, "depth", indices)
        target = target.reshape(-1).to(src.dtype)
        depth, log_variance = src[:, 0], src[:, 1]
        loss = 1.4142 * torch.exp(-log_variance) * torch.abs(depth - target) + log_variance
        return {"loss_depth": loss.sum() / num_boxes}

    def loss_dims(self, outputs, targets, indices, num_boxes) -> dict:
        """Dimension-aware L1: the error relative to the target size, rescaled (without gradient)
        to the plain L1's mean."""
        src, target = self._matched(outputs, "pred_3d_dim", targets, "size_3d", indices)
        target = target.to(src.dtype)
        loss = torch.abs(src - target) / target.detach()
        with torch.no_grad():
            compensation = F.l1_loss(src, target) / loss.mean()
        return {"loss_dim": (loss * compensation).sum() / num_boxes}

    def loss_angles(self, outputs, targets, indices, num_boxes) -> dict:
        """Multi-bin heading: cross-entropy over the 12 bins plus L1 of the target bin's residual."""
        src, target_bin = self._matched(outputs, "pred_angle", targets, "heading_bin", indices)
        _, target_res = self._matched(outputs, "pred_angle", targets, "heading_res", indices)
        src = src.view(-1, 2 * NUM_HEADING_BINS)
        target_bin = target_bin.view(-1).long()
        target_res = target_res.view(-1).to(src.dtype)
        cls_loss = F.cross_entropy(src[:, :NUM_HEADING_BINS], target_bin, reduction="none")
        residual = src[:, NUM_HEADING_BINS:].gather(1, target_bin[:, None]).squeeze(1)
        reg_loss = F.l1_loss(residual, target_res, reduction="none")
        return {"loss_angle": (cls_loss + reg_loss).sum() / num_boxes}

    def loss_depth_map(self, outputs, targets, indices, num_boxes) -> dict:
        logits = outputs["pred_depth_map_logits"]
        height, width = logits.shape[-2:]
        scale = torch.tensor([width, height, width, height], device=logits.device, dtype=logits.dtype)
        boxes = torch.cat([t["boxes"] for t in targets], dim=0).to(logits.device, logits.dtype) * scale
        depths = torch.cat([t["depth"] for t in targets], dim=0).to(logits.device, logits.dtype).reshape(-1)
        counts = [len(t["boxes"]) for t in targets]
        return {"loss_depth_map": self.ddn_loss(logits, box_cxcywh_to_xyxy_reference(boxes), counts, depths)}

    final_layer_only = ("depth_map",)
    # The depth map loss is a mean over the batch's pixels. (loss_dim's rescaling factor is a
    # batch statistic too: with gradient accumulation it is that of each part.)
    batch_means = ("loss_depth_map",)

    def _groups(self) -> int:
        return self.group_num if self.training else 1

    def match(self, outputs, targets) -> list:
        return self.matcher(outputs, targets, group_num=self._groups())

    def matches_per_target(self) -> int:
        return self._groups()


def monodetr_weight_dict(dec_layers: int = 3, aux_loss: bool = True, cls_loss_coef: float = 2,
                         bbox_loss_coef: float = 5, giou_loss_coef: float = 2, dim_loss_coef: float = 1,
                         angle_loss_coef: float = 1, depth_loss_coef: float = 1, center_loss_coef: float = 10,
                         depth_map_loss_coef: float = 1) -> dict:
    """The official loss weights (configs/monodetr.yaml; ``center_loss_coef`` is its
    ``3dcenter_loss_coef``), repeated for each earlier decoder layer with aux_loss."""
    base = {"loss_ce": cls_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef,
            "loss_dim": dim_loss_coef, "loss_angle": angle_loss_coef, "loss_depth": depth_loss_coef,
            "loss_center": center_loss_coef, "loss_depth_map": depth_map_loss_coef}
    return per_layer_weights(base, dec_layers, aux_loss)


def build_monodetr_criterion(num_classes: int = 3, dec_layers: int = 3, aux_loss: bool = True,
                             group_num: int = 11, focal_alpha: float = 0.25, set_cost_class: float = 2,
                             set_cost_bbox: float = 5, set_cost_giou: float = 2, set_cost_3dcenter: float = 10,
                             num_depth_bins: int = 80, depth_min: float = 1e-3, depth_max: float = 60.0,
                             **loss_coefs) -> MonoSetCriterion:
    """The official matcher, losses and weights (names as configs/monodetr.yaml; loss weights as
    :func:`monodetr_weight_dict`'s arguments)."""
    matcher = MonoHungarianMatcher(set_cost_class, set_cost_3dcenter, set_cost_bbox, set_cost_giou, focal_alpha)
    weights = monodetr_weight_dict(dec_layers, aux_loss, **loss_coefs)
    ddn = DDNLoss(num_depth_bins=num_depth_bins, depth_min=depth_min, depth_max=depth_max)
    return MonoSetCriterion(num_classes, matcher, weights, focal_alpha=focal_alpha, group_num=group_num,
                            ddn_loss=ddn)
