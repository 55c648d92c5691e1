"""Optimal assignment (the "Hungarian" problem) on the native solver, with the semantics of
``scipy.optimize.linear_sum_assignment``.

The solver is a shortest augmenting path method (Jonker-Volgenant family, after an augmenting row
reduction) in C++; see ``cpp/include/deformdetr/hungarian.h``. Costs are solved in float64.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

from deformdetr._native import _C, dense, num_threads

__all__ = ["linear_sum_assignment", "batched_linear_sum_assignment"]

CostMatrix = Union[np.ndarray, torch.Tensor]
Assignment = Tuple[CostMatrix, CostMatrix]

_NATIVE_NUMPY = (np.dtype(np.float32), np.dtype(np.float64))
_NATIVE_TORCH = (torch.float32, torch.float64)


def linear_sum_assignment(cost: CostMatrix, maximize: bool = False) -> Assignment:
    """Solves the linear sum assignment problem of a 2-D cost matrix.

    Chooses ``k = min(rows, cols)`` entries, no two in one row or column, whose sum is the
    smallest (largest with ``maximize=True``); ``+inf`` (``-inf`` when maximizing) forbids a pair.
    Returns ``(row_ind, col_ind)`` with ``row_ind`` ascending, as scipy does: int64 numpy arrays
    for array-like input, int64 CPU tensors for a tensor (any device).

    float32 and float64 are solved as they are; integers and 16-bit floats are converted to a
    float dtype; bool and complex raise TypeError. NaN (or an infinity of the wrong sign) raises
    ``ValueError("matrix contains invalid numeric entries")``; forbidden pairs that leave no
    complete assignment raise ``ValueError("cost matrix is infeasible")``.
    """
    if isinstance(cost, torch.Tensor):
        matrix = _cost_tensor(cost, "cost")
        size = min(matrix.shape)
        rows = torch.empty(size, dtype=torch.int64)
        cols = torch.empty(size, dtype=torch.int64)
    else:
        matrix = _cost_array(cost, "cost")
        size = min(matrix.shape)
        rows = np.empty(size, dtype=np.int64)
        cols = np.empty(size, dtype=np.int64)
    _C.linear_sum_assignment(matrix, bool(maximize), rows, cols)
    return rows, cols


def batched_linear_sum_assignment(
    costs: Sequence[CostMatrix], maximize: bool = False
) -> list[Assignment]:
    """Solves many independent problems at once, in parallel threads, with the GIL released.

    ``costs`` is a sequence of 2-D cost matrices (arrays or tensors, shapes may differ). Returns
    one ``(row_ind, col_ind)`` per matrix, equal to :func:`linear_sum_assignment` of it (the same
    kind of output for the same kind of input). The index arrays of one call share a buffer.
    Errors name the offending matrix, e.g. ``costs[3]: matrix contains invalid numeric entries``.
    """
    matrices, is_tensor = [], []
    for i, cost in enumerate(costs):
        name = f"costs[{i}]"
        if isinstance(cost, torch.Tensor):
            matrices.append(_cost_tensor(cost, name))
            is_tensor.append(True)
        else:
            matrices.append(_cost_array(cost, name))
            is_tensor.append(False)
    sizes = [min(m.shape) for m in matrices]
    indices = np.empty((2, sum(sizes)), dtype=np.int64)
    _C.batched_linear_sum_assignment(
        matrices, bool(maximize), indices[0], indices[1], num_threads()
    )
    results: list[Assignment] = []
    offset = 0
    for size, tensor in zip(sizes, is_tensor):
        rows, cols = indices[0, offset : offset + size], indices[1, offset : offset + size]
        offset += size
        results.append((torch.from_numpy(rows), torch.from_numpy(cols)) if tensor else (rows, cols))
    return results


def _cost_array(cost, name: str) -> np.ndarray:
    matrix = np.asarray(cost)
    if matrix.dtype not in _NATIVE_NUMPY:
        kind = matrix.dtype.kind
        if kind in "iuf":
            matrix = matrix.astype(np.float64)
        else:
            raise TypeError(
                f"{name} must hold real numbers (float32/float64, or integers, which are "
                f"converted to float64), got dtype {matrix.dtype}"
            )
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows, cols), got shape {matrix.shape}")
    return matrix


def _cost_tensor(cost: torch.Tensor, name: str) -> torch.Tensor:
    matrix = cost.detach()
    if matrix.dtype not in _NATIVE_TORCH:
        if matrix.dtype == torch.bool or matrix.is_complex():
            raise TypeError(
                f"{name} must hold real numbers (float32/float64, or integers, which are "
                f"converted to float64), got dtype {matrix.dtype}"
            )
        # Integers become float64 (exact up to 2**53); 16-bit floats fit float32 exactly.
        matrix = matrix.to(torch.float32 if matrix.is_floating_point() else torch.float64)
    if matrix.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix (rows, cols), got shape {tuple(matrix.shape)}"
        )
    if matrix.device.type != "cpu":
        matrix = matrix.cpu()
    return dense(matrix)
