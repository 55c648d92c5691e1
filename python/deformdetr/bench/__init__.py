"""Speed comparisons against reference implementations, measured side by side in one run."""

import argparse
import statistics
import time


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a batch, a repeat count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_size(text: str) -> tuple:
    """An argparse type: an image size HEIGHTxWIDTH in pixels, as (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 800x1066, got {text!r}") from None
    if height < 32 or width < 32:
        raise argparse.ArgumentTypeError(f"images must be at least 32x32, got {text}")
    return height, width


def interleaved_comparison_args(description: str, argv=None) -> argparse.Namespace:
    """The options of the scripts that time a change against what it replaced, interleaved at one
    image size (--size, --rounds, --threads); sets the threads and, as the CLI does, keeps large
    tensors in glibc's heap, so that what is timed is the code and not page faults."""
    import torch

    from deformdetr._malloc import keep_large_allocations

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=image_size, default=(800, 1066), help="HEIGHTxWIDTH")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_large_allocations()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return args


def call_seconds(run, repeat: int, warmup: int = 1, sync=None) -> list:
    """Seconds of each of ``repeat`` calls of ``run``, after ``warmup`` calls (first-call
    allocations and set-up). ``sync``, when given, is called before each clock reading, so
    that asynchronous work (CUDA kernels) is counted where it runs."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        sync()
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(run, repeat: int, warmup: int = 1, sync=None) -> float:
    """Median of :func:`call_seconds`."""
    return statistics.median(call_seconds(run, repeat, warmup, sync))
