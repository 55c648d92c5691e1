"""Speed of deformdetr's multi-scale deformable attention against the grid_sample reference.

Standard Deformable DETR shapes: an 800x1333 image gives levels 100x167, 50x84, 25x42, 13x21;
8 heads, 4 points, 32 channels per head; the encoder has Lq = S queries, the decoder 300.
Prints forward and forward+backward times of both and their ratio, measured in this one run.

    python bench/compare_ms_deform_attn.py [--device cpu|cuda] [--batch 1] [--dtype float32]
        [--layout local|uniform]
"""

from __future__ import annotations

import argparse

import torch

from deformdetr.bench import median_seconds, positive_int
from deformdetr.ops import ms_deform_attn, ms_deform_attn_reference

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))


def encoder_reference_points():
    """Each encoder query sits at the centre of its own pixel, as in the model."""
    points = []
    for height, width in LEVELS:
        y, x = torch.meshgrid(
            (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
        )
        points.append(torch.stack([x.flatten(), y.flatten()], -1))
    return torch.cat(points)


def sampling_locations(batch, queries, heads, points, layout, g):
    """'local': reference point + offsets of a few pixels, as a trained model samples;
    'uniform': anywhere in the map (the official unit test's inputs, a cache worst case)."""
    levels = len(LEVELS)
    if layout == "uniform":
        return torch.rand(batch, queries, heads, levels, points, 2, generator=g)
    if queries == sum(h * w for h, w in LEVELS):
        reference = encoder_reference_points().expand(batch, queries, 2)
    else:
        reference = torch.rand(batch, queries, 2, generator=g)
    sizes = torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32)
    pixel_offsets = 2.0 * torch.randn(batch, queries, heads, levels, points, 2, generator=g)
    return reference[:, :, None, None, None, :] + pixel_offsets / sizes[:, None, :]


def make_inputs(batch, queries, device, dtype, layout="local", heads=8, channels=32, points=4):
    shapes = torch.tensor(LEVELS, dtype=torch.int64, device=device)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value_len = int(areas.sum())
    queries = value_len if queries == "encoder" else int(queries)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(batch, value_len, heads, channels, generator=g).to(device, dtype)
    locations = sampling_locations(batch, queries, heads, points, layout, g).to(device, dtype)
    weights = torch.rand(batch, queries, heads, len(LEVELS), points, generator=g).softmax(-1).to(device, dtype)
    return value, shapes, starts, locations, weights


def timed(fn, device, repeat, warmup=1):
    return median_seconds(fn, repeat, warmup, sync=torch.cuda.synchronize if device == "cuda" else None)


def measure(attn, inputs, device, repeat):
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, locations, weights)]

    def forward():
        with torch.no_grad():
            attn(value, shapes, starts, locations, weights)

    def forward_backward():
        out = attn(leaves[0], shapes, starts, leaves[1], leaves[2])
        out.backward(torch.ones_like(out))

    return timed(forward, device, repeat), timed(forward_backward, device, repeat)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="deformdetr bench attention", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
                        help="float16 and bfloat16 on CUDA only")
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--repeat", "--repeats", type=positive_int, default=5)
    parser.add_argument("--layout", default="local", choices=["local", "uniform"],
                        help="sampling locations near each query (as in a model) or uniform")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.dtype in ("float16", "bfloat16"):
        parser.error(f"--dtype {args.dtype} runs on CUDA only (the CPU kernels are float32/float64)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; dtype {args.dtype}; batch {args.batch}; {args.layout} locations; "
          f"levels {LEVELS}; M=8 D=32 P=4")
    print(f"{'case':<18}{'impl':<11}{'forward ms':>12}{'fwd+bwd ms':>12}")
    for case, queries in (("encoder Lq=S", "encoder"), ("decoder Lq=300", 300)):
        inputs = make_inputs(args.batch, queries, args.device, dtype, args.layout)
        ours = measure(ms_deform_attn, inputs, args.device, args.repeat)
        ref = measure(ms_deform_attn_reference, inputs, args.device, args.repeat)
        for impl, (fwd, fwd_bwd) in (("deformdetr", ours), ("reference", ref)):
            print(f"{case:<18}{impl:<11}{fwd * 1e3:>12.2f}{fwd_bwd * 1e3:>12.2f}")
        print(f"{case:<18}{'speedup':<11}{ref[0] / ours[0]:>11.1f}x{ref[1] / ours[1]:>11.1f}x")


if __name__ == "__main__":
    main()
