"""MSDeformAttn: official parameter names and initialisation, masks, reference points, compile."""

import math

import pytest
import torch

from deformdetr.ops import MSDeformAttn, use_reference

SHAPES = torch.tensor([[8, 10], [4, 5], [2, 3], [1, 2]])
STARTS = torch.tensor([0, 80, 100, 106])
VALUE_LEN = 108


def inputs(batch=2, queries=7, d_model=32, ref_dim=2, dtype=torch.float32):
    query = torch.randn(batch, queries, d_model, dtype=dtype)
    flat = torch.randn(batch, VALUE_LEN, d_model, dtype=dtype)
    ref = torch.rand(batch, queries, 4, ref_dim, dtype=dtype)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.05
    return query, ref, flat


def randomised(module):
    # The official init zeroes the offset/weight projections; randomise so every path matters.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module


def test_parameter_names_and_shapes_match_the_official_module():
    m = MSDeformAttn(d_model=256, n_levels=4, n_heads=8, n_points=4)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_initial_offsets_fan_out_per_head_and_grow_with_point_index():
    m = MSDeformAttn(d_model=64, n_levels=2, n_heads=8, n_points=3)
    assert m.sampling_offsets.weight.abs().max() == 0
    bias = m.sampling_offsets.bias.view(8, 2, 3, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(3):
            torch.testing.assert_close(bias[head, 1, point], direction * (point + 1))
    assert m.attention_weights.weight.abs().max() == 0 and m.attention_weights.bias.abs().max() == 0
    assert m.value_proj.bias.abs().max() == 0 and m.output_proj.bias.abs().max() == 0


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_matches_reference_path_with_padding_mask(ref_dim):
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3)).double()
    query, ref, flat = (t.double() for t in inputs(ref_dim=ref_dim))
    mask = torch.zeros(2, VALUE_LEN, dtype=torch.bool)
    mask[1, 40:80] = True
    out = m(query, ref, flat, SHAPES, STARTS, mask)
    with use_reference():
        ref_out = m(query, ref, flat, SHAPES, STARTS, mask)
    assert out.shape == (2, 7, 32)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)


def test_padding_mask_hides_masked_values():
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3))
    query, ref, flat = inputs()
    mask = torch.zeros(2, VALUE_LEN, dtype=torch.bool)
    mask[:, 50:80] = True
    changed = flat.clone()
    changed[:, 50:80] = torch.randn(2, 30, 32) * 100
    torch.testing.assert_close(
        m(query, ref, flat, SHAPES, STARTS, mask), m(query, ref, changed, SHAPES, STARTS, mask)
    )
    assert not torch.allclose(m(query, ref, flat, SHAPES, STARTS), m(query, ref, changed, SHAPES, STARTS))


