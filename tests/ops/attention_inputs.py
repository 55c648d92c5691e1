"""Inputs of the multi-scale deformable attention and its results for the op tests (CPU and
CUDA); on the test path through pyproject's pytest ``pythonpath``."""

import torch

from deformdetr.ops import ms_deform_attn, ms_deform_attn_reference


def make_inputs(
    shapes=((6, 5), (3, 4), (2, 1)),
    batch=2,
    heads=3,
    channels=7,
    queries=9,
    points=4,
    dtype=torch.float64,
    device="cpu",
    low=-0.2,
    high=1.2,
    requires_grad=False,
):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value_len = int(areas.sum())
    levels = len(shapes)
    value = torch.randn(batch, value_len, heads, channels, dtype=dtype, device=device)
    locations = low + (high - low) * torch.rand(
        batch, queries, heads, levels, points, 2, dtype=dtype, device=device
    )
    weights = torch.rand(batch, queries, heads, levels, points, dtype=dtype, device=device)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    for t in (value, locations, weights):
        t.requires_grad_(requires_grad)
    return value, spatial_shapes, level_start_index, locations, weights


def run(fn, inputs, grad_output=None):
    """(output, (grad value, grad locations, grad weights)) of fn on fresh leaves of inputs."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    go = torch.ones_like(out) if grad_output is None else grad_output
    grads = torch.autograd.grad(out, [leaves[0], leaves[3], leaves[4]], go)
    return out.detach(), grads


def both(inputs, grad_output=None):
    """run() of the native op and of the reference for the same inputs."""
    return [run(fn, inputs, grad_output) for fn in (ms_deform_attn, ms_deform_attn_reference)]
