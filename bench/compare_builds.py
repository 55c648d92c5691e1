#!/usr/bin/env python
"""Two builds of the native core, timed against each other on the CPU in one process: the
attention's forward and backward kernels (the bare _C calls) at the standard encoder and decoder
shapes, one thread, the builds alternating call by call, timed by the calling thread's CPU time.
On a shared machine wall-clock runs of one build at a time differ by 2-3x; interleaving and CPU
time make the two builds meet the same conditions.

    cp build/<tag>/_C*.so /tmp/before.so      # (one build)
    ...                                       # (change, rebuild)
    python bench/compare_builds.py /tmp/before.so path/to/after/_C*.so [--rounds 30]

Prints, per case, each build's best and median milliseconds and how often the first was faster.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch


def load(path: str):
    spec = importlib.util.spec_from_file_location("_C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    builds = [load(args.first), load(args.second)]
    names = [os.path.basename(p) for p in (args.first, args.second)]
    from deformdetr.bench.ms_deform_attn import make_inputs

    print(f"one thread, calling-thread CPU time, {args.rounds} rounds; first = {names[0]}")
    for case, queries in (("encoder", "encoder"), ("decoder", 300)):
        value, shapes, starts, locations, weights = make_inputs(1, queries, "cpu", torch.float32)
        inputs = (value, shapes, starts, locations, weights)
        output = torch.empty(value.shape[0], locations.shape[1], value.shape[2], value.shape[3])
        grads = (torch.empty_like(value), torch.empty_like(locations), torch.empty_like(weights))
        passes = {
            "forward": lambda build: build.ms_deform_attn_forward(*inputs, output, 1, 0),
            "backward": lambda build: build.ms_deform_attn_backward(*inputs, output, *grads, 1, 0),
        }
        for name, run in passes.items():
            times = [[], []]
            for build in builds:
                run(build)  # warm-up
            for _ in range(args.rounds):
                for build, spent in zip(builds, times):
                    start = time.thread_time()
                    run(build)
                    spent.append(time.thread_time() - start)
            wins = sum(a < b for a, b in zip(*times))
            columns = "  ".join(f"{min(t) * 1e3:8.2f} {statistics.median(t) * 1e3:8.2f}" for t in times)
            print(f"{case} {name:<9} best/median ms: {columns}   first faster {wins}/{args.rounds}")


if __name__ == "__main__":
    sys.exit(main())
