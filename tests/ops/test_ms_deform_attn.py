"""The native multi-scale deformable attention against its grid_sample reference (CPU; the
CUDA kernels' tests are in test_ms_deform_attn_cuda.py)."""

import importlib

import pytest
import torch

import deformdetr
from attention_inputs import both, make_inputs, run
from deformdetr._native import dense
from deformdetr.ops import (check_level_geometry, ms_deform_attn, ms_deform_attn_reference, spatial_shapes_tensor,
                            use_reference)

attn_module = importlib.import_module("deformdetr.ops.ms_deform_attn")  # the op's module


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_forward_and_gradients_match_reference(dtype, tol):
    inputs = make_inputs(dtype=dtype)
    go = torch.randn(2, 9, 21, dtype=dtype)
    (out, grads), (ref_out, ref_grads) = both(inputs, go)
    assert out.shape == (2, 9, 21)
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=tol * 20, rtol=tol * 20)


def test_gradcheck_float64_all_three_inputs():
    value, shapes, starts, locations, weights = make_inputs(
        shapes=((3, 4), (2, 2)), batch=2, heads=2, channels=3, queries=3, points=2,
        low=0.05, high=0.95, requires_grad=True,
    )
    # Keep locations off the integer pixel grid, where bilinear sampling is not differentiable.
    assert torch.autograd.gradcheck(
        lambda v, l, w: ms_deform_attn(v, shapes, starts, l, w),
        (value, locations, weights),
        eps=1e-6, atol=1e-5,
    )


def test_locations_outside_the_map_and_on_pixel_borders():
    shapes = ((4, 6), (2, 3))
    value, spatial_shapes, starts, _, weights = make_inputs(shapes=shapes, queries=6, points=5)
    # Columns of special locations: far outside, just outside the half-pixel border, exactly on
    # pixel centres and edges, the map corners.
    specials = torch.tensor([-1.0, -0.1, 0.0, 1.0 / 12, 0.5, 1.0, 1.0 + 1e-3, 2.0], dtype=torch.float64)
    idx = torch.randint(0, len(specials), (2, 6, 3, 2, 5, 2))
    locations = specials[idx]
    (out, grads), (ref_out, ref_grads) = both((value, spatial_shapes, starts, locations, weights))
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0], ref_grads[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[2], ref_grads[2], atol=1e-12, rtol=1e-12)


def test_points_entirely_outside_give_zero_output_and_gradients():
    value, shapes, starts, locations, weights = make_inputs(queries=4)
    locations = locations.detach() * 0 + 3.0
    out, grads = run(ms_deform_attn, (value, shapes, starts, locations, weights))
    assert out.abs().max() == 0
    assert all(g.abs().max() == 0 for g in grads)


@pytest.mark.parametrize("empty", ["batch", "heads", "channels", "queries", "points"])
def test_empty_dimensions_give_empty_or_zero_results(empty):
    value, shapes, starts, locations, weights = make_inputs(**{empty: 0}, requires_grad=True)
    out = ms_deform_attn(value, shapes, starts, locations, weights)
    assert out.shape == (value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])
    grads = torch.autograd.grad(out.sum(), (value, locations, weights))
    assert [g.shape for g in grads] == [value.shape, locations.shape, weights.shape]
    assert out.abs().sum() == 0 and all(g.abs().sum() == 0 for g in grads)


