#!/usr/bin/env python
"""The validation metrics of a model exactly as `deformdetr train` starts it: the same config,
seed, data and initial weights, evaluated before any training step. The baseline that a trained
model's numbers (the demo's per-epoch AP in RESULTS.md) are compared with.

    python bench/untrained_metrics.py --config demo_monodetr_synthetic [overrides ...]

Prints the task's metric line and its headline metric; nothing is written outside a temporary
folder (the trainer's output folder).
"""

from __future__ import annotations

import argparse
import tempfile

from deformdetr.configs import load_config
from deformdetr.engine.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a preset name or YAML file")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cfg = load_config(args.config, [*args.overrides, f"output_dir={folder}"])
        trainer = Trainer(cfg, overwrite=True, progress=False)
        metrics = trainer.evaluate_epoch(0)
    task = trainer.task
    print(task.format_metrics(metrics))
    print(f"untrained ({args.config}, seed {cfg['train']['seed']}): {task.headline} {metrics.get(task.headline, 0):.3f}")


if __name__ == "__main__":
    main()
