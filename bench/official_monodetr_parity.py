#!/usr/bin/env python
"""Parity with the official MonoDETR: build the official model (ZrrSkywalker/MonoDETR, run on the
CPU with its pure-PyTorch deformable attention) with random weights, save it as an official
checkpoint ({'model_state': ...}), load that with deformdetr.models.load_monodetr_checkpoint
(strict) and compare every output, the matching, the losses and (optionally) the gradients.

The official code is not part of this project: check it out and point --official at it, in an
environment with torchvision (see bench/official_parity.py for the set-up):

  python bench/official_monodetr_parity.py --official /tmp/parity/mono/official [--double]
"""
import argparse
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
import yaml

# The same perturbation of random weights as the Deformable DETR harness beside this file.
from official_parity import perturb_  # noqa: E402

HERE = None  # a temporary folder for the checkpoint, made in main()
OFFICIAL = os.environ.get("DEFORMDETR_OFFICIAL_MONODETR", "")


def import_official():
    sys.path.insert(0, OFFICIAL)
    fake = types.ModuleType("MultiScaleDeformableAttention")

    def _no_ext(*a, **k):
        raise RuntimeError("CUDA extension faked")

    fake.ms_deform_attn_forward = fake.ms_deform_attn_backward = _no_ext
    sys.modules["MultiScaleDeformableAttention"] = fake
    import torchvision

    real_resnet = {n: getattr(torchvision.models, n) for n in ("resnet50", "resnet101")}
    for n, fn in real_resnet.items():
        setattr(torchvision.models, n, lambda *a, _fn=fn, pretrained=False, **k: _fn(*a, **k))
    real_version = torch.__version__
    torch.__version__ = "1.9.0"  # the official version checks mis-parse "2.x" (operator precedence)
    try:
        import lib.models.monodetr.ops.modules  # noqa: F401
    finally:
        torch.__version__ = real_version
    import lib.models.monodetr.ops.functions.ms_deform_attn_func as msf

    core = msf.ms_deform_attn_core_pytorch
    msf.MSDeformAttnFunction.apply = staticmethod(
        lambda value, shapes, lsi, loc, attn, step: core(value, shapes, loc, attn))
    import lib.models.monodetr.backbone as ob
    ob.is_main_process = lambda: False
    torch.cuda.current_device = lambda: 0  # DDNLoss.__init__ asks for it
    import lib.models.monodetr.monodetr as om

    class TorchCPU:  # the official criterion puts tensors on 'cuda'
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def tensor(*a, **k):
            k.pop("device", None)
            return torch.tensor(*a, **k)

        @staticmethod
        def zeros(*a, **k):
            return torch.zeros(*a, **k)

    om.torch = TorchCPU()
    torch.Tensor.cuda = lambda self, *a, **k: self
    from lib.models.monodetr import build_monodetr
    return build_monodetr, om


