"""Times deformdetr's KITTI evaluation on synthetic KITTI-sized data and, when given a copy of the
devkit's python evaluation (kitti_object_eval_python / MonoDETR's kitti_eval_python, which needs
numba, and numba.cuda for its rotated IoU unless patched for the CPU), times it on the same data
and reports the largest AP difference:

    python bench/compare_kitti_eval.py [--images 3769 --gt 10 --dt 50]
    python bench/compare_kitti_eval.py --official /path/to/kitti_eval_python
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from deformdetr.eval import evaluate_kitti

NAMES = ["Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "Truck", "DontCare", "Misc"]
SHARE = [0.45, 0.15, 0.08, 0.08, 0.03, 0.04, 0.12, 0.05]


def _objects(rng, n):
    name = rng.choice(NAMES, size=n, p=SHARE)
    x1, y1 = rng.uniform(0, 1100, n), rng.uniform(100, 300, n)
    bbox = np.c_[x1, y1, x1 + rng.uniform(10, 200, n), y1 + rng.uniform(10, 150, n)]
    dims = np.c_[rng.uniform(0.5, 5, n), rng.uniform(1, 2, n), rng.uniform(0.5, 2.2, n)]
    loc = np.c_[rng.uniform(-15, 15, n), rng.uniform(1, 2.5, n), rng.uniform(5, 60, n)]
    ry = rng.uniform(-np.pi, np.pi, n)
    alpha = ry - np.arctan2(loc[:, 0], loc[:, 2])
    trunc = rng.choice([0.0, 0.1, 0.2, 0.4, 0.8], n)
    occ = rng.integers(0, 4, n).astype(float)
    dc = name == "DontCare"
    dims[dc], loc[dc], ry[dc], alpha[dc], trunc[dc], occ[dc] = -1, -1000, -10, -10, -1, -1
    return dict(name=name, truncated=trunc, occluded=occ, alpha=alpha, bbox=bbox,
                dimensions=dims, location=loc, rotation_y=ry)


def synthetic(images: int, gt_per_image: int, dt_per_image: int, seed: int = 0):
    """Ground truths and detections: jittered copies of most objects (some twice, as duplicate
    detections), the rest strays, scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for _ in range(images):
        gt = _objects(rng, int(rng.integers(0, 2 * gt_per_image + 1)))
        gts.append(gt)
        idx = np.flatnonzero((gt["name"] != "DontCare") & (rng.random(len(gt["name"])) < 0.8))
        idx = np.r_[idx, idx[rng.random(len(idx)) < 0.3]]
        k = len(idx)
        m = max(0, int(rng.integers(0, 2 * dt_per_image + 1)) - k)
        stray = _objects(rng, m)
        stray["dimensions"] = np.abs(stray["dimensions"]) + 0.5
        stray["location"][:, 1] = np.abs(stray["location"][:, 1]) % 2.5
        stray["location"][:, 2] = np.abs(stray["location"][:, 2]) % 60
        dts.append(dict(
            name=np.r_[gt["name"][idx], rng.choice(["Car", "Pedestrian", "Cyclist"], m, p=[0.6, 0.25, 0.15])],
            truncated=np.zeros(k + m), occluded=np.zeros(k + m),
            alpha=np.r_[gt["alpha"][idx] + rng.normal(0, 0.3, k), rng.uniform(-np.pi, np.pi, m)],
            bbox=np.r_[gt["bbox"][idx] + rng.normal(0, 6, (k, 4)), stray["bbox"]],
            dimensions=np.r_[gt["dimensions"][idx] * rng.uniform(0.85, 1.15, (k, 3)), stray["dimensions"]],
            location=np.r_[gt["location"][idx] + rng.normal(0, 0.3, (k, 3)) * [1, 0.3, 1.5], stray["location"]],
            rotation_y=np.r_[gt["rotation_y"][idx] + rng.normal(0, 0.2, k), rng.uniform(-np.pi, np.pi, m)],
            score=np.r_[rng.beta(5, 2, k), rng.beta(2, 5, m)],
        ))
    return gts, dts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3769, help="images (KITTI val: 3769)")
    parser.add_argument("--gt", type=int, default=10, help="mean ground-truth objects per image")
    parser.add_argument("--dt", type=int, default=50, help="mean detections per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official", type=Path, default=None,
                        help="folder of the devkit's python evaluation (a package with eval.py)")
    args = parser.parse_args(argv)

    gts, dts = synthetic(args.images, args.gt, args.dt)
    n_gt = sum(len(g["name"]) for g in gts)
    n_dt = sum(len(d["name"]) for d in dts)
    print(f"{args.images} images, {n_gt / args.images:.1f} ground truths and {n_dt / args.images:.1f} "
          f"detections per image; Car/Pedestrian/Cyclist x bbox/bev/3d (+aos) x both overlap settings")
    evaluate_kitti(gts[:20], dts[:20])  # imports and first-call costs
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = evaluate_kitti(gts, dts)
        times.append(time.perf_counter() - start)
    print(f"deformdetr evaluate_kitti: best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s")
    print(result.summary.splitlines()[0])
    print("\n".join(result.summary.splitlines()[1:5]))

    if args.official is None:
        print("(pass --official /path/to/kitti_eval_python to time and compare the devkit's version)")
        return
    folder = args.official.resolve()
    sys.path.insert(0, str(folder.parent))
    try:
        official = importlib.import_module(f"{folder.name}.eval")
    except Exception as error:  # numba missing, no CUDA for its rotated IoU, ...
        print(f"could not import the official evaluation from {folder}: {error}")
        return
    official.get_official_eval_result(gts[:20], dts[:20], [0, 1, 2])  # numba compilation
    start = time.perf_counter()
    _, reference, _ = official.get_official_eval_result(gts, dts, [0, 1, 2])
    elapsed = time.perf_counter() - start
    ours = result.to_flat_dict()
    worst = max((abs(float(v) - ours[k]), k) for k, v in reference.items())
    print(f"official get_official_eval_result: {elapsed:.2f} s ({elapsed / min(times):.1f}x deformdetr's time)")
    print(f"largest |AP difference| over {len(reference)} values: {worst[0]:.3g} ({worst[1]})")


if __name__ == "__main__":
    main()