def _masked_fills(module, *args) -> tuple:
    """How many masked_fill calls ``module(*args)`` makes, and its output."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += func.overloadpacket.__name__.startswith("masked_fill")
            return func(*args, **(kwargs or {}))

    with Count():
        output = module(*args)
    return Count.calls, output


def test_a_mask_without_padding_zeroes_nothing_and_changes_nothing():
    torch.manual_seed(0)
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3))
    query, ref, flat = inputs()
    no_padding = torch.zeros(2, VALUE_LEN, dtype=torch.bool)
    calls, output = _masked_fills(m, query, ref, flat, SHAPES, STARTS, no_padding)
    assert calls == 0
    assert torch.equal(output, m(query, ref, flat, SHAPES, STARTS))
    padding = no_padding.clone()
    padding[1, -3:] = True
    calls, _ = _masked_fills(m, query, ref, flat, SHAPES, STARTS, padding)
    assert calls == 1


def test_gradients_reach_every_parameter():
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3))
    query, ref, flat = inputs()
    m(query, ref, flat, SHAPES, STARTS).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=30, n_heads=8), "divisible"),
        (dict(n_points=0), "n_points"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MSDeformAttn(**kwargs)


def test_bad_reference_points_and_mask():
    m = MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3)
    query, ref, flat = inputs()
    with pytest.raises(ValueError, match="reference_points"):
        m(query, torch.rand(2, 7, 4, 3), flat, SHAPES, STARTS)
    with pytest.raises(ValueError, match="reference_points"):
        m(query, torch.rand(2, 7, 3, 2), flat, SHAPES, STARTS)
    with pytest.raises(ValueError, match="input_padding_mask"):
        m(query, ref, flat, SHAPES, STARTS, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="query"):
        m(torch.randn(2, 7, 16), ref, flat, SHAPES, STARTS)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(flat=torch.randn(3, VALUE_LEN, 32)), r"input_flatten has batch size 3 but query has 2"),
        (dict(ref=torch.rand(3, 7, 4, 2)), r"reference_points .* \(2, 7, 4, 2\|4\|6\) to match query"),
        (dict(ref=torch.rand(2, 5, 4, 2)), r"reference_points .* \(N, Lq\) = \(2, 7\)"),
        (dict(shapes=SHAPES[:3]), r"input_spatial_shapes must have shape \(4, 2\)"),
        (dict(shapes=SHAPES.flatten()), r"input_spatial_shapes must have shape \(4, 2\)"),
        (dict(starts=STARTS[:3]), r"input_level_start_index must have shape \(4,\)"),
    ],
)
def test_inputs_that_do_not_agree_are_value_errors_naming_the_argument(change, match):
    # They used to fail inside torch: "shape '[...]' is invalid", a broadcast error.
    m = MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3)
    query, ref, flat = inputs()
    args = {**dict(ref=ref, flat=flat, shapes=SHAPES, starts=STARTS), **change}
    with pytest.raises(ValueError, match=match):
        m(query, args["ref"], args["flat"], args["shapes"], args["starts"])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32])
def test_a_padding_mask_that_is_not_bool_is_a_type_error(dtype):
    # 0/1 masks disagree on which value marks padding, so none is guessed.
    m = MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3)
    query, ref, flat = inputs()
    with pytest.raises(TypeError, match=r"input_padding_mask must be a bool tensor.*mask.bool\(\)"):
        m(query, ref, flat, SHAPES, STARTS, torch.zeros(2, VALUE_LEN, dtype=dtype))


@pytest.mark.parametrize("as_", [lambda t: t.tolist(), lambda t: tuple(map(tuple, t.tolist()))])
def test_spatial_shapes_and_start_index_may_be_lists(as_):
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3))
    query, ref, flat = inputs()
    expected = m(query, ref, flat, SHAPES, STARTS)
    torch.testing.assert_close(m(query, ref, flat, as_(SHAPES), STARTS.tolist()), expected, rtol=0, atol=0)
    with use_reference():
        torch.testing.assert_close(m(query, ref, flat, as_(SHAPES), STARTS.tolist()), expected)


def test_spatial_shapes_of_another_type_are_a_type_error():
    m = MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3)
    query, ref, flat = inputs()
    with pytest.raises(TypeError, match="input_spatial_shapes must be an int64 tensor or a list"):
        m(query, ref, flat, SHAPES.numpy(), STARTS)


def test_torch_compile_fullgraph_module_on_cpu():
    m = randomised(MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=3))
    query, ref, flat = inputs()
    compiled = torch.compile(m, fullgraph=True)
    out = compiled(query, ref, flat, SHAPES, STARTS)
    torch.testing.assert_close(out, m(query, ref, flat, SHAPES, STARTS), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert m.value_proj.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_sampling_locations_are_the_official_formula_bit_for_bit(dtype):
    from deformdetr.ops.ms_deform_attn_module import _point_locations

    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[20, 27], [10, 14], [5, 7]])
    reference = torch.rand(2, 33, 3, 2, generator=generator, dtype=dtype).requires_grad_()
    offsets = (torch.randn(2, 33, 4, 3, 5, 2, generator=generator, dtype=dtype) * 3).requires_grad_()
    official = reference[:, :, None, :, None, :] + offsets / torch.stack(
        [shapes[..., 1], shapes[..., 0]], -1)[None, None, None, :, None, :]
    ours = _point_locations(reference, offsets, shapes)
    assert ours.shape == official.shape and torch.equal(ours, official)
    grad = torch.randn(official.shape, generator=generator, dtype=dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5  # the reference's gradient: sums in another order
    for a, b in zip(torch.autograd.grad(ours, (reference, offsets), grad),
                    torch.autograd.grad(official, (reference, offsets), grad)):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
