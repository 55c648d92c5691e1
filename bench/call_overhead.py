"""Per-call overhead of the native attention op on the CPU: tiny inputs (one 1x1 level, one
head, channel, query and point), so the kernels take nanoseconds and what is timed is the Python
wrapper, torch's custom-op dispatch and the DLPack hand-over.

    python bench/call_overhead.py [--calls 2000] [--rounds 20]

Prints microseconds per call for: the op's forward without autograd, the forward of inputs that
require grad, forward + backward; and the native call the op makes, _C.ms_deform_attn_forward
after dense(), with inputs that require grad (as the op receives them) handed over three ways:
as dense() left them before 59bde2d, still requiring grad (torch's __dlpack__ refuses them and
nanobind falls back to the legacy torch.utils.dlpack.to_dlpack after the exception); as dense()
leaves them now, detached (__dlpack__ accepts them); and as DLPack capsules made by to_dlpack.
The cases alternate, round after round, and each reports its best round, so that a busy machine
slows all of them alike.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.dlpack import to_dlpack

from deformdetr._native import _C, dense
from deformdetr.ops import ms_deform_attn


def dense_before_59bde2d(tensor):
    return tensor.resolve_conj().resolve_neg().contiguous()


def tiny_inputs(requires_grad: bool):
    value = torch.randn(1, 1, 1, 1, requires_grad=requires_grad)
    shapes = torch.tensor([[1, 1]])
    starts = torch.zeros(1, dtype=torch.int64)
    locations = torch.rand(1, 1, 1, 1, 1, 2, requires_grad=requires_grad)
    weights = torch.rand(1, 1, 1, 1, 1, requires_grad=requires_grad)
    return value, shapes, starts, locations, weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    plain = tiny_inputs(False)
    leaves = tiny_inputs(True)
    output = torch.empty(1, 1, 1, 1)

    def forward_no_grad():
        with torch.no_grad():
            ms_deform_attn(*plain)

    cases = {
        "ms_deform_attn, no grad": forward_no_grad,
        "ms_deform_attn, inputs require grad": lambda: ms_deform_attn(*leaves),
        "forward + backward": lambda: ms_deform_attn(*leaves).sum().backward(),
        "dense() + _C call, as before 59bde2d": lambda: _C.ms_deform_attn_forward(
            *[dense_before_59bde2d(t) for t in leaves], output, 1, 0),
        "dense() + _C call, detached (now)": lambda: _C.ms_deform_attn_forward(
            *[dense(t) for t in leaves], output, 1, 0),
        "dense() + _C call, to_dlpack capsules": lambda: _C.ms_deform_attn_forward(
            *[to_dlpack(dense(t)) for t in leaves], to_dlpack(output), 1, 0),
    }
    best = dict.fromkeys(cases, float("inf"))
    for fn in cases.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads; best of {args.rounds} "
          f"alternating rounds of {args.calls} calls")
    for name, seconds in best.items():
        print(f"{name:<40}{seconds * 1e6:8.1f} us/call")


if __name__ == "__main__":
    main()
