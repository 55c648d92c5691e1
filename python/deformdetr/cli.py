"""The ``deformdetr`` command line: train, eval, predict, demo, bench, info."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time


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
              f"-Cmake.define.CMAKE_CUDA_COMPILER=/usr/local/cuda-{cuda_version(driver)}/bin/nvcc`")
    return 0


def _bench(args) -> int:
    if args.what == "attention":
        from deformdetr.bench.ms_deform_attn import main as bench_main
    else:
        from deformdetr.bench.matcher import main as bench_main
    bench_main(args.rest)
    return 0


def _config(args):
    from deformdetr.configs import load_config

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def _train(args) -> int:
    from deformdetr.engine.trainer import CHECKPOINT_NAME, train

    cfg = _config(args)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        _report_interrupted(os.path.join(cfg["output_dir"], CHECKPOINT_NAME))
        return 130
    _print_eval(result["eval"], cfg["task"])
    print(f"outputs in {result['output_dir']} ({result['minutes']:.1f} min)")
    return 0


def _report_interrupted(checkpoint: str) -> None:
    if os.path.isfile(checkpoint):
        print(f"\ninterrupted; the last finished epoch is saved in {checkpoint}: continue with "
              f"--resume {checkpoint}", file=sys.stderr)
    else:
        print("\ninterrupted before the first epoch finished; nothing was saved", file=sys.stderr)


def _print_eval(stats: dict, task: str) -> None:
    if not stats:
        return
    if task == "mono3d":  # KITTI AP (R40, moderate) of each class and kind, in percent
        shown = {k: v for k, v in stats.items() if k.endswith("_moderate_R40")}
        print("KITTI AP|R40 moderate " + ", ".join(f"{k.removesuffix('_moderate_R40')} {v:.2f}"
                                                   for k, v in shown.items()))
    else:
        print("COCO box " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items() if k.startswith("AP")))


def _eval(args) -> int:
    from deformdetr.engine.trainer import evaluate_checkpoint

    cfg = _config(args)
    if args.json:
        _check_writable(args.json)  # before the evaluation, not after it
    stats = evaluate_checkpoint(cfg, args.checkpoint, args.results_dir)
    _print_eval(stats, cfg["task"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(stats, handle, indent=2)
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


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _image_paths(inputs) -> list[str]:
    """The image files named, and those in the folders named, without the drawings an earlier
    predict wrote into such a folder (listed in its predictions.json)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            drawn = _earlier_drawings(item)
            paths += sorted(p for p in glob.glob(os.path.join(item, "*"))
                            if p.lower().endswith(_IMAGE_SUFFIXES) and os.path.abspath(p) not in drawn)
        else:
            paths.append(item)
    if not paths:
        raise SystemExit(f"no images given (files, or folders of {'/'.join(_IMAGE_SUFFIXES)})")
    return paths


def _earlier_drawings(folder: str) -> set:
    from deformdetr.engine.predict import PREDICTIONS_NAME

    try:
        with open(os.path.join(folder, PREDICTIONS_NAME)) as handle:
            records = json.load(handle)
        return {os.path.abspath(r["png"]) for r in records if isinstance(r, dict) and "png" in r}
    except (OSError, ValueError, TypeError):
        return set()


def _load_for_prediction(checkpoint_path: str):
    """(model, eval transform, class names) from a trainer checkpoint or an official one."""

    from deformdetr.data.transforms import make_coco_transforms
    from deformdetr.engine.checkpoint import load_model_state, load_training_checkpoint
    from deformdetr.engine.tasks import get_task
    from deformdetr.engine.tasks.detection import transform_settings
    from deformdetr.models import load_checkpoint

    state = load_training_checkpoint(checkpoint_path)
    if "config" in state:
        cfg = state["config"]
        if cfg["task"] != "detection":
            raise SystemExit(f"predict draws 2D detections; this checkpoint is a {cfg['task']} model")
        model, _ = get_task(cfg).build_model(cfg, load_pretrained=False)
        load_model_state(model, state["model"], checkpoint_path)
        transform = make_coco_transforms("val", **transform_settings(cfg["data"]))
        return model, transform, state.get("class_names", {})
    return load_checkpoint(checkpoint_path), make_coco_transforms("val"), {}


