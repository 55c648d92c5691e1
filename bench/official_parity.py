#!/usr/bin/env python
"""Parity with the official Deformable DETR: for each of the five official variants, build the
official model (fundamentalvision/Deformable-DETR, run on the CPU with its pure-PyTorch attention)
with random weights, save it as an official checkpoint, load that with
deformdetr.models.load_checkpoint (strict) and compare every output on the same padded batch.

The official code is not part of this project: check it out somewhere and point --official at it.
It needs torchvision, so run this in an environment that has it, e.g.

  git clone https://github.com/fundamentalvision/Deformable-DETR /tmp/parity/official
  python -m venv /tmp/parity/venv && /tmp/parity/venv/bin/pip install torch torchvision scipy \
      && /tmp/parity/venv/bin/pip install /path/to/deformdetr
  /tmp/parity/venv/bin/python bench/official_parity.py --official /tmp/parity/official

Options:
  --official DIR       the official repository checkout (default: $DEFORMDETR_OFFICIAL)
  --variants a,b,...   subset of: single_scale,single_scale_dc5,multi_scale,box_refine,two_stage
  --official-only      only build/run/save the official models and write key files
  --no-diagnose        skip the per-module divergence search on failures
  --tol 1e-4 --seed 0 --threads 1
"""
import argparse
import ast
import math
import os
import sys
import types

import numpy as np
import torch

OFFICIAL = os.environ.get("DEFORMDETR_OFFICIAL", "")

VARIANTS = {
    # name: flags, as in configs/*.sh
    "single_scale": ["--num_feature_levels", "1"],
    "single_scale_dc5": ["--num_feature_levels", "1", "--dilation"],
    "multi_scale": [],
    "box_refine": ["--with_box_refine"],
    "two_stage": ["--with_box_refine", "--two_stage"],
}

# Image sizes: two-stage picks top-300 encoder proposals, so every image needs
# more than 300 *valid* tokens, or tied logits of padded tokens decide the order.
IMAGE_SIZES = [(3, 192, 224), (3, 160, 192)]


