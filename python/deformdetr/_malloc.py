"""Large CPU tensors kept in the C heap between uses, for the processes the CLI runs.

glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
mmap and returns it to the system on free, so each such tensor page-faults its memory in again on
first touch. A Deformable DETR at 800x1066 allocates many (the backbone's first stage, the
encoder's FFN activations: 55-73 MB each): on the 2-core development machine keeping them in the
heap took inference from 5.98 s to 4.61 s and a training step from 15.44 s to 13.99 s
(bench/RESULTS.md). The cost: the process keeps its peak heap instead of handing freed memory
back. ``DEFORMDETR_GLIBC_MALLOC=default`` leaves glibc's behaviour as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT_ENV = "DEFORMDETR_GLIBC_MALLOC"

# mallopt's parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_UP_TO_BYTES = 2**31 - 1  # mallopt takes an int: freed memory at the heap's top up to ~2 GiB stays


def keep_large_allocations() -> bool:
    """Asks glibc to serve large allocations from its heap and keep freed memory; returns whether
    it was done (False off Linux/glibc, or when the user opted out)."""
    if os.environ.get(OPT_OUT_ENV) == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO_BYTES))
