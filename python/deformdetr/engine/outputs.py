"""Helpers on model outputs (nested dicts and lists of tensors)."""

from __future__ import annotations

import torch

__all__ = ["as_float32"]


def as_float32(outputs):
    """Outputs (maybe bf16/fp16 under autocast) as float32, for losses and post-processing."""
    if isinstance(outputs, dict):
        return {k: as_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [as_float32(v) for v in outputs]
    return outputs.float() if torch.is_tensor(outputs) and outputs.is_floating_point() else outputs