def test_non_finite_locations_contribute_nothing():
    # As in the official CUDA kernel: a NaN or infinite location fails the inside-the-map test,
    # so it samples zeros and gets zero gradients instead of spreading NaN.
    value, shapes, starts, locations, weights = make_inputs(queries=5)
    bad = torch.zeros(locations.shape[:-1], dtype=torch.bool)
    bad[0, 0, 0, 0, 0] = bad[0, 1, 2, 1, 3] = bad[1, 4, 1, 2, 0] = True
    special = torch.tensor([[float("nan"), 0.5], [0.5, float("inf")], [-float("inf"), float("nan")]],
                           dtype=locations.dtype)
    locations = locations.clone()
    locations[bad] = special
    out, grads = run(ms_deform_attn, (value, shapes, starts, locations, weights))
    clean_weights = weights.masked_fill(bad, 0)
    clean_out, clean_grads = run(
        ms_deform_attn, (value, shapes, starts, locations.nan_to_num(0.5), clean_weights)
    )
    torch.testing.assert_close(out, clean_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0], clean_grads[0], atol=1e-12, rtol=1e-12)
    assert torch.isfinite(grads[1]).all() and grads[1][bad].abs().max() == 0
    assert grads[2][bad].abs().max() == 0
    torch.testing.assert_close(grads[2][~bad], clean_grads[2][~bad], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_points_outside_with_non_finite_weights_get_zero_gradients(device):
    # A point with no corner inside contributes nothing, so its location and weight gradients are
    # 0 even when its attention weight is inf or NaN (0 * inf would be NaN).
    value, shapes, starts, locations, weights = make_inputs(queries=4)
    outside = torch.zeros(locations.shape[:-1], dtype=torch.bool)
    outside[..., 0] = True  # the first point of every level
    locations, weights = locations.clone(), weights.clone()
    locations[outside] = 3.0
    non_finite = torch.tensor([float("inf"), float("nan"), -float("inf")], dtype=weights.dtype)
    weights[outside] = non_finite.repeat(int(outside.sum()) // 3 + 1)[: int(outside.sum())]
    inputs = [t.to(device) for t in (value, shapes, starts, locations, weights)]
    out, grads = run(ms_deform_attn, inputs)
    assert torch.isfinite(out).all() and torch.isfinite(grads[0]).all()
    assert grads[1].cpu()[outside].abs().max() == 0
    assert grads[2].cpu()[outside].abs().max() == 0
    clean_out, clean_grads = run(ms_deform_attn, (value, shapes, starts, locations,
                                                  weights.masked_fill(outside, 0)))
    torch.testing.assert_close(out.cpu(), clean_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[2].cpu()[~outside], clean_grads[2][~outside], atol=1e-12,
                               rtol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        dict(shapes=((5, 7),)),  # single level
        dict(channels=5),  # D not a power of two
        dict(channels=32, heads=2),  # the specialised D=32 path
        dict(channels=64, heads=1),  # the specialised D=64 path
        dict(batch=1),
        dict(batch=3, queries=1),
        dict(points=1),
    ],
)
def test_shape_variants_match_reference(case):
    inputs = make_inputs(**case)
    (out, grads), (ref_out, ref_grads) = both(inputs)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-11)


def test_many_queries_split_across_threads_match_reference():
    # Few (batch, head) pairs and many queries: the backward splits queries into private
    # grad_value buffers that are summed at the end.
    inputs = make_inputs(shapes=((8, 8), (4, 4)), batch=1, heads=1, queries=600)
    with_threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        (out, grads), (ref_out, ref_grads) = both(inputs)
    finally:
        torch.set_num_threads(with_threads)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


def test_few_queries_on_large_maps_match_reference():
    # Few samples per map position: the backward works in place instead of on head-major copies.
    inputs = make_inputs(shapes=((20, 20), (10, 10)), queries=3, points=2, channels=32)
    (out, grads), (ref_out, ref_grads) = both(inputs)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-11, rtol=1e-11)


def test_single_thread_equals_multi_thread_bitwise():
    inputs = make_inputs(dtype=torch.float32, queries=200)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ms_deform_attn(*inputs)
        torch.set_num_threads(4)
        four = ms_deform_attn(*inputs)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, four)


def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs()
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)
    locations_t = locations.transpose(0, 1).contiguous().transpose(0, 1)
    weights_t = weights.transpose(1, 4).contiguous().transpose(1, 4)
    assert not (value_t.is_contiguous() or locations_t.is_contiguous() or weights_t.is_contiguous())
    (out, grads), (ref_out, ref_grads) = both((value_t, shapes, starts, locations_t, weights_t))
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, ms_deform_attn(value, shapes, starts, locations, weights))


def test_use_reference_switches_implementation(monkeypatch):
    inputs = make_inputs()
    calls = []
    import importlib

    module = importlib.import_module("deformdetr.ops.ms_deform_attn")  # the module, not the function

    original = module.ms_deform_attn_reference
    monkeypatch.setattr(module, "ms_deform_attn_reference", lambda *a: calls.append(1) or original(*a))
    ms_deform_attn(*inputs)
    assert calls == []
    with use_reference():
        ms_deform_attn(*inputs)
    assert calls == [1]


def test_spatial_shapes_as_a_list_of_sizes_give_the_same_results():
    """Sizes as Python ints are what torch.export traces symbolically; both ops take them."""
    value, spatial_shapes, level_start_index, locations, weights = make_inputs()
    sizes = [tuple(shape) for shape in spatial_shapes.tolist()]
    assert torch.equal(spatial_shapes_tensor(sizes), spatial_shapes)
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        expected = fn(value, spatial_shapes, level_start_index, locations, weights)
        assert torch.equal(fn(value, sizes, level_start_index, locations, weights), expected)


def test_autocast_cpu_runs_in_float32():
    value, shapes, starts, locations, weights = make_inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights.bfloat16())
    assert out.dtype == torch.float32
    ref = ms_deform_attn_reference(value.bfloat16().float(), shapes, starts, locations, weights.bfloat16().float())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_opcheck():
    value, shapes, starts, locations, weights = make_inputs(requires_grad=True)
    torch.library.opcheck(
        torch.ops.deformdetr.ms_deform_attn.default, (value, shapes, starts, locations, weights)
    )


