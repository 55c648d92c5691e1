"""Loads the native core ``deformdetr._C`` with an error that says what to do when it is missing."""

from __future__ import annotations

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
    """The tensor as the kernels must see it: contiguous, with its values in memory. DLPack hands
    over raw storage, so a lazily negated or conjugated view (torch's neg/conj bits, e.g. from
    ``z.conj().imag``) would otherwise reach the kernels with the wrong sign."""
    return tensor.resolve_conj().resolve_neg().contiguous()
