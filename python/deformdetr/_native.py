"""Loads the native core ``deformdetr._C`` with an error that says what to do when it is missing."""

from __future__ import annotations

import contextlib

try:
    from deformdetr import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - only on a broken install
    raise ImportError(
        "deformdetr's native module (deformdetr._C) could not be imported. Install the package with "
        "`pip install .` from the repository root (it compiles the C++ core), rather than importing "
        f"it from a source checkout. Original error: {error}"
    ) from error


def cuda_stream_of(tensor) -> int:
    """The raw cudaStream_t of torch's current stream on the tensor's device (0 for CPU tensors)."""
    if tensor.device.type != "cuda":
        return 0
    import torch

    return torch.cuda.current_stream(tensor.device).cuda_stream


def num_threads() -> int:
    """CPU kernels use as many threads as torch does, so torch.set_num_threads governs both."""
    import torch

    return torch.get_num_threads()


def dense(tensor):
    """The tensor as the kernels must see it: contiguous, with its values in memory, detached.
    DLPack hands over raw storage, so a lazily negated or conjugated view (torch's neg/conj bits,
    e.g. from ``z.conj().imag``) would otherwise reach the kernels with the wrong sign; and
    torch's ``__dlpack__`` refuses a tensor that requires grad, after which nanobind tries again
    and falls back to torch's legacy exporter, after two exceptions per tensor per call (no
    slower on the CPU, bench/RESULTS.md says, but a path torch calls legacy)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.is_conj():
        tensor = tensor.resolve_conj()
    if tensor.is_neg():
        tensor = tensor.resolve_neg()
    return tensor.contiguous()


def on_device_of(tensor):
    """A context in which the tensor's CUDA device is current: torch's ``__dlpack__`` exports
    only tensors of the current device (nanobind falls back as above for the others). A no-op
    for CPU tensors and for the current device."""
    if tensor.device.type == "cuda":
        import torch

        if tensor.device.index != torch.cuda.current_device():
            return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
