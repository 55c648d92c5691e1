"""The ``deformdetr`` command line: train, eval, predict, convert, export, demo, bench, info."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings

from deformdetr._malloc import keep_large_allocations
from deformdetr.bench import positive_int


def _info(args) -> int:
    import torch

    import deformdetr
    from deformdetr._native import _C

    def cuda_version(number: int) -> str:  # CUDART_VERSION style: 12040 is 12.4
        return f"{number // 1000}.{number % 1000 // 10}"

    print(f"deformdetr {deformdetr.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); "
          f"CPU threads {torch.get_num_threads()}")
    print(f"CUDA kernels compiled: {deformdetr.cuda_compiled}; "
          f"CUDA device available: {torch.cuda.is_available()}")
    if not deformdetr.cuda_compiled:
        return 0
    runtime, branch = _C.cuda_runtime_version, _C.cuda_minimum_driver_branch
    needs = f"an NVIDIA driver R{branch} or newer" if branch else f"a driver for CUDA {cuda_version(runtime)}"
    print(f"CUDA runtime of the kernels: {cuda_version(runtime)}, linked statically (needs {needs})")
    driver = _C.cuda_driver_version()
    print(f"NVIDIA driver: {'supports CUDA ' + cuda_version(driver) if driver else 'none found'}")
    if driver and driver // 1000 < runtime // 1000:
        print(f"The driver is too old for these kernels: update it, or rebuild deformdetr with the "
              f"CUDA toolkit it supports, e.g. `pip install --no-build-isolation --force-reinstall . "
              f"-Ccmake.define.CMAKE_CUDA_COMPILER=/usr/local/cuda-{cuda_version(driver)}/bin/nvcc`")
    return 0


#: The benchmarks of ``deformdetr bench``: name -> (module of deformdetr.bench with a main(argv),
#: what it measures).
BENCHMARKS = {
    "attention": ("ms_deform_attn", "the deformable attention op against the pure-PyTorch reference"),
    "matcher": ("matcher", "the Hungarian matcher against the official approach and scipy"),
    "model": ("model", "the whole model's inference and training step (--parts: against the floor)"),
    "memory": ("memory", "peak memory of a training step, plain and with each memory knob"),
    "training": ("training", "a preset's training loop on its own data, part by part"),
    "export": ("export", "ONNX export: file size, onnxruntime against torch, agreement"),
}


def _bench(args) -> int:
    module = importlib.import_module(f"deformdetr.bench.{BENCHMARKS[args.what][0]}")
    module.main(args.rest)
    return 0


def _config(args):
    from deformdetr.configs import load_config

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def _train(args) -> int:
    from deformdetr.engine import distributed as dist
    from deformdetr.engine.tasks import get_task
    from deformdetr.engine.trainer import CHECKPOINT_NAME, train

    cfg = _config(args)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, weights=args.weights)
    except KeyboardInterrupt:
        _report_interrupted(os.path.join(cfg["output_dir"], CHECKPOINT_NAME))
        return 130
    if dist.is_main_process():  # the other processes of a distributed run have nothing to add
        _print_metrics(get_task(cfg), result["eval"])
        print(f"outputs in {result['output_dir']} ({result['minutes']:.1f} min)")
    return 0


def _report_interrupted(checkpoint: str) -> None:
    if os.path.isfile(checkpoint):
        print(f"\ninterrupted; the last finished epoch is saved in {checkpoint}: continue with "
              f"--resume {checkpoint}", file=sys.stderr)
    else:
        print("\ninterrupted before the first epoch finished; nothing was saved", file=sys.stderr)


def _print_metrics(task, metrics: dict) -> None:
    if metrics:
        print(task.format_metrics(metrics))


def _eval(args) -> int:
    from deformdetr.engine.tasks import get_task
    from deformdetr.engine.trainer import evaluate_checkpoint

    cfg = _config(args)
    if args.json:
        _check_writable(args.json)  # before the evaluation, not after it
    metrics = evaluate_checkpoint(cfg, args.checkpoint, args.results_dir)
    _print_metrics(get_task(cfg), metrics)
    if args.json and metrics:
        with open(args.json, "w") as handle:
            json.dump(metrics, handle, indent=2)
    return 0


def _check_writable(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: its folder {folder} is not writable")


def _threshold(text: str) -> float:
    """An argparse type: a detection score threshold in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {text}")
    return value


