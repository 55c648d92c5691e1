"""models.conv.Conv2d: nn.Conv2d's outputs and gradients, with a matmul weight gradient for small
CPU outputs."""

import pytest
import torch
from torch import nn

from deformdetr.models.conv import MATMUL_WEIGHT_GRAD_PIXELS, Conv2d

# (in, out, kernel, stride, padding, dilation, bias, input size): outputs of 2x2, 3x3, 1x1, 2x3.
SMALL = [
    (32, 16, 3, 1, 1, 1, False, (2, 2)),
    (16, 24, 3, 1, 1, 1, True, (3, 3)),
    (16, 32, 3, 2, 1, 1, False, (4, 4)),
    (8, 16, 1, 2, 0, 1, True, (3, 5)),
    (8, 8, 3, 1, 2, 2, False, (3, 3)),
]


def _pair(spec, seed=0):
    cin, cout, kernel, stride, padding, dilation, bias, _ = spec
    torch.manual_seed(seed)
    ours = Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    plain = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _gradients(conv, x):
    x = x.clone().requires_grad_(True)
    out = conv(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = [x.grad, conv.weight.grad] + ([conv.bias.grad] if conv.bias is not None else [])
    return out, grads


@pytest.mark.parametrize("spec", SMALL)
def test_small_outputs_take_the_matmul_weight_gradient_and_equal_nn_conv2d(spec):
    ours, plain = _pair(spec)
    x = torch.randn(3, spec[0], *spec[-1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, grads = _gradients(ours, x)
    expected_out, expected_grads = _gradients(plain, x)
    assert "ConvWithMatmulWeightGrad" in type(out.grad_fn).__name__
    assert out[0, 0].numel() <= MATMUL_WEIGHT_GRAD_PIXELS
    torch.testing.assert_close(out, expected_out)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected)


def test_frozen_weights_and_input_without_gradient():
    ours, plain = _pair(SMALL[0])
    ours.weight.requires_grad_(False)
    plain.weight.requires_grad_(False)
    x = torch.randn(2, 32, 2, 2, dtype=torch.float64)
    out, (grad_x, _) = _gradients(ours, x)
    _, (expected_x, _) = _gradients(plain, x)
    assert "ConvWithMatmulWeightGrad" not in type(out.grad_fn).__name__  # nothing to speed up
    torch.testing.assert_close(grad_x, expected_x)

    ours.weight.requires_grad_(True)
    out = ours(x)  # the input needs no gradient: only the weight's is taken
    out.sum().backward()
    plain.weight.requires_grad_(True)
    plain(x).sum().backward()
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad)


def test_larger_outputs_and_inference_are_plain_convolutions():
    ours, plain = _pair(SMALL[0])
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    out = ours(x)
    assert "ConvWithMatmulWeightGrad" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, plain(x))
    with torch.no_grad():
        assert ours(x[..., :2, :2]).grad_fn is None


def test_state_dict_keys_are_nn_conv2d_keys():
    ours, plain = _pair(SMALL[1])
    assert list(ours.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    assert isinstance(ours, nn.Conv2d)
