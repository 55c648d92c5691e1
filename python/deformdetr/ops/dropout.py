"""Dropout with a fast CPU kernel: the native op (autograd, torch.compile) beside the reference
formula, and the module the models use in place of ``nn.Dropout``.

torch's CPU dropout draws each element's Bernoulli sample from a Mersenne Twister, element by
element: in a Deformable DETR training step at 800x1066 on two cores its ``bernoulli_`` took 2.4 s
of a 10.4 s forward (bench/RESULTS.md). The native kernel draws from a counter-based stream
(SplitMix64, ``cpp/include/deformdetr/dropout.h``) seeded from torch's generator, so
``torch.manual_seed`` and a resumed run's saved RNG state reproduce its masks as they do torch's.
The masks differ from torch's own for the same seed; their law is the same. CUDA tensors, 16-bit
floats and compiled graphs take torch's dropout (fused and fast on GPUs; inductor has its own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deformdetr._native import _C, dense, num_threads

__all__ = ["dropout", "relu_dropout", "dropout_reference", "Dropout", "dropout_after_relu"]

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _run_kernel(kernel, input: Tensor, p: float, seed: int) -> tuple[Tensor, Tensor]:
    input = dense(input)
    output = torch.empty_like(input)
    keep_mask = torch.empty(input.shape, dtype=torch.bool)
    kernel(input, p, seed, output, keep_mask, num_threads())
    return output, keep_mask


@torch.library.custom_op("deformdetr::dropout", mutates_args=())
def _dropout_op(input: Tensor, p: float, seed: int) -> tuple[Tensor, Tensor]:
    return _run_kernel(_C.dropout, input, p, seed)


@torch.library.custom_op("deformdetr::relu_dropout", mutates_args=())
def _relu_dropout_op(input: Tensor, p: float, seed: int) -> tuple[Tensor, Tensor]:
    """ReLU then dropout in one pass (the draws of ``deformdetr::dropout`` for the same seed); its
    mask is kept-and-positive, so the backward is dropout's with that mask."""
    return _run_kernel(_C.relu_dropout, input, p, seed)


def _dropout_fake(input, p, seed):
    return torch.empty_like(input), torch.empty(input.shape, dtype=torch.bool, device=input.device)


_dropout_op.register_fake(_dropout_fake)
_relu_dropout_op.register_fake(_dropout_fake)


@torch.library.custom_op("deformdetr::dropout_backward", mutates_args=())
def _dropout_backward_op(grad_output: Tensor, keep_mask: Tensor, scale: float) -> Tensor:
    grad_output = dense(grad_output)
    grad_input = torch.empty_like(grad_output)
    _C.dropout_backward(grad_output, dense(keep_mask), scale, grad_input, num_threads())
    return grad_input


@_dropout_backward_op.register_fake
def _(grad_output, keep_mask, scale):
    return torch.empty_like(grad_output)


def _kept_scale(p: float) -> float:
    """What a kept element is multiplied by: 1 / (1 - p), and 0 when everything is dropped."""
    return 0.0 if p >= 1 else 1.0 / (1.0 - p)


def _setup_context(ctx, inputs, output):
    _, p, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.scale = _kept_scale(p)


def _backward(ctx, grad_output, _grad_mask):
    (keep_mask,) = ctx.saved_tensors
    return _scaled_by_mask(grad_output, keep_mask, ctx.scale), None, None


def _scaled_by_mask(grad: Tensor, keep_mask: Tensor, scale: float) -> Tensor:
    if grad.device.type == "cpu" and grad.dtype in _NATIVE_DTYPES:
        return _dropout_backward_op(grad, keep_mask, scale)
    return torch.ops.aten.native_dropout_backward(grad, keep_mask, scale)


def _setup_backward_context(ctx, inputs, output):
    _, keep_mask, scale = inputs
    ctx.save_for_backward(keep_mask)
    ctx.scale = scale


def _backward_of_backward(ctx, grad):
    # The backward is linear in its incoming gradient: its own gradient is the same masking.
    (keep_mask,) = ctx.saved_tensors
    return _scaled_by_mask(grad, keep_mask, ctx.scale), None, None


_dropout_op.register_autograd(_backward, setup_context=_setup_context)
_relu_dropout_op.register_autograd(_backward, setup_context=_setup_context)
_dropout_backward_op.register_autograd(_backward_of_backward, setup_context=_setup_backward_context)


def _runs_native(input: Tensor) -> bool:
    return (input.device.type == "cpu" and input.dtype in _NATIVE_DTYPES
            and not torch.compiler.is_compiling())


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``torch.nn.functional.dropout(input, p, training)``: in training each element is zeroed
    with probability p and the rest are scaled by 1 / (1 - p). float32/float64 CPU tensors run
    the native kernel (its seed drawn from torch's default generator); others run torch's."""
    return _native_or(_dropout_op, lambda x: F.dropout(x, p, training), input, p, training)


def _native_or(op, torchs, input: Tensor, p: float, training: bool) -> Tensor:
    """``op``'s output where the native kernel runs and drops anything, else ``torchs(input)``;
    the op's seed drawn from torch's default generator (so torch.manual_seed reproduces it)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0 or not _runs_native(input):
        return torchs(input)
    return op(input, p, int(torch.randint(0, 2**62, (), dtype=torch.int64)))[0]


def relu_dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """``dropout(relu(input), p, training)``, in one pass where the native kernel runs (the same
    values and, for the same seed, the same mask), saving the ReLU's own pass, its backward and
    the activation it keeps for that backward."""
    return _native_or(_relu_dropout_op, lambda x: F.dropout(F.relu(x), p, training), input, p, training)


def dropout_reference(input: Tensor, p: float, keep_mask: Tensor) -> Tensor:
    """What dropout computes for a given mask: ``input * keep_mask / (1 - p)`` (zero for p = 1)."""
    return input * keep_mask * _kept_scale(p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` through :func:`dropout`: the same parameters (none), the same state-dict keys."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(input)
        return dropout(input, self.p, self.training)


def dropout_after_relu(module: nn.Module, input: Tensor) -> Tensor:
    """``module(relu(input))`` for a dropout module; in one pass (:func:`relu_dropout`) when it is
    this file's Dropout, as the models build them (any other module, e.g. an ``nn.Dropout`` put
    in its place, runs as it is)."""
    if type(module) is Dropout and not module.inplace:
        return relu_dropout(input, module.p, module.training)
    return module(F.relu(input))
