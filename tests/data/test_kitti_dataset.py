"""The MonoDETR KITTI data set: the official target encoding, filtering, flip and crop/scale
augmentations, errors for bad images, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.data import (
    Calibration,
    ImageLoadError,
    KittiMono3D,
    KittiObject,
    mono_collate_fn,
    write_calib,
    write_labels,
)
from deformdetr.data.kitti_dataset import KITTI_MEAN, KITTI_STD
from deformdetr.data.kitti_transforms import _hsv_to_rgb, _rgb_to_hsv, flip_objects, photometric_distort

W, H = 310, 94  # the original image
RES = (320, 96)  # the network input (W, H)
S = RES[0] / W  # the official affine scales by the widths
P2 = np.array([[200.0, 0.0, 150.0, 10.0], [0.0, 200.0, 45.0, 0.1], [0.0, 0.0, 1.0, 0.003]], dtype=np.float32)
CALIB = Calibration(P2)
ALL = ("Car", "Pedestrian", "Cyclist")


def projected_box(obj):
    (box,), _ = CALIB.corners_to_img_boxes(obj.corners3d()[None])
    return np.array([max(box[0], 0), max(box[1], 0), min(box[2], W - 1), min(box[3], H - 1)])


def make_obj(cls, loc, hwl, ry, truncation=0.0, occlusion=0, box=None):
    obj = KittiObject(cls, truncation, occlusion, 0.0, np.zeros(4), *hwl, loc, ry)
    obj.box2d = projected_box(obj) if box is None else np.asarray(box)
    obj.alpha = CALIB.ry2alpha(ry, float(obj.box2d[0] + obj.box2d[2]) / 2)
    return obj


CAR = make_obj("Car", [1.0, 1.5, 10.0], (1.5, 1.6, 3.9), 0.3)
PED = make_obj("Pedestrian", [-2.0, 1.6, 8.0], (1.7, 0.6, 0.8), -1.2)
DROPPED = [
    KittiObject.from_line("DontCare -1 -1 -10 20.00 30.00 60.00 70.00 -1 -1 -1 -1000 -1000 -1000 -10"),
    make_obj("Van", [1.0, 1.5, 12.0], (2.0, 1.8, 4.5), 0.0),  # not in the writelist
    make_obj("Car", [1.0, 1.5, 70.0], (1.5, 1.6, 3.9), 0.0, box=[150, 30, 180, 60]),  # beyond 65 m
    make_obj("Car", [0.0, 1.5, 1.5], (1.5, 1.6, 3.9), 0.0, box=[100, 10, 200, 90]),  # nearer than 2 m
    make_obj("Car", [3.0, 1.5, 12.0], (1.5, 1.6, 3.9), 1.0, truncation=0.8),  # too truncated
    make_obj("Car", [-3.0, 1.5, 12.0], (1.5, 1.6, 3.9), 1.0, occlusion=3),  # occlusion unknown
    make_obj("Car", [0.0, 1.5, 12.0], (1.5, 1.6, 3.9), 1.0, box=[140, 40, 170, 60]),  # under 25 px
    make_obj("Car", [20.0, 1.5, 10.0], (1.5, 1.6, 3.9), 1.0, box=[200, 30, 309, 70]),  # centre outside
    make_obj("Car", [0.0, 1.5, 9.0], (1.5, 1.6, 3.9), 1.0, box=[10, 30, 60, 70]),  # box misses centre
]


def make_kitti(root, objects=(CAR, PED, *DROPPED), ids=(0, 1), image=None):
    for sub in ("image_2", "label_2", "calib"):
        (root / "training" / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if image is None else image
        Image.fromarray(pixels).save(root / "training" / "image_2" / f"{i:06d}.png")
        write_labels(root / "training" / "label_2" / f"{i:06d}.txt", objects, precision=6)
        write_calib(root / "training" / "calib" / f"{i:06d}.txt", P2)
    for split in ("train", "val"):
        (root / "ImageSets" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
    return root


def affine(u, v):
    """The official eval transform for this image size: uniform scale by widths about the centre."""
    return S * (u - W / 2) + RES[0] / 2, S * (v - H / 2) + RES[1] / 2


def expected_targets(obj, flip=False):
    center, _ = CALIB.rect_to_img(obj.center_3d)
    u, v = center[0]
    box = obj.box2d.astype(np.float64)
    alpha = CALIB.ry2alpha(obj.ry, (box[0] + box[2]) / 2)
    if flip:
        u = W - u
        box = np.array([W - box[2], box[1], W - box[0], box[3]])
        alpha = CALIB.ry2alpha(math.atan2(math.sin(math.pi - obj.ry), math.cos(math.pi - obj.ry)),
                               (box[0] + box[2]) / 2)
    cu, cv = affine(u, v)
    x1, y1 = affine(box[0], box[1])
    x2, y2 = affine(box[2], box[3])
    boxes = [(x1 + x2) / 2 / RES[0], (y1 + y2) / 2 / RES[1], (x2 - x1) / RES[0], (y2 - y1) / RES[1]]
    boxes_3d = [cu / RES[0], cv / RES[1], (cu - x1) / RES[0], (x2 - cu) / RES[0], (cv - y1) / RES[1],
                (y2 - cv) / RES[1]]
    angle = alpha % (2 * math.pi)
    heading_bin = int(((angle + math.pi / 12) % (2 * math.pi)) // (math.pi / 6))
    heading_res = (angle + math.pi / 12) % (2 * math.pi) - (heading_bin * math.pi / 6 + math.pi / 12)
    return boxes, boxes_3d, heading_bin, heading_res


def dataset(root, split="val", **kwargs):
    return KittiMono3D(root, split, resolution=RES, **{"writelist": ALL, **kwargs})


def test_targets_of_a_hand_made_label(tmp_path):
    ds = dataset(make_kitti(tmp_path))
    image, calib, target, info = ds[0]
    assert image.shape == (3, 96, 320) and image.dtype == torch.float32
    assert torch.equal(calib, torch.from_numpy(P2)) and torch.equal(target["calib"], calib)
    assert target["labels"].tolist() == [1, 0]  # Car, Pedestrian: the official ids; the rest dropped
    assert target["labels"].dtype == torch.int64 and target["heading_bin"].dtype == torch.int64
    for row, obj in enumerate((CAR, PED)):
        boxes, boxes_3d, heading_bin, heading_res = expected_targets(obj)
        assert target["boxes"][row].tolist() == pytest.approx(boxes, abs=1e-5)
        assert target["boxes_3d"][row].tolist() == pytest.approx(boxes_3d, abs=1e-5)
        assert target["depth"][row].item() == pytest.approx(obj.location[2])
        assert target["heading_bin"][row].item() == heading_bin
        assert target["heading_res"][row].item() == pytest.approx(heading_res, abs=1e-5)
        assert target["size_3d"][row].tolist() == pytest.approx([obj.h, obj.w, obj.l])  # meanshape False
    # the car, by hand: centre (1, 0.75, 10) -> pixel (171, 60.01)
    assert target["boxes_3d"][0, :2].tolist() == pytest.approx(
        [(S * (171 - 155) + 160) / 320, (S * (60.01 - 47) + 48) / 96], abs=1e-5)
    assert target["img_size"].tolist() == [W, H] and info["img_size"].tolist() == [W, H]
    assert target["image_id"] == 0 and info["img_id"] == 0 and target["index"] == 0
    assert target["calibs"].shape == (2, 3, 4)
    assert info["bbox_downsample_ratio"].tolist() == pytest.approx([W / 10, H / 3])


def test_meanshape_and_clip_2d_options(tmp_path):
    root = make_kitti(tmp_path)
    target = dataset(root, meanshape=True)[0][2]
    assert target["size_3d"][0].tolist() == pytest.approx([1.5 - 1.52563191, 1.6 - 1.62856740, 3.9 - 3.88311640],
                                                          abs=1e-6)
    assert target["src_size_3d"][0].tolist() == pytest.approx([1.5, 1.6, 3.9])
    clipped = dataset(root, clip_2d=True)[0][2]
    assert clipped["labels"].tolist() == [1, 0, 1]  # the box left of its centre, now with r clipped to 0
    assert clipped["boxes_3d"][2, 3] == 0 and clipped["boxes_3d"][2, 2] > 0
    assert dataset(root, writelist=("Car",))[0][2]["labels"].tolist() == [1]


def test_the_official_writelist_trains_cars_under_the_three_class_labels(tmp_path):
    root = make_kitti(tmp_path)
    assert KittiMono3D(root, "val", resolution=RES).writelist == ("Car",)  # the official default
    assert KittiMono3D(root, "val", resolution=RES)[0][2]["labels"].tolist() == [1]  # Car is 1, as with 3
    assert dataset(root, writelist=("Pedestrian",))[0][2]["labels"].tolist() == [0]


def test_class_merging_trains_vans_and_trucks_as_cars(tmp_path):
    van = make_obj("Van", [1.0, 1.5, 12.0], (2.0, 1.8, 4.5), 0.0)
    truck = make_obj("Truck", [-1.0, 1.5, 14.0], (3.0, 2.4, 8.0), 0.4)
    root = make_kitti(tmp_path, objects=(CAR, van, truck, PED))
    assert dataset(root, writelist=("Car",))[0][2]["labels"].tolist() == [1]
    merged = dataset(root, writelist=("Car",), class_merging=True)[0][2]
    assert merged["labels"].tolist() == [1, 1, 1]
    assert np.allclose(merged["src_size_3d"][1:], [[2.0, 1.8, 4.5], [3.0, 2.4, 8.0]])
    assert dataset(root, writelist=ALL, class_merging=True)[0][2]["labels"].tolist() == [1, 1, 1, 0]


def test_image_normalisation_and_resize(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    image[20:40, 100:140] = 255  # a white patch
    ds = dataset(make_kitti(tmp_path, image=image))
    tensor = ds[0][0]
    black = torch.from_numpy(-KITTI_MEAN / KITTI_STD)
    white = torch.from_numpy((1 - KITTI_MEAN) / KITTI_STD)
    u, v = affine(120, 30)
    assert torch.allclose(tensor[:, int(v), int(u)], white, atol=1e-4)
    u, v = affine(250, 70)
    assert torch.allclose(tensor[:, int(v), int(u)], black, atol=1e-4)


def test_flip(tmp_path):
    root = make_kitti(tmp_path)
    base = dict(aug_pd=False, aug_crop=False)
    plain = KittiMono3D(root, "train", resolution=RES, writelist=ALL, random_flip=0.0, **base)
    flipped = KittiMono3D(root, "train", resolution=RES, writelist=ALL, random_flip=1.0, **base)
    image, calib, target, info = plain[0]
    image_f, calib_f, target_f, info_f = flipped[0]
    assert not info["flip"] and info_f["flip"]
    assert torch.equal(calib_f, calib)  # officially the camera is not flipped (aug_calib off)
    # the network inputs mirror each other (the centred affine map commutes with the flip)
    assert torch.allclose(image_f, image.flip(-1), atol=0.02)
    for row, obj in enumerate((CAR, PED)):
        boxes, boxes_3d, heading_bin, heading_res = expected_targets(obj, flip=True)
        assert target_f["boxes"][row].tolist() == pytest.approx(boxes, abs=1e-5)
        assert target_f["boxes_3d"][row].tolist() == pytest.approx(boxes_3d, abs=1e-5)
        assert target_f["heading_bin"][row].item() == heading_bin
        assert target_f["heading_res"][row].item() == pytest.approx(heading_res, abs=1e-5)
    # mirrored boxes: cx -> 1 - cx, l <-> r; depth and sizes unchanged
    assert torch.allclose(target_f["boxes"][:, 0], 1 - target["boxes"][:, 0], atol=1e-5)
    assert torch.allclose(target_f["boxes_3d"][:, [0, 3, 2, 4, 5]],
                          torch.stack([1 - target["boxes_3d"][:, 0], *target["boxes_3d"][:, 2:].T], 1), atol=1e-5)
    assert torch.equal(target_f["depth"], target["depth"]) and torch.equal(target_f["size_3d"], target["size_3d"])
    # the official label flip: ry -> pi - ry, alpha -> pi - alpha (wrapped); twice gives the originals
    once = flip_objects([CAR, PED], W)
    for obj, f in zip((CAR, PED), once):
        assert f.ry == pytest.approx(math.remainder(math.pi - obj.ry, 2 * math.pi))
        assert f.alpha == pytest.approx(math.remainder(math.pi - obj.alpha, 2 * math.pi))
        assert f.box2d.tolist() == pytest.approx([W - obj.box2d[2], obj.box2d[1], W - obj.box2d[0], obj.box2d[3]])
        assert np.array_equal(f.location, obj.location)
    twice = flip_objects(once, W)
    for obj, f in zip((CAR, PED), twice):
        assert f.ry == pytest.approx(obj.ry) and f.alpha == pytest.approx(obj.alpha)
        assert np.allclose(f.box2d, obj.box2d, atol=1e-4)
    trans = info["trans"]
    again = plain.encode_targets(twice, CALIB, np.array([W, H]), trans, False, 1.0)
    for key in ("labels", "boxes", "boxes_3d", "depth", "heading_bin", "heading_res", "size_3d"):
        assert torch.allclose(again[key].double(), target[key].double(), atol=1e-5), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_scale_keeps_centre_on_transformed_calib(tmp_path, seed):
    root = make_kitti(tmp_path)
    ds = KittiMono3D(root, "train", resolution=RES, writelist=ALL, aug_pd=False, random_crop=1.0, scale=0.2, shift=0.1,
                     clip_2d=True)
    np.random.seed(seed)
    image, calib, target, info = ds[0]
    assert info["crop_scale"] != 1.0
    assert target["labels"][:2].tolist() == [1, 0]
    camera = Calibration(target["calib_input"].numpy())
    for row, obj in enumerate((CAR, PED)):
        pixel = camera.rect_to_img(obj.center_3d)[0][0]
        assert (target["boxes_3d"][row, :2].double().numpy() * RES).tolist() == pytest.approx(pixel.tolist(), abs=1e-3)
        # the standard projection (by P's third row) agrees within P2[2, 3] / z of the shift
        hom = camera.P2.astype(np.float64) @ np.append(obj.center_3d, 1.0)
        assert hom[:2] / hom[2] == pytest.approx(pixel, abs=0.2)
        assert target["depth"][row].item() == pytest.approx(obj.location[2] * info["crop_scale"], rel=1e-6)
    # the 2D boxes follow the same map as the image
    trans = info["trans"]
    x1 = trans[0, 0] * CAR.box2d[0] + trans[0, 2]
    if info["flip"]:
        x1 = trans[0, 0] * (W - CAR.box2d[2]) + trans[0, 2]
    cx, _, w, _ = target["boxes"][0].tolist()
    assert (cx - w / 2) * RES[0] == pytest.approx(x1, abs=1e-3)
    assert np.isclose(trans[0, 0], RES[0] / (W * info["crop_scale"]))


def test_photometric_distortion():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (8, 9, 3)).astype(np.float32)
    assert np.allclose(_hsv_to_rgb(_rgb_to_hsv(image)), image, atol=1e-3)
    np.random.seed(3)
    first = photometric_distort(image)
    np.random.seed(3)
    assert np.array_equal(photometric_distort(image), first)
    assert first.shape == image.shape and first.dtype == np.float32
    changed = 0
    for seed in range(5):
        np.random.seed(seed)
        changed += not np.allclose(photometric_distort(image), image)
    assert changed >= 4


def test_augmented_items_are_finite_and_deterministic(tmp_path):
    ds = KittiMono3D(make_kitti(tmp_path), "train", resolution=RES)
    np.random.seed(5)
    first = ds[1]
    np.random.seed(5)
    second = ds[1]
    assert torch.equal(first[0], second[0]) and torch.isfinite(first[0]).all()
    assert torch.equal(first[2]["boxes_3d"], second[2]["boxes_3d"])


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    root = make_kitti(tmp_path)
    ds = dataset(root)
    missing = root / "training" / "image_2" / "000000.png"
    missing.unlink()
    with pytest.raises(ImageLoadError, match="000000.png") as info:
        ds[0]
    assert info.value.path == str(missing)
    corrupt = root / "training" / "image_2" / "000001.png"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with pytest.raises(ImageLoadError, match="000001.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        KittiMono3D(root, "trainval")
    with pytest.raises(ValueError, match="split"):
        KittiMono3D(root, "training")


def test_test_split_has_empty_targets(tmp_path):
    root = make_kitti(tmp_path)
    (root / "training").rename(root / "testing")
    for sub in ("label_2",):
        for f in (root / "testing" / sub).iterdir():
            f.unlink()
    (root / "ImageSets" / "test.txt").write_text("000000\n")
    image, calib, target, info = KittiMono3D(root, "test", resolution=RES)[0]
    assert image.shape == (3, 96, 320) and len(target["labels"]) == 0
    assert target["boxes_3d"].shape == (0, 6) and target["heading_bin"].shape == (0, 1)


def test_collate(tmp_path):
    ds = dataset(make_kitti(tmp_path))
    images, calibs, img_sizes, targets, infos = mono_collate_fn([ds[0], ds[1]])
    assert images.shape == (2, 3, 96, 320)
    assert calibs.shape == (2, 3, 4) and calibs.dtype == torch.float32
    assert img_sizes.tolist() == [[W, H], [W, H]] and img_sizes.dtype == torch.int64
    assert len(targets) == 2 and [i["img_id"] for i in infos] == [0, 1]
    with pytest.raises(ValueError):
        mono_collate_fn([])


def test_split_file_with_a_line_that_is_not_an_index_names_file_and_line(tmp_path):
    root = make_kitti(tmp_path)
    (root / "ImageSets" / "val.txt").write_text("000000\n\n0000x1\n")
    with pytest.raises(ValueError, match=r"val.txt' line 3: expected an image index.*'0000x1'"):
        KittiMono3D(root, "val")


def test_malformed_label_line_in_the_data_set_names_file_and_line(tmp_path):
    root = make_kitti(tmp_path)
    label = root / "training" / "label_2" / "000001.txt"
    label.write_text(label.read_text() + "Car 0.00 0 -1.57 1 2\n")
    ds = dataset(root)
    ds[0]  # the other image is unaffected
    lines = len(label.read_text().splitlines())
    with pytest.raises(ValueError, match=rf"000001.txt' line {lines}: expected 15 or 16 fields"):
        ds[1]
