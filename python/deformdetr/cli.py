"""The ``deformdetr`` command line."""

from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import torch

    import deformdetr

    print(f"deformdetr {deformdetr.__version__}")
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    print(f"CUDA kernels compiled: {deformdetr.cuda_compiled}; "
          f"CUDA device available: {torch.cuda.is_available()}")
    return 0


def _bench(args) -> int:
    if args.what == "attention":
        from deformdetr.bench.ms_deform_attn import main as bench_main
    else:
        from deformdetr.bench.matcher import main as bench_main
    bench_main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deformdetr", description="Deformable DETR and MonoDETR on a fast C++/CUDA core."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the build and runtime configuration")
    info.set_defaults(run=_info)
    bench = commands.add_parser(
        "bench",
        help="compare the speed of the native core with reference implementations",
        description="Extra arguments go to the benchmark, e.g. `deformdetr bench attention --batch 2`.",
    )
    bench.add_argument("what", nargs="?", default="attention", choices=["attention", "matcher"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(run=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
