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


def _config(args):
    from deformdetr.configs import load_config

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def _train(args) -> int:
    from deformdetr.engine.trainer import train

    cfg = _config(args)
    result = train(cfg, resume=args.resume)
    _print_eval(result["eval"])
    print(f"outputs in {result['output_dir']} ({result['minutes']:.1f} min)")
    return 0


def _print_eval(stats: dict) -> None:
    if stats:
        print("COCO box " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items() if k.startswith("AP")))


def _eval(args) -> int:
    from deformdetr.engine.trainer import evaluate_checkpoint

    stats = evaluate_checkpoint(_config(args), args.checkpoint, args.results_dir)
    _print_eval(stats)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(stats, handle, indent=2)
    return 0


def _image_paths(inputs) -> list[str]:
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(p for p in glob.glob(os.path.join(item, "*"))
                            if p.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")))
        else:
            paths.append(item)
    if not paths:
        raise SystemExit("no images given (files or folders of .jpg/.png)")
    return paths


def _load_for_prediction(checkpoint_path: str):
    """(model, eval transform, class names) from a trainer checkpoint or an official one."""

    from deformdetr.data.transforms import make_coco_transforms
    from deformdetr.engine.checkpoint import load_training_checkpoint
    from deformdetr.engine.tasks import get_task
    from deformdetr.engine.tasks.detection import transform_settings
    from deformdetr.models import load_checkpoint

    state = load_training_checkpoint(checkpoint_path)
    if "config" in state:
        cfg = state["config"]
        if cfg["task"] != "detection":
            raise SystemExit(f"predict draws 2D detections; this checkpoint is a {cfg['task']} model")
        model, _ = get_task(cfg).build_model(cfg, load_pretrained=False)
        model.load_state_dict(state["model"])
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
    return 0


def _demo(args) -> int:
    from deformdetr.configs import load_config
    from deformdetr.engine.predict import predict_images
    from deformdetr.engine.trainer import resolve_device, train

    overrides = [f"output_dir={args.output_dir}", f"data.root={os.path.join(args.output_dir, 'data')}",
                 f"train.max_minutes={args.minutes}"] + list(args.overrides)
    cfg = load_config("demo_synthetic", overrides)
    started = time.time()
    print(f"deformdetr demo: synthetic shapes -> train on {cfg['device']} for up to {args.minutes} min "
          f"-> COCO eval -> predictions in {args.output_dir}", flush=True)
    result = train(cfg)
    stats = result["eval"]
    checkpoint = os.path.join(cfg["output_dir"], "checkpoint.pth")
    model, transform, names = _load_for_prediction(checkpoint)
    val_images = sorted(glob.glob(os.path.join(cfg["data"]["root"], "val2017", "*")))[: args.num_images]
    predictions = os.path.join(cfg["output_dir"], "predictions")
    predict_images(model, val_images, predictions, transform, resolve_device(cfg["device"]),
                   args.threshold, names)
    _print_eval(stats)
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
    train.add_argument("overrides", nargs="*", help=overrides_help)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="COCO box AP of a checkpoint on the config's val split")
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
    predict.add_argument("--threshold", type=float, default=0.5)
    predict.add_argument("--device", default="auto")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="synthetic data -> train on CPU -> evaluate -> pictures")
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--minutes", type=float, default=12.0,
                      help="training time budget (checked after each epoch; the whole demo takes ~1-2 min more)")
    demo.add_argument("--num-images", type=int, default=8, help="validation images to draw")
    demo.add_argument("--threshold", type=float, default=0.5)
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:  # configuration and data errors: a message, not a traceback
        from deformdetr.configs import ConfigError

        if isinstance(error, (ConfigError, FileNotFoundError)):
            print(f"deformdetr {args.command}: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
