"""The synthetic KITTI data set: layout, determinism, labels consistent with the camera and the
pixels, and one MonoDETR training step on it."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.data import KittiMono3D, generate_synthetic_kitti, mono_collate_fn, read_calib, read_labels
from deformdetr.data.synthetic_kitti import synthetic_P2
from deformdetr.models import build_monodetr_criterion, monodetr
from deformdetr.models.mono.decode import decode

SIZES = {"Car": (1.5, 1.6, 3.9), "Pedestrian": (1.7, 0.6, 0.8), "Cyclist": (1.7, 0.6, 1.8)}


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    return generate_synthetic_kitti(root, num_train=12, num_val=4, seed=0)


def test_layout_and_determinism(tmp_path, synthetic):
    root = synthetic.root
    for sub in ("image_2", "label_2", "calib"):
        assert len(list((Path(root) / "training" / sub).iterdir())) == 16
    lines = lambda split: open(f"{root}/ImageSets/{split}.txt").read().split()  # noqa: E731
    assert lines("train") == [f"{i:06d}" for i in range(12)] and lines("val") == [f"{i:06d}" for i in range(12, 16)]
    assert lines("trainval") == lines("train") + lines("val")
    generate_synthetic_kitti(tmp_path / "a", num_train=3, num_val=1, seed=0)
    generate_synthetic_kitti(tmp_path / "b", num_train=3, num_val=1, seed=0)
    generate_synthetic_kitti(tmp_path / "c", num_train=3, num_val=1, seed=1)
    a, b, c = (all_files(tmp_path / n) for n in "abc")
    assert a == b and a != c
    # image i does not depend on the data set's size
    full = all_files(Path(root))
    for name, data in a.items():
        if "ImageSets" not in str(name):
            assert full[name] == data, name
    with Image.open(f"{root}/training/image_2/000000.png") as image:
        assert image.size == (320, 96) and image.mode == "RGB"


def test_labels_consistent_with_camera_and_pixels(synthetic):
    root = synthetic.root
    height, width = synthetic.image_size
    counts = []
    for index in range(16):
        calib = read_calib(f"{root}/training/calib/{index:06d}.txt")
        assert np.allclose(calib.P2, synthetic_P2(height, width))
        objects = read_labels(f"{root}/training/label_2/{index:06d}.txt")
        counts.append(len(objects))
        with Image.open(f"{root}/training/image_2/{index:06d}.png") as image:
            pixels = np.asarray(image).astype(int)
        for obj in objects:
            (box,), _ = calib.corners_to_img_boxes(obj.corners3d()[None])
            clipped = [max(box[0], 0), max(box[1], 0), min(box[2], width - 1), min(box[3], height - 1)]
            assert np.allclose(obj.box2d, clipped, atol=1.0), (index, obj)
            loc = obj.location.astype(float)
            alpha = math.remainder(obj.ry - math.atan2(loc[0], loc[2]), 2 * math.pi)
            assert abs(math.remainder(obj.alpha - alpha, 2 * math.pi)) < 0.011
            assert 5 <= loc[2] <= 40 and abs(loc[1] - 1.65) < 0.3 and obj.occlusion == 0
            assert 0 <= obj.truncation <= 1 and -math.pi <= obj.ry <= math.pi
            assert np.allclose([obj.h, obj.w, obj.l], SIZES[obj.type], rtol=0.35)
            centre = calib.rect_to_img(obj.center_3d)[0][0]
            assert 0 <= centre[0] < width and 0 <= centre[1] < height
        # the nearest object is painted at its projected centre in its class colour
        if objects:
            near = min(objects, key=lambda o: o.location[2])
            u, v = calib.rect_to_img(near.center_3d)[0][0].astype(int)
            r, g, b = pixels[v, u]
            assert {"Car": r > 2 * max(g, b), "Pedestrian": g > 2 * max(r, b),
                    "Cyclist": min(r, g) > 2 * b}[near.type], (index, near.type, (r, g, b))
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1


def test_road_headings_lie_along_the_road_and_change_nothing_else(tmp_path):
    """headings="road": every ry within 20 degrees of +-90, both directions; each image's first
    object is the uniform set's (same seed) but for its heading. (A road heading takes two random
    draws, the uniform one one, so what is drawn after it differs.)"""
    from deformdetr.data.synthetic_kitti import ROAD_HEADING_SPREAD

    generate_synthetic_kitti(tmp_path / "uniform", num_train=20, num_val=0, seed=4)
    generate_synthetic_kitti(tmp_path / "road", num_train=20, num_val=0, seed=4, headings="road")
    rays = []
    for index in range(20):
        uniform, road = (read_labels(tmp_path / kind / "training" / "label_2" / f"{index:06d}.txt")
                         for kind in ("uniform", "road"))
        assert (road[0].type, road[0].h, road[0].w, road[0].l) == (uniform[0].type, uniform[0].h, uniform[0].w,
                                                                   uniform[0].l)
        assert list(road[0].location) == list(uniform[0].location) and road[0].ry != uniform[0].ry
        rays += [obj.ry for obj in road]
    off_axis = [abs(abs(ry) - math.pi / 2) for ry in rays]
    assert max(off_axis) <= ROAD_HEADING_SPREAD + 0.005  # labels hold 2 decimals
    assert min(rays) < 0 < max(rays)
    with pytest.raises(ValueError, match="headings must be one of uniform, road"):
        generate_synthetic_kitti(tmp_path / "bad", num_train=1, num_val=0, headings="random")


def test_fast(tmp_path):
    start = time.perf_counter()
    generate_synthetic_kitti(tmp_path, num_train=60, num_val=0, seed=2)
    assert time.perf_counter() - start < 5.0


def test_dataset_keeps_most_objects(synthetic):
    ds = KittiMono3D(synthetic.root, "val", **synthetic.dataset_kwargs)
    kept = sum(len(ds[i][2]["labels"]) for i in range(len(ds)))
    written = sum(len(read_labels(f"{synthetic.root}/training/label_2/{i:06d}.txt")) for i in range(12, 16))
    assert kept >= 0.7 * written


def test_monodetr_step_on_a_synthetic_batch(synthetic):
    tiny = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=32,
                depth_encoder_nheads=4, depth_encoder_dim_feedforward=32, num_queries=6, group_num=2)
    ds = KittiMono3D(synthetic.root, "train", **synthetic.dataset_kwargs)
    np.random.seed(0)
    images, calibs, img_sizes, targets, infos = mono_collate_fn([ds[0], ds[1]])
    assert images.shape == (2, 3, 96, 320) and calibs.shape == (2, 3, 4) and img_sizes.shape == (2, 2)
    model = monodetr(num_classes=3, **tiny)
    criterion = build_monodetr_criterion(num_classes=3, dec_layers=tiny["dec_layers"], group_num=tiny["group_num"])
    losses = criterion(model(images, calibs, img_sizes), targets)
    total = criterion.total(losses)
    assert torch.isfinite(total) and total > 0
    total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images, calibs, img_sizes)
    results = decode(outputs, calibs, img_sizes, threshold=0.0, img_ids=[i["img_id"] for i in infos])
    assert set(results) == {infos[0]["img_id"], infos[1]["img_id"]}
    assert all(len(row) == 14 for rows in results.values() for row in rows)