# ----------------------------------------------------------------------------
# Official code import (CPU, no CUDA extension, no downloads)
# ----------------------------------------------------------------------------
def import_official():
    if OFFICIAL not in sys.path:
        sys.path.insert(0, OFFICIAL)
    # 1. fake compiled extension
    fake = types.ModuleType("MultiScaleDeformableAttention")

    def _no_ext(*a, **k):
        raise RuntimeError("MultiScaleDeformableAttention CUDA extension is faked on CPU")

    fake.ms_deform_attn_forward = _no_ext
    fake.ms_deform_attn_backward = _no_ext
    sys.modules["MultiScaleDeformableAttention"] = fake

    # 2. torchvision version checks in util/misc.py: float("0.29.1"[:3]) == 0.2
    import torchvision

    real_version = torchvision.__version__
    torchvision.__version__ = "0.8.0"
    try:
        import util.misc  # noqa: F401
    finally:
        torchvision.__version__ = real_version

    # 3. attention function -> official pure-PyTorch core
    import models.ops.functions.ms_deform_attn_func as msf

    core = msf.ms_deform_attn_core_pytorch

    def _apply(value, shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        return core(value, shapes, sampling_locations, attention_weights)

    msf.MSDeformAttnFunction.apply = staticmethod(_apply)

    import models.backbone as ob
    import models.deformable_detr as odd

    # 4. no ImageNet download
    ob.is_main_process = lambda: False
    return odd, util.misc


def official_get_args_parser():
    """main.py's get_args_parser, without running main.py's imports (datasets, engine)."""
    src = open(os.path.join(OFFICIAL, "main.py")).read()
    tree = ast.parse(src)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_args_parser"][0]
    mod = ast.Module(body=[fn], type_ignores=[])
    ns = {"argparse": argparse, "np": np}
    exec(compile(mod, os.path.join(OFFICIAL, "main.py"), "exec"), ns)
    return ns["get_args_parser"]()


def official_args(variant):
    parser = argparse.ArgumentParser(parents=[official_get_args_parser()])
    return parser.parse_args(VARIANTS[variant])


def perturb_(model, gen):
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            t.add_(0.02 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
            if name.endswith("running_var"):
                t.abs_().clamp_(min=1e-3)


def make_inputs(gen):
    imgs = [torch.randn(s, generator=gen) for s in IMAGE_SIZES]
    H = max(s[1] for s in IMAGE_SIZES)
    W = max(s[2] for s in IMAGE_SIZES)
    images = torch.zeros(len(imgs), 3, H, W)
    mask = torch.ones(len(imgs), H, W, dtype=torch.bool)
    for i, im in enumerate(imgs):
        images[i, :, : im.shape[1], : im.shape[2]] = im
        mask[i, : im.shape[1], : im.shape[2]] = False
    return imgs, images, mask


def flatten_outputs(out):
    """dict of model outputs -> ordered {name: tensor}"""
    flat = {}
    for k in ("pred_logits", "pred_boxes"):
        if k in out:
            flat[k] = out[k]
    for i, aux in enumerate(out.get("aux_outputs", []) or []):
        for k in ("pred_logits", "pred_boxes"):
            flat[f"aux{i}.{k}"] = aux[k]
    if "enc_outputs" in out and out["enc_outputs"] is not None:
        for k in ("pred_logits", "pred_boxes"):
            flat[f"enc.{k}"] = out["enc_outputs"][k]
    return flat


def perm_matched_diffs(flat_o, flat_u):
    """Two-stage: queries come from a top-k over encoder scores; ties closer than
    float noise may reorder them. Match our queries to official ones (nearest row
    over all decoder-layer outputs), then diff. Encoder outputs are not permuted."""
    dec = [k for k in flat_o if not k.startswith("enc")]
    if any(k not in flat_u or flat_u[k].shape != flat_o[k].shape for k in flat_o):
        return None
    fo = torch.cat([flat_o[k].double() for k in dec], -1)
    fu = torch.cat([flat_u[k].detach().double() for k in dec], -1)
    perms = []
    for b in range(fo.shape[0]):
        idx = torch.cdist(fu[b], fo[b]).argmin(1)  # our row i ~ official row idx[i]
        if idx.unique().numel() != idx.numel():
            return None
        perms.append(idx)
    nmoved = sum(int((p != torch.arange(p.numel())).sum()) for p in perms)
    out = {}
    for k in flat_o:
        a = flat_o[k].double()
        if not k.startswith("enc"):
            a = torch.stack([a[b][perms[b]] for b in range(a.shape[0])])
        out[k] = (a - flat_u[k].detach().double()).abs().max().item()
    return nmoved, out


# ----------------------------------------------------------------------------
# Intermediate capture (divergence search)
# ----------------------------------------------------------------------------
def _tensors(x):
    if torch.is_tensor(x):
        return [x]
    if hasattr(x, "tensors") and hasattr(x, "mask"):  # NestedTensor-like
        return _tensors(x.tensors) + _tensors(x.mask)
    if isinstance(x, dict):
        return [t for k in sorted(x, key=str) for t in _tensors(x[k])]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def capture(model, names, run):
    rec, order, hooks = {}, [], []
    mods = dict(model.named_modules(remove_duplicate=False))
    for n in names:
        def hook(m, i, o, n=n):
            if n not in rec:
                order.append(n)
                rec[n] = [t.detach().clone() for t in _tensors(o)]
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return rec, order


def diagnose(official, ours, run_off, run_ours, tol):
    on = dict(official.named_modules(remove_duplicate=False))
    un = dict(ours.named_modules(remove_duplicate=False))
    common = [n for n in on if n and n in un]
    only_off = [n for n in on if n and n not in un]
    r_o, order = capture(official, common, run_off)
    r_u, _ = capture(ours, common, run_ours)
    lines = []
    if only_off:
        lines.append(f"    {len(only_off)} official submodule names absent in ours, e.g. {only_off[:5]}")
    first = None
    for n in order:  # official execution order (hook fires at module end)
        a, b = r_o[n], r_u.get(n)
        if b is None:
            continue
        if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
            lines.append(f"    {n}: output structure differs "
                         f"{[tuple(x.shape) for x in a]} vs {[tuple(y.shape) for y in b]}")
            first = first or n
            continue
        d = max(((x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
                for x, y in zip(a, b)) if a else 0.0
        if not math.isfinite(d) or d > tol:
            lines.append(f"    {n}: max|diff|={d:.3e}")
            first = first or n
        if len(lines) >= 12:
            break
    never = [n for n in common if n in r_o and n not in r_u]
    if never:
        lines.append(f"    {len(never)} common-name modules never called in ours, e.g. {never[:5]}")
    head = f"    first diverging module (official call order): {first}" if first else \
        "    no common-name submodule diverges above tol"
    return [head] + lines


# ----------------------------------------------------------------------------
def main():
    global OFFICIAL
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--official-only", action="store_true")
    ap.add_argument("--no-diagnose", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--official", default=os.environ.get("DEFORMDETR_OFFICIAL", ""))
    ap.add_argument("--outdir", default=None, help="where checkpoints go (default: a temp dir)")
    ap.add_argument("--no-args", action="store_true", help="save checkpoints without 'args' "
                    "(variant must then be inferred from the state dict alone)")
    ap.add_argument("--selftest", choices=["same", "bug"], help="harness check: 'ours' = official model "
                    "reloaded from the checkpoint ('bug': with a perturbed decoder layer 3 norm)")
    opt = ap.parse_args()
    OFFICIAL = os.path.abspath(opt.official) if opt.official else ""
    if not os.path.isfile(os.path.join(OFFICIAL, "models", "deformable_detr.py")):
        ap.error("--official must point at a checkout of fundamentalvision/Deformable-DETR")
    made_outdir = opt.outdir is None
    if made_outdir:
        import tempfile

        opt.outdir = tempfile.mkdtemp(prefix="deformdetr-parity-")
    torch.set_num_threads(opt.threads)
    variants = [v for v in opt.variants.split(",") if v]

    odd, omisc = import_official()
    load_checkpoint = None
    our_import_error = None
    if opt.selftest:
        def load_checkpoint(path):
            ck = torch.load(path, map_location="cpu", weights_only=False)
            m, _, _ = odd.build(ck["args"])
            m.load_state_dict(ck["model"], strict=True)
            if opt.selftest == "bug":
                with torch.no_grad():
                    m.transformer.decoder.layers[3].norm2.bias.add_(1e-2)
            fwd = m.forward
            m.forward = lambda images, mask=None: fwd(omisc.NestedTensor(images, mask))
            return m
    elif not opt.official_only:
        try:
            from deformdetr.models import load_checkpoint
        except Exception as e:  # noqa: BLE001
            our_import_error = f"{type(e).__name__}: {e}"
            print(f"[ours] cannot import deformdetr.models.load_checkpoint: {our_import_error}")

    rows, failed, diag = [], False, {}
    for v in variants:
        print(f"\n=== {v} ===", flush=True)
        args = official_args(v)
        torch.manual_seed(opt.seed)
        official, _, _ = odd.build(args)
        gen = torch.Generator().manual_seed(opt.seed + 1)
        perturb_(official, gen)
        official.eval()
        imgs, images, mask = make_inputs(torch.Generator().manual_seed(opt.seed + 2))
        samples = omisc.NestedTensor(images, mask)

        # Two-stage top-k sanity: proposals must not tie (else order is arbitrary)
        topk_note = ""
        if args.two_stage:
            grab = {}
            def _h(m, i, o):
                grab["cls"] = o
            h = official.class_embed[args.dec_layers].register_forward_hook(_h)
        with torch.no_grad():
            out_o = official(samples)
        if args.two_stage:
            h.remove()
            sc = grab["cls"][..., 0]
            s = torch.sort(sc, dim=1, descending=True).values[:, : args.num_queries + 1]
            K = args.num_queries
            inner = (s[:, :K - 1] - s[:, 1:K]).min().item()
            boundary = (s[:, K - 1] - s[:, K]).min().item()
            topk_note = (f"two-stage proposal scores: min gap inside top-{K} = {inner:.3e}, "
                         f"gap at rank {K}/{K + 1} = {boundary:.3e}")
            print("  " + topk_note)
            if inner <= opt.tol:
                print("  note: near-tied proposals inside top-k; query ORDER may legitimately differ "
                      "(a permutation-matched comparison is used as fallback)")
            if boundary <= opt.tol:
                print("  WARNING: near-tie at the top-k boundary; the SET of queries may differ")
        flat_o = flatten_outputs(out_o)
        sd = official.state_dict()
        n_params = sum(p.numel() for p in official.parameters())
        print(f"  official: {len(sd)} state-dict keys, {n_params} unique params; outputs:")
        for k, t in flat_o.items():
            if k.startswith(("pred", "enc")) or k == "aux0.pred_logits":
                print(f"    {k:22s} {str(tuple(t.shape)):14s} finite={bool(torch.isfinite(t).all())} "
                      f"min={t.min().item():.3f} max={t.max().item():.3f} std={t.std().item():.3f}")
        print(f"    ({len(out_o.get('aux_outputs', []))} aux_outputs)")

        ckpt_path = os.path.join(opt.outdir, f"{v}.pth")
        torch.save({"model": sd} if opt.no_args else {"model": sd, "args": args}, ckpt_path)
        with open(os.path.join(opt.outdir, f"official_keys_{v}.txt"), "w") as f:
            for k, t in sd.items():
                f.write(f"{k}\t{tuple(t.shape)}\t{str(t.dtype).replace('torch.', '')}\n")
        print(f"  saved {ckpt_path} and official_keys_{v}.txt")

        if opt.official_only or load_checkpoint is None:
            rows.append((v, "n/a", {}, "OFFICIAL-ONLY"))
            if not opt.official_only:
                failed = True
            continue

        # ---------------- ours ----------------
        strict = "?"
        try:
            loaded = load_checkpoint(ckpt_path)
            ours = loaded
            if isinstance(loaded, (tuple, list)):
                ours = next(x for x in loaded if isinstance(x, torch.nn.Module))
            elif isinstance(loaded, dict) and "model" in loaded:
                ours = loaded["model"]
            ours.eval()
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            rows.append((v, f"load FAILED ({type(e).__name__})", {}, "FAIL"))
            failed = True
            continue
        # independent strict check of names/shapes/values
        osd = ours.state_dict()
        missing = [k for k in sd if k not in osd]
        unexpected = [k for k in osd if k not in sd]
        badshape = [k for k in sd if k in osd and osd[k].shape != sd[k].shape]
        valdiff = max([(osd[k].double() - sd[k].double()).abs().max().item()
                       for k in sd if k in osd and osd[k].shape == sd[k].shape
                       and sd[k].is_floating_point() and sd[k].numel()] or [0.0])
        strict = "ok" if not (missing or unexpected or badshape) else \
            f"keys: -{len(missing)} +{len(unexpected)} shape{len(badshape)}"
        if missing or unexpected or badshape:
            print(f"  key mismatch: missing {missing[:5]} unexpected {unexpected[:5]} shape {badshape[:5]}")
        if valdiff > 0:
            print(f"  WARNING: loaded weights differ from checkpoint by {valdiff:.3e}")
            strict += f" (weights differ {valdiff:.1e})"

        def run_ours():
            return ours(images, mask)

        try:
            with torch.no_grad():
                out_u = run_ours()
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            rows.append((v, strict, {}, f"FAIL (forward {type(e).__name__})"))
            failed = True
            continue
        flat_u = flatten_outputs(out_u)
        diffs = {}
        ok = strict == "ok"
        for k, a in flat_o.items():
            b = flat_u.get(k)
            if b is None:
                diffs[k] = "missing"
                ok = False
            elif tuple(b.shape) != tuple(a.shape):
                diffs[k] = f"shape {tuple(b.shape)}"
                ok = False
            else:
                d = (a.double() - b.detach().double()).abs().max().item()
                diffs[k] = d
                if not (d < opt.tol):
                    ok = False
        extra = [k for k in flat_u if k not in flat_o]
        if extra:
            print(f"  note: our outputs have extra entries {extra}")
        verdict = "PASS" if ok else "FAIL"
        if not ok and args.two_stage and strict == "ok":
            pd = perm_matched_diffs(flat_o, flat_u)
            if pd is not None:
                nmoved, pdiffs = pd
                print(f"  permutation-matched decoder outputs ({nmoved} queries reordered): "
                      + ", ".join(f"{k}={d:.2e}" for k, d in pdiffs.items() if k in ("pred_logits", "pred_boxes")))
                if all(d < opt.tol for d in pdiffs.values()):
                    diffs = pdiffs
                    ok = True
                    verdict = f"PASS (perm, {nmoved} reordered)"
        rows.append((v, strict, diffs, verdict))
        if not ok:
            failed = True
            first = next((k for k, d in diffs.items() if not isinstance(d, float) or not d < opt.tol), None)
            print(f"  first mismatching output: {first} ({diffs.get(first)})")
            if not opt.no_diagnose:
                diag[v] = diagnose(official, ours, lambda: official(samples), run_ours, opt.tol)
                print("\n".join(diag[v]))

    # ---------------- table ----------------
    print("\n" + "=" * 100)
    print(f"{'variant':18s} {'strict load':14s} {'logits':>10s} {'boxes':>10s} {'aux max':>10s} "
          f"{'enc max':>10s}  result")
    for v, strict, diffs, res in rows:
        def fmt(x):
            return f"{x:10.2e}" if isinstance(x, float) else f"{str(x):>10s}"

        aux = [d for k, d in diffs.items() if k.startswith("aux")]
        enc = [d for k, d in diffs.items() if k.startswith("enc")]

        def agg(ds):
            if not ds:
                return "-"
            nonf = [d for d in ds if not isinstance(d, float)]
            return nonf[0] if nonf else max(ds)

        print(f"{v:18s} {strict:14s} {fmt(diffs.get('pred_logits', '-'))} {fmt(diffs.get('pred_boxes', '-'))} "
              f"{fmt(agg(aux))} {fmt(agg(enc))}  {res}")
    if our_import_error:
        print(f"(ours not importable: {our_import_error})")
    if made_outdir:
        import shutil

        shutil.rmtree(opt.outdir, ignore_errors=True)  # ~150 MB of checkpoints per variant
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
