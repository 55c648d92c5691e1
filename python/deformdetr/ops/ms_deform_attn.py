"""Multi-scale deformable attention: the native op (autograd, torch.compile, autocast) and its
pure-PyTorch reference.

Shapes follow the official implementation:
    value               (N, S, M, D)     S = sum of H*W over the L levels
    spatial_shapes      (L, 2) int64     (H, W) of each level; or a list of L (H, W) pairs
    level_start_index   (L,)   int64     offset of each level in S
    sampling_locations  (N, Lq, M, L, P, 2) normalised (x, y), 0..1 spans the map
    attention_weights   (N, Lq, M, L, P)
    returns             (N, Lq, M*D)
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from deformdetr._native import _C, cuda_stream_of, dense, num_threads, on_device_of

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "use_reference", "reference_in_use",
           "spatial_shapes_tensor", "check_level_geometry"]

_16_BIT = (torch.float16, torch.bfloat16)

# Set to "1" to check the level geometry on the host before every call, on any device.
CHECK_LEVELS_ENV = "DEFORMDETR_CHECK_LEVELS"


@torch.library.custom_op("deformdetr::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        dense(t) for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    )
    output = _empty_output(value, sampling_locations)
    if os.environ.get(CHECK_LEVELS_ENV) == "1":
        check_level_geometry(spatial_shapes, level_start_index, value.shape[1])
    with on_device_of(value):
        _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            output, num_threads(), cuda_stream_of(value),
        )
    return output.flatten(2)


def _check_devices(value: Tensor, *others: Tensor) -> None:
    # Also in the fake implementation: a meta tensor among real ones dispatches there, and would
    # otherwise get an unwritten output on value's device.
    names = ("spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    for name, tensor in zip(names, others):
        if tensor.device != value.device:
            raise ValueError(f"{name} is on {tensor.device}, value on {value.device}: all inputs "
                             f"must be on one device")


def _empty_output(value: Tensor, sampling_locations: Tensor) -> Tensor:
    _check_ranks(value, sampling_locations)
    batch, _, heads, channels = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], heads, channels))


def _check_ranks(value: Tensor, sampling_locations: Tensor) -> None:
    # The kernels check everything; these two ranks are needed to size the output before that.
    if value.dim() != 4:
        raise ValueError(f"value must have 4 dimensions (N, S, M, D), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6:
        raise ValueError(
            "sampling_locations must have 6 dimensions (N, Lq, M, L, P, 2), "
            f"got shape {tuple(sampling_locations.shape)}"
        )


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _check_devices(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _empty_output(value, sampling_locations).flatten(2)


@torch.library.custom_op("deformdetr::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        dense(t) for t in (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    )
    grad_output = dense(grad_output.reshape(
        value.shape[0], sampling_locations.shape[1], value.shape[2], value.shape[3]
    ))
    _alert_if_nondeterministic(value.device)
    # 16-bit gradients of value are summed in float32 by the CUDA kernel, then rounded once.
    accum_dtype = torch.float32 if value.dtype in _16_BIT else value.dtype
    grad_value = torch.empty(value.shape, dtype=accum_dtype, device=value.device)
    grad_locations = torch.empty_like(sampling_locations)
    grad_weights = torch.empty_like(attention_weights)
    with on_device_of(value):
        _C.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output, grad_value, grad_locations, grad_weights, num_threads(),
            cuda_stream_of(value),
        )
    return grad_value.to(value.dtype), grad_locations, grad_weights


def _alert_if_nondeterministic(device: torch.device) -> None:
    """Honours torch.use_deterministic_algorithms as torch's own grid_sample backward does: on
    CUDA the gradient of value is summed with atomic adds, in no fixed order. (The CPU backward
    is deterministic: each thread owns the rows it writes.)"""
    if device.type != "cuda" or not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        "deformdetr::ms_deform_attn_backward on CUDA sums the gradient of value with atomic "
        "adds, so its result can differ in the last bits from run to run; it has no "
        "deterministic implementation. Call torch.use_deterministic_algorithms(True, "
        "warn_only=True) to run it anyway with a warning."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)


@_ms_deform_attn_backward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output):
    return (
        torch.empty_like(value, memory_format=torch.contiguous_format),
        torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
        torch.empty_like(attention_weights, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locations, grad_weights = _ms_deform_attn_backward_op(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
    )
    return grad_value, None, None, grad_locations, grad_weights


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)

# Under autocast the op runs in float32: sampling locations in 16 bits cannot address a
# 100x167 map to better than ~0.1 px, and the official code does the same.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("deformdetr::ms_deform_attn", _device, torch.float32)


_state = threading.local()


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Within this context (per thread), ``ms_deform_attn`` runs the pure-PyTorch reference."""
    previous = getattr(_state, "reference", False)
    _state.reference = enabled
    try:
        yield
    finally:
        _state.reference = previous


