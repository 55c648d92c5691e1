"""Per-call overhead of the native attention op on the CPU: tiny inputs (one 1x1 level, one
head, channel, query and point), so the kernels take nanoseconds and what is timed is the Python
wrapper, torch's custom-op dispatch and the DLPack hand-over.

    python bench/call_overhead.py [--calls 20000] [--rounds 5]

Prints microseconds per call (the best of the rounds) for: the forward without autograd; the
forward of inputs that require grad; forward + backward; and the bare _C.ms_deform_attn_forward
call with tensors that require grad and with detached ones. The time is the calling thread's CPU
time (all of this work runs on it), so that other processes on a shared machine do not count.
"""

from __future__ import annotations

import argparse
import time

import torch

from deformdetr._native import _C
from deformdetr.ops import ms_deform_attn


def tiny_inputs(requires_grad: bool):
    value = torch.randn(1, 1, 1, 1, requires_grad=requires_grad)
    shapes = torch.tensor([[1, 1]])
    starts = torch.zeros(1, dtype=torch.int64)
    locations = torch.rand(1, 1, 1, 1, 1, 2, requires_grad=requires_grad)
    weights = torch.rand(1, 1, 1, 1, 1, requires_grad=requires_grad)
    return value, shapes, starts, locations, weights


def microseconds_per_call(fn, calls: int, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - start) / calls)
    return best * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    plain = tiny_inputs(False)
    leaves = tiny_inputs(True)
    output = torch.empty(1, 1, 1, 1)

    def forward_no_grad():
        with torch.no_grad():
            ms_deform_attn(*plain)

    def forward_of_leaves():
        ms_deform_attn(*leaves)

    def forward_backward():
        ms_deform_attn(*leaves).sum().backward()

    def bare_call(tensors):
        return lambda: _C.ms_deform_attn_forward(*tensors, output, 1, 0)

    detached = [t.detach() for t in leaves]
    cases = [
        ("ms_deform_attn, no grad", forward_no_grad),
        ("ms_deform_attn, inputs require grad", forward_of_leaves),
        ("forward + backward", forward_backward),
        ("_C call, tensors require grad", bare_call(leaves)),
        ("_C call, detached tensors", bare_call(detached)),
    ]
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"best of {args.rounds} rounds of {args.calls} calls")
    for name, fn in cases:
        print(f"{name:<40}{microseconds_per_call(fn, args.calls, args.rounds):8.1f} us/call")


if __name__ == "__main__":
    main()
