"""Training checkpoints: written atomically, and complete enough to resume exactly. (Reading
them, and loading weights, is deformdetr.models.checkpoint's.)"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from typing import Any, Callable

import numpy as np
import torch

from deformdetr._deprecated import moved_names
from deformdetr._files import write_atomic

__all__ = [
    "save_atomic",
    "copy_atomic",
    "rng_state",
    "restore_rng_state",
    "preserved_rng",
]

__getattr__ = moved_names(__name__, {"load_training_checkpoint": "deformdetr.models.checkpoint:read_checkpoint",
                                     "model_state_of": "deformdetr.models.checkpoint:model_state_of"})


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed over
    ``path``: a crash at any moment leaves either the old file or the new one, never half of one."""
    _write_atomic(path, lambda handle: torch.save(obj, handle))


def copy_atomic(source: str, path: str) -> None:
    """A copy of the file ``source`` at ``path``, written as :func:`save_atomic` writes."""
    def copy(handle) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, handle, 16 * 2**20)

    _write_atomic(path, copy)


def _write_atomic(path: str, write: Callable) -> None:
    try:
        write_atomic(path, write, durable=True)
    except (OSError, RuntimeError) as error:
        # torch reports a full disk as "unexpected pos ..."; say what the disk has left.
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        raise OSError(f"could not write checkpoint {path} ({free / 2**20:.0f} MiB free on its disk): "
                      f"{error}") from error


def rng_state() -> dict:
    """Every generator's state, as tensors and plain values only, so that the checkpoint still
    loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Randomness used inside (e.g. by evaluation transforms) leaves the training streams as they
    were, so that evaluating or not never changes what training does next."""
    state = rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
