"""The vectorized KITTI evaluation against its plain-loop reference on random annotations: every
precision and orientation curve, for every class, metric, difficulty and overlap setting."""

from __future__ import annotations

import numpy as np
import pytest

from deformdetr.eval import evaluate_kitti, evaluate_kitti_reference

CLASSES = ("Car", "Pedestrian", "Cyclist")


def random_annotations(images: int, seed: int):
    """Ground truths of every kind (neighbour classes, DontCare, hard objects) and detections:
    jittered copies of them (some twice, some of another class) and strays; scores rounded to
    one decimal, so that many tie."""
    rng = np.random.default_rng(seed)
    names = ["Car", "Pedestrian", "Van", "DontCare", "Cyclist", "Person_sitting"]
    gts, dts = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        name = rng.choice(names, n, p=[0.45, 0.2, 0.1, 0.1, 0.1, 0.05])
        x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 100, n)
        bbox = np.c_[x1, y1, x1 + rng.uniform(10, 120, n), y1 + rng.uniform(10, 120, n)]
        dims = np.c_[rng.uniform(1, 5, n), rng.uniform(1, 2, n), rng.uniform(0.5, 2, n)]
        loc = np.c_[rng.uniform(-4, 4, n), rng.uniform(1, 2, n), rng.uniform(5, 15, n)]
        gt = dict(name=name, truncated=rng.choice([0.0, 0.2, 0.4, 0.7], n),
                  occluded=rng.integers(0, 4, n).astype(float), alpha=rng.uniform(-3, 3, n),
                  bbox=bbox, dimensions=dims, location=loc, rotation_y=rng.uniform(-3, 3, n))
        gts.append(gt)
        idx = np.r_[np.arange(n), rng.integers(0, max(n, 1), int(rng.integers(0, 4)) if n else 0)]
        k = len(idx)
        m = int(rng.integers(0, 4))
        dname = np.r_[np.where(rng.random(k) < 0.1, "Car", name[idx]) if k else np.zeros(0, "<U10"),
                      rng.choice(list(CLASSES), m)]
        dname[dname == "DontCare"] = "Car"
        jitter = lambda a, s: a + rng.normal(0, s, a.shape)  # noqa: E731
        sx1, sy1 = rng.uniform(0, 300, m), rng.uniform(0, 100, m)
        dts.append(dict(
            name=dname,
            truncated=np.zeros(k + m), occluded=np.zeros(k + m),
            alpha=np.r_[jitter(gt["alpha"][idx], 0.3), rng.uniform(-3, 3, m)],
            bbox=np.r_[jitter(bbox[idx], 8), np.c_[sx1, sy1, sx1 + 50, sy1 + rng.uniform(10, 80, m)]],
            dimensions=np.r_[np.abs(jitter(dims[idx], 0.2)), np.c_[np.full(m, 3.0), np.ones(m), np.ones(m)]],
            location=np.r_[jitter(loc[idx], 0.3), np.c_[rng.uniform(-4, 4, m), np.ones(m) * 1.5, rng.uniform(5, 15, m)]],
            rotation_y=np.r_[jitter(gt["rotation_y"][idx], 0.2), rng.uniform(-3, 3, m)],
            score=np.round(rng.uniform(0, 1, k + m), 1),
        ))
    return gts, dts


def assert_same_result(ours, reference):
    assert ours.classes == reference.classes
    for setting, curves in reference.precision.items():
        assert curves.keys() == ours.precision[setting].keys(), setting
        for metric, want in curves.items():
            np.testing.assert_allclose(ours.precision[setting][metric], want, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{setting} {metric}")
    assert ours.summary == reference.summary


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_vectorized_evaluation_equals_the_plain_loops(seed):
    gts, dts = random_annotations(30, seed)
    reference = evaluate_kitti_reference(gts, dts, classes=CLASSES)
    assert_same_result(evaluate_kitti(gts, dts, classes=CLASSES), reference)
    curves = np.stack([reference.precision[s][m] for s in ("strict", "loose") for m in ("bbox", "bev", "3d", "aos")])
    assert (curves > 0).any(axis=-1).sum() > 20  # the cases are not all empty


def test_both_agree_on_images_without_objects_and_on_r11():
    gts, dts = random_annotations(12, seed=3)
    gts[0] = {k: v[:0] for k, v in gts[0].items()}
    dts[1] = {k: v[:0] for k, v in dts[1].items()}
    for positions in (11, 40):
        assert_same_result(evaluate_kitti(gts, dts, recall_positions=positions),
                           evaluate_kitti_reference(gts, dts, recall_positions=positions))
    assert_same_result(evaluate_kitti([], []), evaluate_kitti_reference([], []))