def no_dropout_(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0


P2S = torch.tensor([
    [[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]],
    [[707.0493, 0.0, 604.0814, 45.75831], [0.0, 707.0493, 180.5066, -0.3454157], [0.0, 0.0, 1.0, 0.004981016]],
])
IMG_SIZES = torch.tensor([[1242, 375], [1224, 370]])


def flatten(out):
    keys = ("pred_logits", "pred_boxes", "pred_3d_dim", "pred_depth", "pred_angle", "pred_depth_map_logits")
    flat = {k: out[k] for k in keys if k in out}
    for i, aux in enumerate(out.get("aux_outputs", [])):
        for k in keys:
            if k in aux:
                flat[f"aux{i}.{k}"] = aux[k]
    return flat


def compare(flat_o, flat_u, tol, title):
    print(f"  {title}:")
    ok = True
    for k, a in flat_o.items():
        b = flat_u.get(k)
        if b is None or tuple(b.shape) != tuple(a.shape):
            print(f"    {k:34s} MISSING/SHAPE {None if b is None else tuple(b.shape)} vs {tuple(a.shape)}")
            ok = False
            continue
        d = (a.double() - b.detach().double()).abs().max().item()
        rel = d / max(a.abs().max().item(), 1e-12)
        ok &= d < tol
        print(f"    {k:34s} {str(tuple(a.shape)):16s} max|diff|={d:.3e} (max|x|={a.abs().max().item():.3g}, rel {rel:.1e})")
    extra = [k for k in flat_u if k not in flat_o]
    if extra:
        print(f"    extra outputs in ours: {extra}")
    return ok


def make_targets(gen, n_per_image=(3, 2)):
    targets = []
    for n in n_per_image:
        c3d = 0.15 + 0.7 * torch.rand(n, 2, generator=gen)
        lrtb = 0.02 + 0.12 * torch.rand(n, 4, generator=gen)
        x0, y0 = c3d[:, 0] - lrtb[:, 0], c3d[:, 1] - lrtb[:, 2]
        x1, y1 = c3d[:, 0] + lrtb[:, 1], c3d[:, 1] + lrtb[:, 3]
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
        angle = (torch.rand(n, generator=gen) * 2 - 1) * np.pi
        per = 2 * np.pi / 12
        shifted = (angle % (2 * np.pi) + per / 2) % (2 * np.pi)
        hbin = (shifted / per).long()
        hres = shifted - (hbin * per + per / 2)
        targets.append({
            "labels": torch.randint(0, 3, (n,), generator=gen),
            "boxes": boxes,
            "boxes_3d": torch.cat([c3d, lrtb], 1),
            "depth": 5 + 40 * torch.rand(n, 1, generator=gen),
            "size_3d": torch.tensor([1.5, 1.6, 3.9]) + 0.3 * torch.rand(n, 3, generator=gen),
            "heading_bin": hbin[:, None],
            "heading_res": hres[:, None].float(),
        })
    return targets


def loss_dict_diff(lo, lu, tol):
    ok = True
    keys = sorted(set(lo) | set(lu))
    worst = 0.0
    for k in keys:
        if k not in lo or k not in lu:
            print(f"    {k}: only in {'official' if k in lo else 'ours'}")
            ok = False
            continue
        a, b = torch.as_tensor(lo[k]).double(), torch.as_tensor(lu[k]).double()
        d = (a - b).abs().max().item()
        worst = max(worst, d / max(a.abs().item(), 1.0))
        if not k[-1].isdigit() or k.endswith("_0"):
            print(f"    {k:22s} official={a.item():.6f} ours={b.item():.6f} |diff|={d:.2e}")
        ok &= d <= tol * max(1.0, a.abs().item())
    print(f"    ({len(keys)} loss entries; worst relative diff {worst:.2e})")
    return ok


def main():
    global HERE, OFFICIAL
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", default=OFFICIAL, help="a checkout of ZrrSkywalker/MonoDETR")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="192x640")
    ap.add_argument("--no-grad-check", action="store_true")
    ap.add_argument("--double", action="store_true", help="run both models in float64 (no rounding noise)")
    ap.add_argument("--reference-attn", action="store_true",
                    help="ours runs deformable attention with its pure-PyTorch reference (not the native kernel)")
    opt = ap.parse_args()
    OFFICIAL = os.path.abspath(opt.official) if opt.official else ""
    if not os.path.isfile(os.path.join(OFFICIAL, "configs", "monodetr.yaml")):
        ap.error("--official must point at a checkout of ZrrSkywalker/MonoDETR")
    import tempfile

    HERE = tempfile.mkdtemp(prefix="deformdetr-mono-parity-")
    torch.set_num_threads(1)
    if opt.reference_attn:
        from deformdetr.ops import use_reference
        use_reference(True).__enter__()
    H, W = map(int, opt.size.split("x"))
    build_official, om = import_official()
    cfg = yaml.safe_load(open(os.path.join(OFFICIAL, "configs", "monodetr.yaml")))["model"]
    cfg["device"] = "cpu"
    torch.manual_seed(opt.seed)
    official, official_criterion = build_official(cfg)
    perturb_(official, torch.Generator().manual_seed(opt.seed + 1))
    sd = official.state_dict()
    ckpt = os.path.join(HERE, "monodetr_official.pth")
    torch.save({"epoch": 0, "model_state": sd, "optimizer_state": None, "best_result": 0.0, "best_epoch": 0}, ckpt)
    with open(os.path.join(HERE, "official_keys.txt"), "w") as f:
        for k, t in sd.items():
            f.write(f"{k}\t{tuple(t.shape)}\n")
    print(f"official: {len(sd)} state-dict keys, {sum(p.numel() for p in official.parameters())} params; saved {ckpt}")

    from deformdetr.models import build_monodetr_criterion, load_monodetr_checkpoint
    ours = load_monodetr_checkpoint(ckpt)
    osd = ours.state_dict()
    missing = [k for k in sd if k not in osd]
    unexpected = [k for k in osd if k not in sd]
    wdiff = max((osd[k].double() - sd[k].double()).abs().max().item() for k in sd if k in osd)
    print(f"ours: strict load ok; key diff -{len(missing)} +{len(unexpected)}; weights max diff {wdiff:.1e}")

    gen = torch.Generator().manual_seed(opt.seed + 2)
    images = torch.randn(2, 3, H, W, generator=gen)
    global P2S
    if opt.double:
        official.double(); ours.double(); images = images.double(); P2S = P2S.double()
    all_ok = True

    # ---- eval mode (first query group) ----
    official.eval(); ours.eval()
    with torch.no_grad():
        out_o = official(images, P2S, None, IMG_SIZES)
        out_u = ours(images, P2S, IMG_SIZES)
    all_ok &= compare(flatten(out_o), flatten(out_u), opt.tol, f"eval outputs ({H}x{W}, batch 2)")

    # ---- training mode (all 11 query groups, group-wise self-attention), dropout off ----
    no_dropout_(official); no_dropout_(ours)
    official.train(); ours.train()
    out_o = official(images, P2S, None, IMG_SIZES)
    out_u = ours(images, P2S, IMG_SIZES)
    all_ok &= compare(flatten(out_o), flatten(out_u), opt.tol, "train-mode outputs (dropout off)")

    # ---- losses on the same outputs and targets ----
    targets = make_targets(torch.Generator().manual_seed(opt.seed + 3))
    if opt.double:
        targets = [{k: (v.double() if v.is_floating_point() else v) for k, v in t.items()} for t in targets]
    # The official depth-map loss fixes the map at 80x24 (1280x384 inputs): compare on such a map.
    dm = F.interpolate(out_o["pred_depth_map_logits"].detach(), size=(24, 80), mode="bilinear").requires_grad_()
    criterion = build_monodetr_criterion()
    for mode in ("train", "eval"):
        official_criterion.train(mode == "train"); criterion.train(mode == "train")
        for name, out in (("official", out_o), ("ours", out_u)):
            pass
        oo = dict(out_o, pred_depth_map_logits=dm)
        uu = dict(out_u, pred_depth_map_logits=dm)
        if mode == "eval":  # eval matching: first group only
            def first(o):
                r = {k: (v[:, :50] if k != "pred_depth_map_logits" and torch.is_tensor(v) else v) for k, v in o.items() if k != "aux_outputs"}
                r["aux_outputs"] = [{k: v[:, :50] for k, v in a.items()} for a in o["aux_outputs"]]
                return r
            oo, uu = first(oo), first(uu)
        tgt_o = [{k: v.clone() for k, v in t.items()} for t in targets]
        ind_o = official_criterion.matcher({k: v for k, v in oo.items() if k != "aux_outputs"}, tgt_o,
                                           group_num=11 if mode == "train" else 1)
        ind_u = criterion.matcher({k: v for k, v in uu.items() if k != "aux_outputs"}, targets,
                                  group_num=11 if mode == "train" else 1)
        same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ind_o, ind_u))
        print(f"  matcher ({mode}, group_num={11 if mode == 'train' else 1}): indices identical: {same}")
        all_ok &= same
        lo = official_criterion(oo, tgt_o)
        lu = criterion(uu, targets)
        print(f"  losses ({mode} criterion):")
        all_ok &= loss_dict_diff({k: v.detach() for k, v in lo.items()}, {k: v.detach() for k, v in lu.items()}, opt.tol)
        if mode == "train" and not opt.no_grad_check:
            wd = official_criterion.weight_dict
            total_o = sum(lo[k] * wd[k] for k in lo if k in wd)
            total_u = criterion.total(lu)
            official.zero_grad(); ours.zero_grad()
            total_o.backward(retain_graph=False)
            total_u.backward()
            gu = dict(ours.named_parameters())
            nograd, rows = [], []
            for n, p in official.named_parameters():
                q = gu[n]
                if (p.grad is None) != (q.grad is None):
                    nograd.append(n)
                    continue
                if p.grad is not None:
                    rows.append((n, (p.grad - q.grad).abs().max().item(), p.grad.abs().max().item()))
            gmax = max(r[2] for r in rows)
            # relative to the parameter's own largest gradient, with a floor of 1e-6 x the largest
            # gradient of the model (parameters whose true gradient is ~0 carry rounding noise only)
            rel = [(d / max(g, 1e-6 * gmax), n, d, g) for n, d, g in rows]
            worst = max(rel)
            no_grad_params = [n for n, p in official.named_parameters() if p.requires_grad and p.grad is None]
            print(f"  gradients of the weighted total loss ({len(rows)} parameters): worst relative diff "
                  f"{worst[0]:.2e} ({worst[1]}: |diff| {worst[2]:.1e}, max|grad| {worst[3]:.1e}; model max|grad| {gmax:.1e}); "
                  f"grad presence mismatches: {nograd[:5]}")
            print(f"  trainable parameters without gradient (both models): {no_grad_params}")
            all_ok &= worst[0] < (1e-6 if opt.double else 2e-2) and not nograd  # float32: summation-order noise
    print("\nPARITY:", "PASS" if all_ok else "FAIL")
    import shutil

    shutil.rmtree(HERE, ignore_errors=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
