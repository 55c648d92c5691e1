"""Exports a full-size Deformable DETR to ONNX (one dynamic file) and measures it on this
machine's CPU: the file size, onnxruntime's latency beside torch eager's (our native kernels) on
the same input, and how far onnxruntime's outputs are from torch's at the export size and two
others.

    deformdetr bench export [--variant multi_scale --size 800x1066 --repeat 3 --threads 2]

Random weights (no download): speed and agreement do not depend on them. ``--checkpoint`` takes
a real one instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from deformdetr.bench import image_size, median_seconds, positive_int
from deformdetr.engine.export import example_inputs, export_onnx, input_names, verify_onnx
from deformdetr.models import VARIANTS, deformable_detr, load_checkpoint


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="deformdetr bench export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="multi_scale", choices=list(VARIANTS))
    parser.add_argument("--checkpoint", help="export this checkpoint instead of a random-weight model")
    parser.add_argument("--size", type=image_size, default=(800, 1066), help="HEIGHTxWIDTH (default 800x1066)")
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    import onnxruntime

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = (load_checkpoint(args.checkpoint) if args.checkpoint
             else deformable_detr(args.variant, pretrained_backbone=False)).eval()
    height, width = args.size
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        started = time.perf_counter()
        export_onnx(model, path, height, width, dynamic=True)
        export_seconds = time.perf_counter() - started
        size_mib = os.path.getsize(path) / 2**20
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        inputs = example_inputs(model, height, width)
        feed = {name: tensor.numpy() for name, tensor in zip(input_names(model), inputs)}
        with torch.no_grad():
            torch_seconds = median_seconds(lambda: model(*inputs), args.repeat)
        ort_seconds = median_seconds(lambda: session.run(None, feed), args.repeat)
        checks = verify_onnx(model, path, [(1, height, width), (2, height * 3 // 4, width * 3 // 4),
                                           (1, height // 2, width * 5 // 8)])
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {args.checkpoint or args.variant + ' (random weights)'}, "
          f"batch 1, {height}x{width}")
    print(f"export (dynamic): {export_seconds:.0f} s, {size_mib:.1f} MiB")
    print("| input | torch eager (native attention) | onnxruntime (CPU) | ratio |")
    print("|---|---|---|---|")
    print(f"| 1 x 3 x {height} x {width} | {torch_seconds * 1000:.0f} ms | {ort_seconds * 1000:.0f} ms | "
          f"{ort_seconds / torch_seconds:.2f}x |")
    for check in checks:
        batch, h, w = check["size"]
        print(f"onnxruntime vs torch, batch {batch}, {h}x{w} (last image padded): max |difference| "
              f"{max(check['max_abs_diff'].values()):.1e}, same detections: {check['same_detections']}")