def _minutes(text: str) -> float:
    """An argparse type: a time budget in minutes, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the time budget must be more than 0 minutes, got {text}")
    return value


def _predict(args) -> int:
    from deformdetr.engine.predict import PREDICTIONS_NAME, SKIPPED_NAME, image_files, load_for_prediction
    from deformdetr.engine.tasks import predict_option_values
    from deformdetr.engine.trainer import resolve_device

    task, model, categories = load_for_prediction(args.checkpoint)
    options = predict_option_values(task, args, args.checkpoint)
    records = task.predict_images(model, image_files(args.images), args.output_dir, resolve_device(args.device),
                                  args.threshold, categories, batch_size=args.batch_size, compile=args.compile,
                                  **options)
    found = sum(len(r["detections"]) for r in records)
    print(f"{found} detections in {len(records)} images -> {os.path.join(args.output_dir, PREDICTIONS_NAME)}")
    if records.skipped:
        count = len(records.skipped)
        print(f"{count} image{'s' if count > 1 else ''} could not be read: see "
              f"{os.path.join(args.output_dir, SKIPPED_NAME)}", file=sys.stderr)
    return 0


def _convert(args) -> int:
    from deformdetr.engine.convert import convert_checkpoint

    print(f"wrote {convert_checkpoint(args.checkpoint, args.output, args.to)}")
    return 0


def _export(args) -> int:
    from deformdetr.engine.export import DEFAULT_SIZES, export_onnx, family_name, verify_onnx
    from deformdetr.models.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint).eval()
    height, width = args.size or DEFAULT_SIZES[family_name(model)]
    started = time.time()
    export_onnx(model, args.output, height, width, dynamic=args.dynamic, opset=args.opset)
    shape = "any batch and image size" if args.dynamic else f"batch 1, {height}x{width}"
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB, {shape}) in "
          f"{time.time() - started:.0f} s")
    if args.check:
        sizes = [(1, height, width)] + ([(2, height * 3 // 4, width * 5 // 4), (3, height // 2, width // 2)]
                                       if args.dynamic else [])
        for result in verify_onnx(model, args.output, sizes):
            worst = max(result["max_abs_diff"].values())
            same = "" if "same_detections" not in result else (
                ", same detections" if result["same_detections"] else ", DIFFERENT detections")
            print(f"onnxruntime vs torch at batch {result['size'][0]}, {result['size'][1]}x{result['size'][2]}: "
                  f"max |difference| {worst:.1e}{same}")
    return 0


def _demo(args) -> int:
    from deformdetr.configs import load_config
    from deformdetr.engine.predict import load_for_prediction
    from deformdetr.engine.tasks import DEFAULT_TASK, task_class
    from deformdetr.engine.trainer import CHECKPOINT_NAME, resolve_device, train

    demo = task_class(args.task)
    output_dir = args.output_dir or os.path.join("outputs", "demo" if args.task == DEFAULT_TASK else f"demo_{args.task}")
    minutes = args.minutes or demo.demo_minutes
    overrides = [f"output_dir={output_dir}", f"data.root={os.path.join(output_dir, 'data')}",
                 f"train.max_minutes={minutes}"] + list(args.overrides)
    cfg = load_config(demo.demo_preset, overrides)
    started = time.time()
    device = resolve_device(cfg["device"])
    print(f"deformdetr demo: {demo.title} on synthetic data ({demo.demo_preset}) -> train on {device.type} for up "
          f"to {minutes:g} min -> evaluate -> pictures in {output_dir}", flush=True)
    # The demo is meant to be run again: a new run replaces the previous demo's outputs.
    result = train(cfg, overwrite=True)
    metrics = result["eval"]
    task, model, categories = load_for_prediction(os.path.join(cfg["output_dir"], CHECKPOINT_NAME))
    images, options = task.validation_images()
    predictions = os.path.join(cfg["output_dir"], "predictions")
    threshold = args.threshold if args.threshold is not None else demo.demo_threshold
    task.predict_images(model, images[: args.num_images], predictions, device, threshold, categories, **options)
    _print_metrics(task, metrics)
    print(f"demo done in {(time.time() - started) / 60:.1f} min: {task.headline} {metrics.get(task.headline, 0):.3f}"
          f"{_earlier_best(result, metrics, cfg['output_dir'])}; curves {os.path.join(cfg['output_dir'], 'curves.png')}; "
          f"pictures in {predictions}")
    return 0


def _earlier_best(result: dict, metrics: dict, output_dir: str) -> str:
    """" (best B at epoch E: <output_dir>/checkpoint_best.pth)" when an earlier epoch scored higher
    than the last (the pictures and the number before it are the last epoch's); else nothing."""
    from deformdetr.engine.trainer import BEST_NAME

    best = result.get("best")
    if not best or best["value"] <= metrics.get(best["metric"], float("-inf")):
        return ""
    return f" (best {best['value']:.3f} at epoch {best['epoch']}: {os.path.join(output_dir, BEST_NAME)})"


def _demo_tasks() -> list[str]:
    from deformdetr.engine.tasks import task_class, task_names

    return [name for name in task_names() if task_class(name).demo_preset]


def build_parser() -> argparse.ArgumentParser:
    from deformdetr.bench import image_size
    from deformdetr.engine.tasks import DEFAULT_TASK, add_predict_options, task_class

    parser = argparse.ArgumentParser(
        prog="deformdetr", description="Deformable DETR and MonoDETR on a fast C++/CUDA core."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    overrides_help = "config overrides, section.key=value (e.g. train.lr=1e-4 model.two_stage=true)"

    train = commands.add_parser("train", help="train a detector from a preset or a YAML config")
    train.add_argument("--config", "-c", default="demo_synthetic", help="preset name or YAML file")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", help="continue from this checkpoint (model, optimizer, epoch, RNG)")
    start.add_argument("--weights", help="start a new run from this checkpoint's weights (ours or official); "
                                         "those that do not fit (a head for other classes) are re-initialised")
    train.add_argument("--output-dir", help="where checkpoints, logs and plots go")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh even if the output folder holds a previous run")
    train.add_argument("overrides", nargs="*", help=overrides_help)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "eval", help="metrics of a checkpoint on the config's val split (COCO box AP; KITTI AP for mono3d)"
    )
    evaluate.add_argument("--config", "-c", default="demo_synthetic")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--json", help="also write the metrics to this file")
    evaluate.add_argument("--results-dir", help="also write the predictions in the benchmark's format "
                                                "(KITTI: a .txt per image; COCO: a results JSON)")
    evaluate.add_argument("overrides", nargs="*", help=overrides_help)
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="detect objects in images: JSON + PNGs with boxes")
    predict.add_argument("--checkpoint", required=True,
                         help="a deformdetr or official checkpoint, or a Hugging Face folder or hub id")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--output-dir", default="predictions")
    predict.add_argument("--threshold", type=_threshold,
                         help="keep scores >= this (0..1); default 0.5 for 2D models, a 3D model's test.threshold "
                              "(which this replaces)")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--batch-size", type=positive_int, default=1,
                         help="images run together (those of one size; results as one at a time)")
    predict.add_argument("--compile", action="store_true",
                         help="torch.compile the model (pays off over many images)")
    add_predict_options(predict)
    predict.set_defaults(run=_predict)

    convert = commands.add_parser(
        "convert", help="write a checkpoint as a Hugging Face transformers folder or in the official layout")
    convert.add_argument("checkpoint", help="ours, official, a Hugging Face folder or hub id")
    convert.add_argument("output", help="the folder (--to hf) or file (--to official) to write")
    convert.add_argument("--to", required=True, choices=["hf", "official"])
    convert.set_defaults(run=_convert)

    export = commands.add_parser(
        "export", help="write a model as ONNX (standard operators: stock onnxruntime runs it)")
    export.add_argument("--checkpoint", required=True, help="a deformdetr or official checkpoint, or a Hugging Face "
                                                            "folder or hub id")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--dynamic", action="store_true", help="one file for any batch size and image size")
    export.add_argument("--size", type=image_size, help="HEIGHTxWIDTH of the example input (the fixed size without "
                                                   "--dynamic); default 800x1066 (MonoDETR 384x1280)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (16 or later)")
    export.add_argument("--check", action="store_true",
                        help="then compare onnxruntime's outputs with torch's (at two more sizes with --dynamic)")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="synthetic data -> train on CPU -> evaluate -> pictures")
    demo.add_argument("--task", choices=_demo_tasks(), default=DEFAULT_TASK,
                      help="which detector's demo (default %(default)s)")
    demo.add_argument("--output-dir", help="default outputs/demo (outputs/demo_<task> for the others)")
    budgets = ", ".join(f"{task_class(name).demo_minutes:g} for {name}" for name in _demo_tasks())
    demo.add_argument("--minutes", type=_minutes,
                      help=f"training time budget ({budgets}; checked after each epoch, the whole demo takes "
                           f"~1-2 min more)")
    demo.add_argument("--num-images", type=int, default=8, help="validation images to draw")
    thresholds = ", ".join(f"{task_class(name).demo_threshold} for {name}" for name in _demo_tasks()
                           if task_class(name).demo_threshold is not None)
    demo.add_argument("--threshold", type=_threshold,
                      help=f"draw detections from this score ({thresholds}; otherwise as predict's)")
    demo.add_argument("overrides", nargs="*", help=overrides_help)
    demo.set_defaults(run=_demo)

    info = commands.add_parser("info", help="print the build and runtime configuration")
    info.set_defaults(run=_info)
    bench = commands.add_parser(
        "bench",
        help="compare the speed of the native core with reference implementations",
        description="Extra arguments go to the benchmark, e.g. `deformdetr bench attention --batch 2`;\n"
                    "`deformdetr bench NAME --help` lists them.",
        epilog="benchmarks:\n" + "\n".join(f"  {name:10s} {summary}" for name, (_, summary) in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("what", nargs="?", default="attention", choices=list(BENCHMARKS),
                       help="which benchmark (default: attention)")
    bench.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="the benchmark's own options")
    bench.set_defaults(run=_bench)
    return parser


def _with_default_bench(argv: list) -> list:
    # `deformdetr bench --batch 2` means the attention benchmark: argparse would take "2" for it.
    if len(argv) >= 1 and argv[0] == "bench" and (len(argv) == 1 or argv[1].startswith("-")) \
            and not set(argv[1:2]) & {"-h", "--help"}:
        return ["bench", "attention"] + argv[1:]
    return argv


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as a person reads them: what happened, one line, without Python's echo of the
    source line that warned."""
    from tqdm import tqdm

    text = " ".join(str(message).split())
    tqdm.write(f"deformdetr: warning: {text}", file=sys.stderr if file is None else file)  # not into a bar


def main(argv=None) -> int:
    argv = _with_default_bench(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    keep_large_allocations()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.run(args)
    except KeyboardInterrupt:
        print(f"\ndeformdetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ArithmeticError, ImportError) as error:
        # What users meet (bad settings, data, checkpoints, paths, full disks, a diverged
        # training, an optional extra not installed) arrives as one of these: a message, not a
        # traceback, unless asked for.
        if os.environ.get("DEFORMDETR_TRACEBACK"):
            raise
        print(f"deformdetr {args.command}: error: {error}", file=sys.stderr)
        print("(set DEFORMDETR_TRACEBACK=1 to see where it came from)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
