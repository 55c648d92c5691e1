#!/usr/bin/env python
"""Whole-model speed against the official Deformable DETR, side by side in one process.

Builds one official variant (fundamentalvision/Deformable-DETR; on the CPU its attention runs
through its pure-PyTorch path, as it must without its CUDA extension), saves it as an official
checkpoint, loads that into deformdetr with ``load_checkpoint`` and times both models on the same
batch: inference (eval mode, no grad) and a training step (forward + backward of the summed
outputs), with dropout off and with the official dropout (0.1; deformdetr's CPU dropout is its
own kernel). The outputs are compared first, so both sides compute the same thing. With
``--compile``, deformdetr's model also runs through ``torch.compile`` (a third column; the time to
compile, the first calls, is printed apart and left out of the medians).

Needs the official checkout and torchvision, as bench/official_parity.py does (see its docstring):

  python bench/official_speed.py --official /tmp/parity/official --size 800x1066 --threads 2
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deformdetr.bench import image_size, median_seconds  # noqa: E402
import official_parity  # noqa: E402  (the same official-code import and weight perturbation)


def summed_outputs(out):
    return out["pred_logits"].sum() + out["pred_boxes"].sum()


def training_step(model, call):
    def run():
        model.zero_grad(set_to_none=True)
        summed_outputs(call()).backward()

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default=os.environ.get("DEFORMDETR_OFFICIAL", ""))
    ap.add_argument("--variant", default="multi_scale", choices=sorted(official_parity.VARIANTS))
    ap.add_argument("--size", default="800x1066", help="image height x width (default 800x1066)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-train", action="store_true", help="time inference only")
    ap.add_argument("--compile", action="store_true", help="also time deformdetr's model under torch.compile")
    opt = ap.parse_args()
    official_dir = os.path.abspath(opt.official) if opt.official else ""
    if not os.path.isfile(os.path.join(official_dir, "models", "deformable_detr.py")):
        ap.error("--official must point at a checkout of fundamentalvision/Deformable-DETR")
    official_parity.OFFICIAL = official_dir
    torch.set_num_threads(opt.threads)

    odd, omisc = official_parity.import_official()
    from deformdetr.models import load_checkpoint

    args = official_parity.official_args(opt.variant)
    torch.manual_seed(0)
    official, _, _ = odd.build(args)
    official_parity.perturb_(official, torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pth")
        torch.save({"model": official.state_dict(), "args": args}, path)
        ours = load_checkpoint(path)

    height, width = image_size(opt.size)
    images = torch.randn(opt.batch, 3, height, width, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(opt.batch, height, width, dtype=torch.bool)
    samples = omisc.NestedTensor(images, mask)
    run_official = lambda: official(samples)  # noqa: E731
    run_ours = lambda: ours(images, mask)  # noqa: E731

    official.eval()
    ours.eval()
    with torch.no_grad():
        out_o, out_u = run_official(), run_ours()
    diff = max((out_o[k] - out_u[k]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
    print(f"{opt.variant}, batch {opt.batch} of {height}x{width}, {opt.threads} threads, "
          f"torch {torch.__version__}; max |official - ours| of the outputs: {diff:.2e}")

    runs = [run_official, run_ours]
    if opt.compile:
        compiled = torch.compile(ours)
        runs.append(lambda: compiled(images, mask))
        with torch.no_grad():
            started = time.perf_counter()
            out_c = runs[-1]()
        diff = max((out_c[k] - out_u[k]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
        print(f"compiled inference: first call {time.perf_counter() - started:.0f} s; "
              f"max |compiled - eager| of the outputs: {diff:.2e}")

    rows = []
    with torch.no_grad():
        rows.append(("inference", *(median_seconds(run, opt.repeat) for run in runs)))
    if not opt.no_train:
        # Train mode, first with dropout off on both sides (the same work, without random
        # masks), then with the official dropout (0.1), as a model is trained.
        dropouts = [m for model in (official, ours) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        trained_p = [m.p for m in dropouts]
        for name, probabilities in (("training step (fwd+bwd)", [0.0] * len(dropouts)),
                                    ("... with dropout 0.1", trained_p)):
            for module, p in zip(dropouts, probabilities):
                module.p = p
            official.train()
            ours.train()
            models = [official, ours, ours][:len(runs)]  # the compiled column's module is ours
            steps = [training_step(model, run) for model, run in zip(models, runs, strict=True)]
            if opt.compile:
                started = time.perf_counter()
                steps[-1]()  # compiles the training graphs (once per dropout setting)
                print(f"compiled {name}: first step {time.perf_counter() - started:.0f} s")
            rows.append((name, *(median_seconds(step, opt.repeat) for step in steps)))

    compiled_columns = " deformdetr compiled s | speed-up |" if opt.compile else ""
    print(f"| {'':24s} | official s | deformdetr s | speed-up |{compiled_columns}")
    print("|---|---|---|---|" + "---|---|" * opt.compile)
    for name, t_official, t_ours, *t_compiled in rows:
        line = f"| {name:24s} | {t_official:10.2f} | {t_ours:12.2f} | {t_official / t_ours:7.1f}x |"
        for t in t_compiled:
            line += f" {t:21.2f} | {t_official / t:7.1f}x |"
        print(line)


if __name__ == "__main__":
    main()