def test_torch_compile_fullgraph_of_the_op():
    inputs = make_inputs(dtype=torch.float32, requires_grad=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def attend(v, s, i, l, w):
        return ms_deform_attn(v, s, i, l, w).square().sum()

    loss = attend(*inputs)
    loss.backward()
    ref = ms_deform_attn_reference(*[t.detach() for t in inputs]).square().sum()
    torch.testing.assert_close(loss.detach(), ref, atol=1e-4, rtol=1e-5)
    assert inputs[0].grad is not None and inputs[3].grad is not None


# ---- error cases: every one raises a Python exception that names the argument -----------------


def _call(**replace):
    value, shapes, starts, locations, weights = make_inputs()
    args = dict(value=value, spatial_shapes=shapes, level_start_index=starts,
                sampling_locations=locations, attention_weights=weights)
    args.update(replace)
    return ms_deform_attn(**args)


@pytest.mark.parametrize(
    "replace,error,match",
    [
        (dict(value=torch.randn(2, 44, 3)), ValueError, "value must have 4 dimensions"),
        (dict(value=torch.randn(2, 45, 3, 7, dtype=torch.float64)), ValueError, "sum of H\\*W"),
        (dict(value=torch.randn(2, 43, 3, 7, dtype=torch.float64)), ValueError, "reaches past the end of value"),
        (dict(value=torch.randn(3, 44, 3, 7, dtype=torch.float64)), ValueError, "sampling_locations.*batch"),
        (dict(value=torch.randn(2, 44, 4, 7, dtype=torch.float64)), ValueError, "sampling_locations.*heads"),
        (dict(value=torch.randn(2, 44, 3, 7, dtype=torch.float32)), TypeError, "sampling_locations must have the dtype of value"),
        (dict(value=torch.randn(2, 44, 3, 7).to(torch.float16)), TypeError, "value must be float32 or float64 on cpu"),
        (dict(spatial_shapes=torch.tensor([[6, 5], [3, 4], [2, 1]], dtype=torch.int32)), TypeError, "spatial_shapes must be int64"),
        (dict(spatial_shapes=torch.tensor([[6, 5], [3, 4]])), ValueError, "level_start_index.*levels"),
        (dict(spatial_shapes=torch.tensor([[6, 5], [3, 3], [2, 1]])), ValueError, "level_start_index\\[2\\] must be 39"),
        (dict(spatial_shapes=torch.tensor([[6, 5], [3, 4], [2, 0]])), ValueError, "must be positive"),
        (dict(level_start_index=torch.tensor([0, 31, 42])), ValueError, "level_start_index\\[1\\] must be 30"),
        (dict(sampling_locations=torch.rand(2, 9, 3, 3, 4, 3, dtype=torch.float64)), ValueError, "\\(x, y\\)"),
        (dict(sampling_locations=torch.rand(2, 9, 3, 2, 4, 2, dtype=torch.float64)), ValueError, "sampling_locations.*levels"),
        (dict(attention_weights=torch.rand(2, 9, 3, 3, 5, dtype=torch.float64)), ValueError, "attention_weights.*points"),
        (dict(attention_weights=torch.rand(2, 8, 3, 3, 4, dtype=torch.float64)), ValueError, "attention_weights.*queries"),
        (dict(attention_weights=torch.rand(2, 9, 3, 3, dtype=torch.float64)), ValueError, "attention_weights must have 5 dimensions"),
    ],
)
def test_invalid_inputs_raise_clear_errors(replace, error, match):
    with pytest.raises(error, match=match):
        _call(**replace)


@pytest.mark.parametrize("huge", [(2**32, 2**32), (2**62, 4)])
def test_spatial_shapes_whose_area_overflows_raise(huge):
    # H * W wraps to 0 in int64, so a plain sum of the areas would match value's length and the
    # kernel would read far outside value.
    value, _, _, locations, weights = make_inputs()
    value = value[:, :42]
    shapes = torch.tensor([[6, 5], [3, 4], list(huge)])
    starts = torch.tensor([0, 30, 42])
    with pytest.raises(ValueError, match=r"spatial_shapes\[2\].*reaches past the end of value"):
        ms_deform_attn(value, shapes, starts, locations, weights)


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_inputs_on_another_device_than_value_raise(index):
    # A meta tensor among CPU ones routes the call to the fake implementation, which must not
    # hand back an unwritten CPU output.
    inputs = list(make_inputs())
    inputs[index] = inputs[index].to("meta")
    with pytest.raises(ValueError, match="must be on one device"):
        ms_deform_attn(*inputs)


def test_cuda_tensor_on_cpu_only_build_explains_rebuild():
    if deformdetr.cuda_compiled:
        pytest.skip("this build has CUDA kernels")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device to make a CUDA tensor")
    with pytest.raises(ValueError, match="Rebuild"):
        _call(value=make_inputs(device="cuda")[0])


def test_nondeterministic_cuda_backward_honours_use_deterministic_algorithms():
    from deformdetr.ops.ms_deform_attn import _alert_if_nondeterministic

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        _alert_if_nondeterministic(cuda)  # not asked for determinism: silent
        torch.use_deterministic_algorithms(True)
        _alert_if_nondeterministic(cpu)  # the CPU backward is deterministic
        with pytest.raises(RuntimeError, match="atomic adds"):
            _alert_if_nondeterministic(cuda)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="atomic adds"):
            _alert_if_nondeterministic(cuda)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# Levels that do not tile value: overlapping, leaving a gap, past its end, too short, empty.
