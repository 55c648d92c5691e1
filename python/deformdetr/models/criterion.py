"""Deformable DETR's training loss: Hungarian matching, then sigmoid focal loss on the classes and
L1 + GIoU on the matched boxes, for the final layer, each auxiliary decoder layer and (two-stage)
the encoder proposals. Loss names and weights are the official ones."""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr.models.matcher import HungarianMatcher, checked_boxes, checked_labels
from deformdetr.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou_pairs

__all__ = ["SetCriterion", "sigmoid_focal_loss", "per_layer_weights", "official_weight_dict", "build_criterion"]


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    """Focal loss (Lin et al.) on logits against 0/1 targets, averaged over queries (dim 1),
    summed over the batch and classes, divided by the number of target boxes."""
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def _top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    if labels.numel() == 0:
        return torch.zeros([], device=logits.device)
    return (logits.argmax(-1) == labels).float().mean() * 100


class SetCriterion(nn.Module):
    """Computes the losses named in ``losses`` ("labels", "boxes", "cardinality"). The returned dict
    holds unweighted losses; ``weight_dict`` says how to combine them (see :meth:`total`)."""

    #: loss name -> method computing it (subclasses add theirs: MonoDETR's criterion)
    loss_methods = {"labels": "loss_labels", "boxes": "loss_boxes", "cardinality": "loss_cardinality"}

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Mapping[str, float],
        losses: Sequence[str] = ("labels", "boxes", "cardinality"),
        focal_alpha: float = 0.25,
    ):
        super().__init__()
        unknown = set(losses) - set(self.loss_methods)
        if unknown:
            raise ValueError(f"unknown losses {sorted(unknown)}; known: {', '.join(self.loss_methods)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = list(losses)
        self.focal_alpha = focal_alpha

    # ---- the individual losses -------------------------------------------------------------

    def loss_labels(self, outputs, targets, indices, num_boxes, log: bool = True) -> dict:
        logits = outputs["pred_logits"]
        batch_idx, query_idx = self._matched_queries(indices, logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, matched_labels] = 1
        loss = sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2)
        losses = {"loss_ce": loss * logits.shape[1]}
        if log:
            losses["class_error"] = 100 - _top1_accuracy(logits[batch_idx, query_idx], matched_labels)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes) -> dict:
        """Logged only: the error in the number of predictions not of the last class."""
        logits = outputs["pred_logits"]
        target_counts = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(predicted.float(), target_counts.float())}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> dict:
        batch_idx, query_idx = self._matched_queries(indices, outputs["pred_boxes"].device)
        src = outputs["pred_boxes"][batch_idx, query_idx]
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, target, reduction="none").sum() / num_boxes
        giou = generalized_box_iou_pairs(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(target))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    @staticmethod
    def _matched_queries(indices, device) -> tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx.to(device), query_idx.to(device)

    def _compute(self, name, outputs, targets, indices, num_boxes, **kwargs) -> dict:
        return getattr(self, self.loss_methods[name])(outputs, targets, indices, num_boxes, **kwargs)

    # ---- the whole criterion ---------------------------------------------------------------

    #: target key -> row width of the per-object tensors the losses index as (T, width); an image
    #: without objects may hold any numel-0 shape there
    target_box_widths = {"boxes": 4}

    def checked_targets(self, targets: Sequence[Mapping[str, Tensor]]) -> list[dict]:
        """The targets as the losses index them: labels as int64 (any integer dtype: uint8 would
        otherwise index as a boolean mask), an empty image's boxes as (0, width)."""
        return [self._checked_target(i, target) for i, target in enumerate(targets)]

    def _checked_target(self, i: int, target: Mapping[str, Tensor]) -> dict:
        checked = dict(target)
        checked["labels"] = checked_labels(i, target["labels"])
        count = checked["labels"].shape[0]
        for key, width in self.target_box_widths.items():
            if key in target:  # a missing key fails in the loss that needs it
                checked[key] = checked_boxes(i, key, target[key], count, width)
        return checked

    #: losses of the final layer only (MonoDETR's depth map, the same for every layer)
    final_layer_only: tuple = ()
    #: losses that are means over the batch (not sums over its target boxes, like the rest)
    batch_means: tuple = ()

    def match(self, outputs, targets) -> list:
        """Each image's (query indices, target indices) for one layer's outputs."""
        return self.matcher(outputs, targets)

    def matches_per_target(self) -> int:
        """How many queries each target is matched to (MonoDETR: one per query group in training)."""
        return 1

    def forward(self, outputs: Mapping, targets: Sequence[Mapping[str, Tensor]], num_boxes: Optional[float] = None,
                share: float = 1.0) -> dict:
        """The losses of every layer. For gradient accumulation, a part of a larger batch passes
        that batch's ``num_boxes`` and its ``share`` of it (the part's images over the batch's):
        the parts' losses then add up to the larger batch's."""
        targets = self.checked_targets(targets)
        final = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        if num_boxes is None:
            num_boxes = self.num_boxes(targets, final["pred_logits"].device, multiplier=self.matches_per_target())
        losses = self._losses(final, targets, num_boxes, suffix="", final=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, num_boxes, suffix=f"_{i}", final=False))
        if "enc_outputs" in outputs:
            # Encoder proposals are class-agnostic: every target counts as class 0.
            binary = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            losses.update(self._losses(outputs["enc_outputs"], binary, num_boxes, suffix="_enc", final=False))
        if share != 1.0:
            losses.update({k: v * share for k, v in losses.items() if k in self.batch_means})
        return losses

    def _losses(self, outputs, targets, num_boxes, suffix: str, final: bool) -> dict:
        """One layer's losses, keys suffixed with the layer; the logged extras (class_error) for
        the final layer only."""
        indices = self.match(outputs, targets)
        losses = {}
        for name in self.losses:
            if not final and name in self.final_layer_only:
                continue
            kwargs = {"log": final} if name == "labels" else {}
            losses.update(self._compute(name, outputs, targets, indices, num_boxes, **kwargs))
        return {k + suffix: v for k, v in losses.items()}

    @staticmethod
    def num_boxes(targets, device, multiplier: int = 1) -> float:
        """Target boxes per process, averaged over distributed ranks, at least 1 (each target
        counted ``multiplier`` times: MonoDETR's query groups)."""
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets) * multiplier)], device=device)
        world_size = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            world_size = torch.distributed.get_world_size()
        return torch.clamp(count / world_size, min=1).item()

    def total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The training objective: the weighted sum of the losses that have a weight. Losses
        without one are only logged (class_error, cardinality_error), as officially, but a
        weighted loss's per-layer copy without a weight is an error: see :func:`_check_layer_weights`."""
        _check_layer_weights(self.weight_dict, losses)
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


