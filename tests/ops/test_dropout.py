"""The native CPU dropout against its reference formula and torch's semantics."""

import pytest
import torch
import torch.nn.functional as F

from deformdetr.ops import Dropout, dropout, dropout_after_relu, dropout_reference, relu_dropout

native_dropout = torch.ops.deformdetr.dropout
native_relu_dropout = torch.ops.deformdetr.relu_dropout

_MASK64 = 2**64 - 1


def splitmix64_keeps(seed: int, p: float, n: int) -> list[bool]:
    """The stream the kernel is defined by, written out: element i is dropped when the low (even
    i) or high (odd i) 32 bits of SplitMix64's output i // 2 + 1 for ``seed`` are below p * 2^32."""
    keeps = []
    for i in range(n):
        z = (seed + (i // 2 + 1) * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        draw = (z >> 32) if i % 2 else (z & 0xFFFFFFFF)
        keeps.append(draw >= int(p * 2**32))
    return keeps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_output_is_the_reference_for_the_mask_it_returns(dtype, p):
    x = torch.randn(3, 1001, dtype=dtype)  # an odd count: the last element draws alone
    out, keep_mask = native_dropout(x, p, 12345)
    assert keep_mask.dtype == torch.bool and keep_mask.shape == x.shape
    torch.testing.assert_close(out, dropout_reference(x, p, keep_mask), rtol=0, atol=0)
    if p == 1.0:
        assert not keep_mask.any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_with_probability_one_minus_p(p):
    n = 400_000
    _, keep_mask = native_dropout(torch.ones(n), p, 7)
    kept = keep_mask.double().mean().item()
    assert abs(kept - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    # Neighbours are independent (a pair of elements shares one 64-bit draw).
    pairs = keep_mask[: n - 1] & keep_mask[1:]
    assert abs(pairs.double().mean().item() - (1 - p) ** 2) < 0.01


def test_the_mask_is_splitmix64s_stream_across_the_kernels_blocks():
    n = 2 * 4096 + 3  # many of the kernel's blocks (256 elements) and an odd tail
    _, keep_mask = native_dropout(torch.ones(n), 0.4, 2**62 + 17)
    assert keep_mask.tolist() == splitmix64_keeps(2**62 + 17, 0.4, n)


def test_the_mask_depends_on_the_seed_and_not_on_the_thread_count():
    x = torch.randn(100_003)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_dropout(x, 0.3, 99)[1]
        torch.set_num_threads(2)
        two = native_dropout(x, 0.3, 99)[1]
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)
    assert not torch.equal(one, native_dropout(x, 0.3, 100)[1])


def test_torch_manual_seed_reproduces_the_masks():
    x = torch.randn(10_000)
    torch.manual_seed(3)
    first = dropout(x, 0.2)
    second = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first) and not torch.equal(first, second)


def test_gradient_is_the_incoming_gradient_on_kept_elements_scaled():
    x = torch.randn(5000, dtype=torch.float64, requires_grad=True)
    out, keep_mask = native_dropout(x, 0.25, 5)
    grad = torch.randn(5000, dtype=torch.float64)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad * keep_mask / 0.75)


def test_torch_semantics_at_the_edges():
    x = torch.randn(64)
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros(64))
    nan = torch.full((64,), float("nan"))
    assert torch.isnan(dropout(nan, 0.5)).all() and torch.isnan(F.dropout(nan, 0.5)).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)


def test_16_bit_tensors_take_torchs_dropout():
    x = torch.ones(100_000, dtype=torch.bfloat16)
    out = dropout(x, 0.5)
    assert out.dtype == torch.bfloat16
    assert abs((out != 0).double().mean().item() - 0.5) < 0.01


def test_the_module_is_an_nn_dropout_with_the_native_kernel():
    module = Dropout(0.4)
    assert isinstance(module, torch.nn.Dropout) and module.state_dict() == {}
    x = torch.randn(1000)
    torch.manual_seed(1)
    expected = dropout(x, 0.4)
    torch.manual_seed(1)
    assert torch.equal(module(x), expected)
    assert torch.equal(module.eval()(x), x)


def test_second_derivatives_flow_through_the_backward():
    x = torch.randn(300, dtype=torch.float64, requires_grad=True)
    out, keep_mask = native_dropout(x, 0.5, 11)
    (grad,) = torch.autograd.grad((out * out).sum(), x, create_graph=True)  # 2 x mask^2 / (1-p)^2
    (second,) = torch.autograd.grad(grad.sum(), x)
    torch.testing.assert_close(second, 2 * keep_mask.double() / 0.25)


def test_the_binding_names_what_is_wrong():
    from deformdetr import _C

    x = torch.randn(10)
    keep = torch.empty(10, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"output must have shape \(10,\)"):
        _C.dropout(x, 0.5, 1, torch.empty(9), keep)
    with pytest.raises(TypeError, match="keep_mask must be bool"):
        _C.dropout(x, 0.5, 1, torch.empty(10), torch.empty(10))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        _C.dropout(x, 1.5, 1, torch.empty(10), keep)
    with pytest.raises(TypeError, match="grad_input must have the dtype of grad_output"):
        _C.dropout_backward(x, keep, 2.0, torch.empty(10, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_relu_dropout_is_dropout_of_the_relu_with_the_same_draws(dtype, p):
    x = torch.randn(5, 1999, dtype=dtype)
    out, keep_mask = native_relu_dropout(x, p, 321)
    expected, dropout_mask = native_dropout(torch.relu(x), p, 321)
    assert torch.equal(out, expected)
    assert torch.equal(keep_mask, dropout_mask & (x > 0))


def test_relu_dropout_gradient_is_that_of_relu_then_dropout():
    x = torch.randn(4000, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4000, dtype=torch.float64)
    out, _ = native_relu_dropout(x, 0.3, 8)
    (fused,) = torch.autograd.grad(out, x, grad)
    y = torch.relu(x)
    (unfused,) = torch.autograd.grad(native_dropout(y, 0.3, 8)[0], x, grad)
    assert torch.equal(fused, unfused)


def test_relu_dropout_keeps_torchs_semantics():
    x = torch.randn(64)
    assert torch.equal(relu_dropout(x, 0.5, training=False), torch.relu(x))
    assert torch.equal(relu_dropout(x, 0.0), torch.relu(x))
    nan = torch.tensor([float("nan"), -1.0, 2.0] * 100)
    out = relu_dropout(nan, 0.5)
    assert torch.isnan(out[::3]).all() and (out[1::3] == 0).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        relu_dropout(x, -0.1)
    half = relu_dropout(torch.randn(100_000, dtype=torch.bfloat16), 0.5)  # torch's path
    assert half.dtype == torch.bfloat16 and (half >= 0).all()


def test_dropout_after_relu_is_the_modules_dropout_of_the_relu():
    module = Dropout(0.2)
    x = torch.randn(3000)
    torch.manual_seed(4)
    expected = module(torch.relu(x))
    torch.manual_seed(4)
    assert torch.equal(dropout_after_relu(module, x), expected)
    assert torch.equal(dropout_after_relu(module.eval(), x), torch.relu(x))
    torch.manual_seed(4)
    expected = torch.nn.Dropout(0.2)(torch.relu(x))
    torch.manual_seed(4)
    assert torch.equal(dropout_after_relu(torch.nn.Dropout(0.2), x), expected)  # any other module as it is