_BAD_LEVELS = [
    (((6, 5), (3, 4), (2, 1)), (0, 20, 42), 44),
    (((6, 5), (3, 4), (2, 1)), (0, 31, 42), 44),
    (((6, 5), (3, 4), (2, 1)), (0, 30, 42), 43),
    (((6, 5), (3, 4), (2, 1)), (0, 30, 42), 45),
    (((6, 5), (3, 0), (2, 1)), (0, 30, 30), 32),
    (((6, 5), (3, 4), (2**32, 2**32)), (0, 30, 42), 42),
]


@pytest.mark.parametrize("shapes,starts,value_len", _BAD_LEVELS)
def test_check_level_geometry_raises_what_the_cpu_kernels_raise(shapes, starts, value_len):
    # The opt-in check for CUDA inputs, whose kernels do not check the geometry: the same error
    # as the CPU path, which always checks.
    spatial_shapes, level_start_index = torch.tensor(shapes), torch.tensor(starts)
    _, _, _, locations, weights = make_inputs(shapes=((6, 5), (3, 4), (2, 1)))
    value = torch.randn(2, value_len, 3, 7, dtype=torch.float64)
    with pytest.raises(ValueError) as kernel_error:
        ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    with pytest.raises(ValueError) as check_error:
        check_level_geometry(spatial_shapes, level_start_index, value_len)
    assert str(check_error.value) == str(kernel_error.value)


def test_check_level_geometry_accepts_levels_that_tile_value():
    value, shapes, starts, _, _ = make_inputs()
    check_level_geometry(shapes, starts, value.shape[1])
    with pytest.raises(TypeError, match="spatial_shapes must be int64"):
        check_level_geometry(shapes.int(), starts, value.shape[1])


@pytest.mark.parametrize("requested", [False, True])
def test_check_levels_environment_variable_checks_before_every_call(monkeypatch, requested):
    checked = []

    def record(spatial_shapes, level_start_index, value_len):
        checked.append((spatial_shapes.tolist(), level_start_index.tolist(), value_len))

    monkeypatch.setattr(attn_module, "check_level_geometry", record)
    if requested:
        monkeypatch.setenv(attn_module.CHECK_LEVELS_ENV, "1")
    else:
        monkeypatch.delenv(attn_module.CHECK_LEVELS_ENV, raising=False)
    value, shapes, starts, locations, weights = make_inputs()
    ms_deform_attn(value, shapes, starts, locations, weights)
    ms_deform_attn(value, shapes, starts, locations, weights)
    expected = [(shapes.tolist(), starts.tolist(), value.shape[1])] * 2
    assert checked == (expected if requested else [])


@pytest.mark.parametrize("view", ["requires_grad", "conj", "neg", "transposed"])
def test_dense_tensors_export_through_dlpack_as_they_read(view):
    # torch's __dlpack__ refuses tensors that require grad (nanobind then falls back after two
    # exceptions per tensor) and would hand over conjugated/negated views' raw storage.
    tensor = {
        "requires_grad": torch.randn(3, 4).requires_grad_(True),
        "conj": torch.randn(3, 4, dtype=torch.complex64).conj(),
        "neg": torch.randn(3, 4, dtype=torch.complex64).conj().imag,  # a lazily negated view
        "transposed": torch.randn(4, 3).t(),
    }[view]
    exported = torch.from_dlpack(dense(tensor).__dlpack__())
    assert torch.equal(exported, tensor.detach().resolve_conj().resolve_neg())


def test_cpu_backward_is_deterministic_under_use_deterministic_algorithms():
    inputs = make_inputs(requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = torch.autograd.grad(ms_deform_attn(*inputs).sum(), [inputs[0], inputs[3], inputs[4]])
        second = torch.autograd.grad(ms_deform_attn(*inputs).sum(), [inputs[0], inputs[3], inputs[4]])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