def reference_in_use() -> bool:
    """Whether ``ms_deform_attn`` runs the reference here (inside ``use_reference()``)."""
    return getattr(_state, "reference", False)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention (see the module docstring for shapes).

    Runs the native kernels (CPU: float32/float64; CUDA: also float16/bfloat16), differentiable
    in value, sampling_locations and attention_weights. Inside ``use_reference()`` it runs
    :func:`ms_deform_attn_reference` instead. ``spatial_shapes`` may be a list of (H, W) pairs.

    The levels must tile value: ``level_start_index`` the running sum of the levels' H*W, and
    their sum S = ``value.shape[1]``. On the CPU a violation raises ValueError. On CUDA the
    shapes are not read on the host (that would synchronise): a level whose (start, H, W) would
    reach outside value contributes nothing, and other inconsistent geometry (levels that overlap
    or leave gaps) is computed as given. To get the CPU's errors on CUDA, call
    :func:`check_level_geometry` on the inputs, or set the environment variable
    ``DEFORMDETR_CHECK_LEVELS=1`` to check before every call (one host synchronisation each).
    """
    if reference_in_use():
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if not isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes_tensor(spatial_shapes, value.device)
    return _ms_deform_attn_op(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


def check_level_geometry(spatial_shapes: Tensor, level_start_index: Tensor, value_len: int) -> None:
    """Raises ValueError, with the CPU kernels' message, unless the levels tile a value of length
    ``value_len`` exactly: every (H, W) positive, ``level_start_index`` the running sum of H*W,
    and the sum equal to ``value_len``. The CPU path always checks this; the CUDA path does not
    (see :func:`ms_deform_attn`). Copies the two small tensors to the host, which synchronises
    with the GPU when they live there."""
    _C.ms_deform_attn_check_levels(
        dense(spatial_shapes.cpu()), dense(level_start_index.cpu()), int(value_len)
    )


def spatial_shapes_tensor(shapes, device=None) -> Tensor:
    """(L, 2) int64 of a list of L (H, W) pairs, built size by size: torch.as_tensor would bake
    the values of sizes that torch.export traces symbolically into the exported graph."""
    return torch.stack([torch.stack([torch.scalar_tensor(size, dtype=torch.int64, device=device) for size in shape])
                        for shape in shapes])


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The same maths in plain PyTorch with ``grid_sample``: slow, but obviously right.

    ``spatial_shapes`` given as a list of (H, W) pairs is used as it is: sizes that torch.export
    traces symbolically stay symbolic (a tensor's values would be baked in), so the exported
    graph serves any image size."""
    _check_ranks(value, sampling_locations)
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    per_level_value = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample's grid spans [-1, 1]; with align_corners=False, -1 is the left edge of pixel 0.
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = (
            per_level_value[level].permute(0, 2, 3, 1).reshape(batch * heads, channels, height, width)
        )
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # (N*M, D, Lq, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1).view(batch, heads * channels, queries)
    return output.transpose(1, 2).contiguous()
