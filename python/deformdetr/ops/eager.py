"""When a CPU-only shortcut may run: eagerly, on the CPU. Reading a tensor's values there costs
microseconds (on a GPU it waits for the device), and choosing a path by a tensor's size breaks
no graph (under torch.compile it would break one, under torch.export it would narrow the sizes
the exported model accepts)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["eager_on_cpu", "inference_on_cpu"]


def eager_on_cpu(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU and no graph is being compiled or exported."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def inference_on_cpu(x: Tensor) -> bool:
    """:func:`eager_on_cpu`, with autograd off (nothing is kept for a backward)."""
    return not torch.is_grad_enabled() and eager_on_cpu(x)