def _predict(args) -> int:
    from deformdetr.engine.predict import predict_images
    from deformdetr.engine.trainer import resolve_device

    model, transform, names = _load_for_prediction(args.checkpoint)
    records = predict_images(model, _image_paths(args.images), args.output_dir, transform,
                             resolve_device(args.device), args.threshold, names)
    found = sum(len(r["detections"]) for r in records)
    print(f"{found} detections in {len(records)} images -> {os.path.join(args.output_dir, 'predictions.json')}")
    if records.skipped:
        print(f"{len(records.skipped)} images could not be read: see "
              f"{os.path.join(args.output_dir, 'skipped.json')}", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from deformdetr.configs import load_config
    from deformdetr.engine.predict import predict_images
    from deformdetr.engine.trainer import resolve_device, train

    overrides = [f"output_dir={args.output_dir}", f"data.root={os.path.join(args.output_dir, 'data')}",
                 f"train.max_minutes={args.minutes}"] + list(args.overrides)
    cfg = load_config("demo_synthetic", overrides)
    started = time.time()
    device = resolve_device(cfg["device"])
    print(f"deformdetr demo: synthetic shapes -> train on {device.type} for up to {args.minutes:g} min "
          f"-> COCO eval -> predictions in {args.output_dir}", flush=True)
    # The demo is meant to be run again: a new run replaces the previous demo's outputs.
    result = train(cfg, overwrite=True)
    stats = result["eval"]
    checkpoint = os.path.join(cfg["output_dir"], "checkpoint.pth")
    model, transform, names = _load_for_prediction(checkpoint)
    val_images = sorted(glob.glob(os.path.join(cfg["data"]["root"], "val2017", "*")))[: args.num_images]
    predictions = os.path.join(cfg["output_dir"], "predictions")
    predict_images(model, val_images, predictions, transform, device, args.threshold, names)
    _print_eval(stats, cfg["task"])
    print(f"demo done in {(time.time() - started) / 60:.1f} min: AP50 {stats.get('AP50', 0):.3f}; "
          f"curves {os.path.join(cfg['output_dir'], 'curves.png')}; pictures in {predictions}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deformdetr", description="Deformable DETR and MonoDETR on a fast C++/CUDA core."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    overrides_help = "config overrides, section.key=value (e.g. train.lr=1e-4 model.two_stage=true)"

    train = commands.add_parser("train", help="train a detector from a preset or a YAML config")
    train.add_argument("--config", "-c", default="demo_synthetic", help="preset name or YAML file")
    train.add_argument("--resume", help="continue from this checkpoint (model, optimizer, epoch, RNG)")
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
    evaluate.add_argument("--results-dir", help="mono3d: also write KITTI result files (one .txt per image)")
    evaluate.add_argument("overrides", nargs="*", help=overrides_help)
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="detect objects in images: JSON + PNGs with boxes")
    predict.add_argument("--checkpoint", required=True, help="a deformdetr or official checkpoint")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--output-dir", default="predictions")
    predict.add_argument("--threshold", type=_threshold, default=0.5, help="keep scores >= this (0..1)")
    predict.add_argument("--device", default="auto")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="synthetic data -> train on CPU -> evaluate -> pictures")
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--minutes", type=_minutes, default=12.0,
                      help="training time budget (checked after each epoch; the whole demo takes ~1-2 min more)")
    demo.add_argument("--num-images", type=int, default=8, help="validation images to draw")
    demo.add_argument("--threshold", type=_threshold, default=0.5)
    demo.add_argument("overrides", nargs="*", help=overrides_help)
    demo.set_defaults(run=_demo)

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


def _with_default_bench(argv: list) -> list:
    # `deformdetr bench --batch 2` means the attention benchmark: argparse would take "2" for it.
    if len(argv) >= 1 and argv[0] == "bench" and (len(argv) == 1 or argv[1].startswith("-")) \
            and not set(argv[1:2]) & {"-h", "--help"}:
        return ["bench", "attention"] + argv[1:]
    return argv


def main(argv=None) -> int:
    argv = _with_default_bench(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"\ndeformdetr {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ArithmeticError) as error:
        # What users meet (bad settings, data, checkpoints, paths, full disks, a diverged
        # training) arrives as one of these: a message, not a traceback, unless asked for.
        if os.environ.get("DEFORMDETR_TRACEBACK"):
            raise
        print(f"deformdetr {args.command}: error: {error}", file=sys.stderr)
        print("(set DEFORMDETR_TRACEBACK=1 to see where it came from)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
