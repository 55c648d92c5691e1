"""The official optimizers. Deformable DETR: AdamW with three parameter groups (the rest at lr; the backbone at
lr_backbone; sampling offsets and reference points at lr * lr_linear_proj_mult), and a step
decay of the learning rate by 10x at epoch lr_drop."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["parameter_groups", "build_optimizer", "build_scheduler", "build_mono_optimizer",
           "build_mono_scheduler"]


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(keyword in name for keyword in keywords)


def parameter_groups(model: nn.Module, train: dict) -> list[dict]:
    backbone, proj = train["lr_backbone_names"], train["lr_linear_proj_names"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not _matches(n, backbone) and not _matches(n, proj)],
         "lr": train["lr"]},
        {"params": [p for n, p in named if _matches(n, backbone)], "lr": train["lr_backbone"]},
        {"params": [p for n, p in named if _matches(n, proj)],
         "lr": train["lr"] * train["lr_linear_proj_mult"]},
    ]


def build_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    groups = parameter_groups(model, train)
    if train["sgd"]:
        return torch.optim.SGD(groups, lr=train["lr"], momentum=0.9, weight_decay=train["weight_decay"])
    return torch.optim.AdamW(groups, lr=train["lr"], weight_decay=train["weight_decay"])


def build_scheduler(optimizer: torch.optim.Optimizer, train: dict):
    return torch.optim.lr_scheduler.StepLR(optimizer, train["lr_drop"])


def build_mono_optimizer(model: nn.Module, train: dict) -> torch.optim.Optimizer:
    """MonoDETR's official optimizer: AdamW, no weight decay on biases."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0},
              {"params": [p for n, p in named if "bias" not in n], "weight_decay": train["weight_decay"]}]
    return torch.optim.AdamW(groups, lr=train["lr"])


def build_mono_scheduler(optimizer: torch.optim.Optimizer, train: dict):
    """MonoDETR's official schedule: the learning rate times decay_rate at each decay_list epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, train["decay_list"], gamma=train["decay_rate"])
