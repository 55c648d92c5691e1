"""The CUDA kernels of the multi-scale deformable attention against the CPU kernels and the
reference (run on a GPU machine: pytest -m cuda)."""

import pytest
import torch

from attention_inputs import make_inputs, run
from deformdetr.ops import ms_deform_attn, ms_deform_attn_reference

# ---- CUDA (run on a GPU machine: pytest -m cuda; bench/gpu_checks.sh, results in bench/RESULTS.md)

_CUDA_TOLERANCES = [
    (torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2),
]


def _to(inputs, device, dtype):
    return [t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in inputs]


def _assert_cuda_matches_cpu_float64(inputs, dtype, tol):
    """Runs inputs (cast to dtype) on the GPU and, in float64, on the CPU; compares the output
    and, relative to their largest magnitude, the three gradients."""
    cuda_inputs = _to(inputs, "cuda", dtype)
    cpu_inputs = _to(cuda_inputs, "cpu", torch.float64)  # the same rounded values
    batch, queries, heads = inputs[3].shape[:3]
    go = torch.randn(batch, queries, heads * inputs[0].shape[-1], dtype=torch.float64).to(dtype)
    out, grads = run(ms_deform_attn, cuda_inputs, go.cuda())
    cpu_out, cpu_grads = run(ms_deform_attn, cpu_inputs, go.double())
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.double().cpu(), cpu_out, atol=tol, rtol=tol)
    for g, r in zip(grads, cpu_grads):
        scale = r.abs().max().clamp_min(1.0)
        torch.testing.assert_close(g.double().cpu() / scale, r / scale, atol=tol * 3, rtol=tol * 3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", _CUDA_TOLERANCES)
@pytest.mark.parametrize("channels", [5, 32, 40, 64])  # lanes without a channel; several chunks
def test_cuda_matches_cpu(dtype, tol, channels):
    inputs = make_inputs(shapes=((13, 21), (7, 11), (4, 6)), channels=channels, heads=4, queries=50)
    _assert_cuda_matches_cpu_float64(inputs, dtype, tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", _CUDA_TOLERANCES)
def test_cuda_matches_reference(dtype, tol):
    inputs = make_inputs(shapes=((13, 21), (7, 11), (4, 6)), channels=32, heads=4, queries=50)
    cuda_inputs = _to(inputs, "cuda", dtype)
    ref_inputs = _to(cuda_inputs, "cpu", torch.float64)
    out = ms_deform_attn(*cuda_inputs)
    torch.testing.assert_close(out.double().cpu(), ms_deform_attn_reference(*ref_inputs),
                               atol=tol, rtol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_borders_outside_and_non_finite_locations_match_cpu(dtype):
    shapes = ((4, 6), (2, 3))
    value, spatial_shapes, starts, _, weights = make_inputs(shapes=shapes, queries=6, points=5)
    specials = torch.tensor([-1.0, -0.1, 0.0, 1.0 / 12, 0.5, 1.0, 1.0 + 1e-3, 2.0, float("nan"),
                             float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    locations = specials[torch.randint(0, len(specials), (2, 6, 3, 2, 5, 2))]
    inputs = (value, spatial_shapes, starts, locations, weights)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    out, grads = run(ms_deform_attn, _to(inputs, "cuda", dtype))
    cpu_out, cpu_grads = run(ms_deform_attn, _to(inputs, "cpu", dtype))
    torch.testing.assert_close(out.cpu(), cpu_out, atol=tol, rtol=tol)
    torch.testing.assert_close(grads[0].cpu(), cpu_grads[0], atol=tol * 10, rtol=tol * 10)
    torch.testing.assert_close(grads[2].cpu(), cpu_grads[2], atol=tol * 10, rtol=tol * 10)
    # Not the location gradients: on a pixel edge the derivative jumps, and whether a computed x
    # lands a hair left or right of it may differ between devices (fused multiply-adds).
    non_finite = ~torch.isfinite(locations).all(-1)
    assert torch.isfinite(grads[1]).all() and grads[1].cpu()[non_finite].abs().max() == 0


def _forward_and_backward(value, shapes, starts, locations, weights, grad_output):
    """The op's two passes called directly: no autograd, no copies of the inputs (whose
    addresses the kernels' vector loads depend on)."""
    with torch.no_grad():
        out = ms_deform_attn(value, shapes, starts, locations, weights)
        grads = torch.ops.deformdetr.ms_deform_attn_backward(value, shapes, starts, locations, weights,
                                                             grad_output)
    return out, grads


def _shifted(t):
    """A contiguous copy of t one element into a new buffer: not aligned to 16 bytes."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    shifted = buffer[1:].view(t.shape)
    shifted.copy_(t)
    return shifted


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_value_and_grad_output_off_16_bytes_give_the_results_of_aligned_ones(dtype):
    # Aligned, a lane loads 16 bytes of channels at once; off alignment, one channel at a time.
    value, shapes, starts, locations, weights = _to(
        make_inputs(shapes=((13, 21), (7, 11)), channels=32, heads=4, queries=50), "cuda", dtype)
    grad_output = torch.randn(2, 50, 4 * 32, device="cuda").to(dtype)
    expected = _forward_and_backward(value, shapes, starts, locations, weights, grad_output)
    value, grad_output = _shifted(value), _shifted(grad_output)
    assert value.data_ptr() % 16 and grad_output.data_ptr() % 16
    out, grads = _forward_and_backward(value, shapes, starts, locations, weights, grad_output)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out, expected[0], atol=tol, rtol=tol)
    for g, e in zip(grads, expected[1]):
        torch.testing.assert_close(g / e.abs().max(), e / e.abs().max(), atol=tol, rtol=tol)


@pytest.mark.cuda
def test_cuda_value_of_2_31_elements_takes_64_bit_indices_and_matches_the_cpu():
    # One 8192 x 8192 level of one 32-channel head: value holds 2^31 elements (8 GiB of float32;
    # its gradient as much, on each device). The points lie in the map's last tenth, whose
    # elements sit past 2^31 * 0.9: 32-bit offsets would wrap there.
    side, queries = 8192, 64
    shapes = torch.tensor([[side, side]], device="cuda")
    starts = torch.zeros(1, dtype=torch.int64, device="cuda")
    value = torch.randn(1, side * side, 1, 32, device="cuda")
    locations = torch.rand(1, queries, 1, 1, 4, 2, device="cuda")
    locations[..., 1] = 0.9 + 0.1 * locations[..., 1]
    weights = torch.rand(1, queries, 1, 1, 4, device="cuda")
    grad_output = torch.randn(1, queries, 32, device="cuda")
    inputs = (value, shapes, starts, locations, weights, grad_output)
    out, grads = _forward_and_backward(*inputs)
    cpu_out, cpu_grads = _forward_and_backward(*(t.cpu() for t in inputs))
    torch.testing.assert_close(out.cpu(), cpu_out, atol=1e-5, rtol=1e-5)
    del value, inputs
    for g, e in zip(grads, cpu_grads):
        e = e.to(g.device)  # 8 GiB compared where it is
        scale = e.abs().max()
        torch.testing.assert_close(g / scale, e / scale, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_more_levels_than_the_kernels_take_is_an_error():
    inputs = _to(make_inputs(shapes=((1, 1),) * 1025, heads=1, channels=4, queries=2, points=1),
                 "cuda", torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="at most 1024 levels"):
        ms_deform_attn(*inputs)


@pytest.mark.cuda
@pytest.mark.parametrize("empty", ["batch", "heads", "channels", "queries", "points"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_empty_dimensions(empty, dtype):
    inputs = make_inputs(**{empty: 0})
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in _to(inputs, "cuda", dtype)]
    out = ms_deform_attn(*leaves)
    grads = torch.autograd.grad(out.sum(), [leaves[0], leaves[3], leaves[4]])
    torch.cuda.synchronize()
    assert [g.shape for g in grads] == [leaves[0].shape, leaves[3].shape, leaves[4].shape]
    assert out.abs().sum() == 0 and all(g.abs().sum() == 0 for g in grads)


@pytest.mark.cuda
@pytest.mark.parametrize("bad_shape", [(7, 9), (-3, 5), (2**32, 2**32), (2**62, 4)])
def test_cuda_levels_reaching_outside_value_are_skipped(bad_shape):
    # The host does not read device-side spatial shapes (that would synchronise); a level that
    # would reach outside value contributes nothing instead of reading out of bounds.
    value, shapes, starts, locations, weights = make_inputs(shapes=((6, 5), (3, 4), (2, 1)))
    bad_shapes = shapes.clone()
    bad_shapes[2] = torch.tensor(bad_shape)
    inputs = (value, bad_shapes, starts, locations, weights)
    out, grads = run(ms_deform_attn, _to(inputs, "cuda", torch.float64))
    torch.cuda.synchronize()
    skipped_weights = weights.clone()
    skipped_weights[:, :, :, 2] = 0
    cpu_out, cpu_grads = run(ms_deform_attn, (value, shapes, starts, locations, skipped_weights))
    torch.testing.assert_close(out.cpu(), cpu_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0].cpu(), cpu_grads[0], atol=1e-12, rtol=1e-12)
    assert grads[1][:, :, :, 2].abs().max() == 0 and grads[2][:, :, :, 2].abs().max() == 0


@pytest.mark.cuda
def test_cuda_gradcheck_float64():
    value, shapes, starts, locations, weights = make_inputs(
        shapes=((3, 4), (2, 2)), heads=2, channels=3, queries=3, points=2,
        low=0.05, high=0.95, device="cuda", requires_grad=True,
    )
    # grad_value is summed with atomic adds in no fixed order: two backward passes may differ in
    # the last bits (a few ulp of sums of O(1) terms), which gradcheck must tolerate.
    assert torch.autograd.gradcheck(
        lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w), (value, locations, weights),
        eps=1e-6, atol=1e-5, nondet_tol=1e-12,
    )


@pytest.mark.cuda
def test_cuda_runs_on_the_current_stream():
    # The side stream first sleeps, then fills value: a kernel launched on any other stream
    # would read value before it is filled.
    inputs = _to(make_inputs(channels=32, queries=500), "cuda", torch.float32)
    expected_out, expected_grads = run(ms_deform_attn, inputs)
    value = torch.zeros_like(inputs[0], requires_grad=True)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        with torch.no_grad():
            value.copy_(inputs[0])
        out = ms_deform_attn(value, *inputs[1:])
        grad_value = torch.autograd.grad(out.sum(), value)[0]
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(grad_value, expected_grads[0])


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_tensors_on_another_device_than_the_current_one():
    inputs = make_inputs(channels=32)
    expected, _ = run(ms_deform_attn, inputs)
    with torch.cuda.device(0):
        out, grads = run(ms_deform_attn, _to(inputs, "cuda:1", torch.float64))
        assert torch.cuda.current_device() == 0
    assert out.device == torch.device("cuda:1") and grads[0].device == torch.device("cuda:1")
    torch.testing.assert_close(out.cpu(), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.cuda
def test_cuda_autocast_runs_in_float32():
    value, shapes, starts, locations, weights = (
        t.half() if t.is_floating_point() else t for t in make_inputs(device="cuda")
    )
    with torch.autocast("cuda", dtype=torch.float16):
        out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.dtype == torch.float32
    expected = ms_deform_attn(value.float(), shapes, starts, locations.float(), weights.float())
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
def test_cuda_backward_refuses_when_determinism_is_required():
    inputs = [t.requires_grad_() if t.is_floating_point() else t
              for t in make_inputs(dtype=torch.float32, device="cuda")]
    out = ms_deform_attn(*inputs)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="atomic adds"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