#: A per-layer copy of a loss: "<loss>_<decoder layer>" or "<loss>_enc".
_LAYER_KEY = re.compile(r"^(?P<base>.+)_(?P<layer>\d+|enc)$")


def is_layer_copy(key: str) -> bool:
    """Whether a loss key is a per-layer copy (``loss_ce_0``, ``loss_ce_enc``) of a final loss."""
    return _LAYER_KEY.match(key) is not None


def _check_layer_weights(weight_dict: Mapping[str, float], losses: Mapping[str, Tensor]) -> None:
    """Raises ValueError when ``losses`` hold a per-layer copy (``loss_ce_1``, ``loss_ce_enc``)
    of a weighted loss that ``weight_dict`` has no weight for: the criterion was built for fewer
    decoder layers than the model has, and the sum would silently leave those layers untrained.

    Officially unweighted keys stay unweighted: logged values (class_error, cardinality_error
    and their copies), and the encoder's losses when the weights hold no per-layer entries at
    all (two-stage with aux_loss=False, where the official criterion ignores them too)."""
    weighted_layers = _layer_copies(weight_dict, weight_dict)
    missing = [
        key for key, layer in _layer_copies(losses, weight_dict).items()
        if key not in weight_dict and (layer != "enc" or weighted_layers)
    ]
    if missing:
        raise ValueError(_layer_weights_message(missing, weighted_layers, losses, weight_dict))


def _layer_weights_message(missing, weighted_layers, losses, weight_dict) -> str:
    unweighted = f"losses {missing} have no weight in weight_dict"
    if all(key.endswith("_enc") for key in missing):
        return (f"{unweighted}: build the criterion with encoder weights (official_weight_dict adds "
                f"them with aux_loss=True)")
    model = 2 + max(int(layer) for layer in _layer_copies(losses, weight_dict).values() if layer != "enc")
    if not weighted_layers:
        return (f"{unweighted}: the criterion was built without auxiliary losses (aux_loss=False) but "
                f"the model returns them for its {model} decoder layers; build it with aux_loss=True, "
                f"dec_layers={model}")
    built = 1 + len({layer for layer in weighted_layers.values() if layer != "enc"})
    return (f"{unweighted}: the criterion was built for {built} decoder layer(s) but the model has {model}; "
            f"build it with dec_layers={model}")


def _layer_copies(keys, weight_dict: Mapping[str, float]) -> dict[str, str]:
    """key -> its layer ("0", "1", ..., "enc") for the keys that copy a weighted loss."""
    matches = ((key, _LAYER_KEY.match(key)) for key in keys)
    return {key: m["layer"] for key, m in matches if m and m["base"] in weight_dict}


def per_layer_weights(base: Mapping[str, float], dec_layers: int, aux_loss: bool) -> dict:
    """``base`` (the final layer's loss weights); with ``aux_loss``, the same weights again for
    each earlier decoder layer (``loss_ce_0``...) and the encoder (``loss_ce_enc``)."""
    weights = dict(base)
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
        weights.update({f"{k}_enc": v for k, v in base.items()})
    return weights


def official_weight_dict(
    dec_layers: int = 6,
    aux_loss: bool = True,
    cls_loss_coef: float = 2,
    bbox_loss_coef: float = 5,
    giou_loss_coef: float = 2,
) -> dict:
    """Deformable DETR's loss weights (see :func:`per_layer_weights`)."""
    base = {"loss_ce": cls_loss_coef, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    return per_layer_weights(base, dec_layers, aux_loss)


def build_criterion(
    num_classes: int = 91,
    dec_layers: int = 6,
    aux_loss: bool = True,
    set_cost_class: float = 2,
    set_cost_bbox: float = 5,
    set_cost_giou: float = 2,
    cls_loss_coef: float = 2,
    bbox_loss_coef: float = 5,
    giou_loss_coef: float = 2,
    focal_alpha: float = 0.25,
) -> SetCriterion:
    """The official matcher, weights and losses (argument names as the official main.py)."""
    matcher = HungarianMatcher(set_cost_class, set_cost_bbox, set_cost_giou, focal_alpha)
    weights = official_weight_dict(dec_layers, aux_loss, cls_loss_coef, bbox_loss_coef, giou_loss_coef)
    return SetCriterion(num_classes, matcher, weights, focal_alpha=focal_alpha)
