"""A 2D convolution whose weight gradient on the CPU is a matmul where oneDNN's is slow.

oneDNN computes the weight gradient of a convolution whose output has only a few pixels (a
ResNet's last stage on small images: 512 channels at 2x2 or 2x3) at a fifth of its usual
throughput: 32 ms against 6.5 ms as one matmul over the unfolded input at 2x2, batch 16
(``python bench/conv_weight_grad.py``; the demo's step 491 -> 437 ms). Same parameters, same
outputs and the same gradients to float rounding as ``nn.Conv2d``; everywhere else (other
sizes, CUDA, inference) it is ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2d", "MATMUL_WEIGHT_GRAD_PIXELS", "matmul_weight_grad"]

#: Output sizes (pixels per image) up to which the CPU weight gradient is taken as a matmul
#: (measured: far faster at 2x2 and 2x3, a little at 3x3; at 4x4 it depends on the channels, at
#: 8x8 oneDNN is twice as fast).
MATMUL_WEIGHT_GRAD_PIXELS = 9


def matmul_weight_grad(grad: Tensor, x: Tensor, weight_shape, stride, padding, dilation) -> Tensor:
    """The gradient of a convolution's weight (of ``weight_shape``) from the output's ``grad``
    and the input ``x``, as one matmul over the unfolded input."""
    columns = F.unfold(x, weight_shape[2:], dilation, padding, stride)        # N, Cin*kh*kw, pixels
    grad_flat = grad.flatten(2).transpose(0, 1).reshape(weight_shape[0], -1)  # Cout, N*pixels
    return (grad_flat @ columns.transpose(1, 2).reshape(-1, columns.shape[1])).view(weight_shape)


class _ConvWithMatmulWeightGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias, stride, padding, dilation) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = matmul_weight_grad(grad, x, weight.shape, stride, padding, dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


def _output_pixels(conv: nn.Conv2d, x: Tensor) -> int:
    pixels = 1
    for size, kernel, stride, padding, dilation in zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.padding,
                                                       conv.dilation):
        pixels *= (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return pixels


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (its parameters, state-dict keys and outputs) with the CPU weight gradient of
    small outputs taken as a matmul (see the module's docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.convolve(x, self.weight, self.bias)

    def convolve(self, x: Tensor, weight: Tensor, bias) -> Tensor:
        """This convolution (its stride, padding, dilation) of ``x`` with another weight and bias of
        its shapes: e.g. its own with a frozen batch norm folded in (``resnet.conv_norm``)."""
        if (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu" and self.groups == 1
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and _output_pixels(self, x) <= MATMUL_WEIGHT_GRAD_PIXELS):
            return _ConvWithMatmulWeightGrad.apply(x, weight, bias, self.stride, self.padding, self.dilation)
        return self._conv_forward(x, weight, bias)
