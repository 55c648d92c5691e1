"""The joint image + box transforms against hand-computed results and the official rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.data import transforms as T
from deformdetr.data.synthetic import SYNTHETIC_TRANSFORM_KWARGS


def make_target(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "boxes": boxes,
        "labels": torch.arange(1, n + 1) if labels is None else torch.tensor(labels),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "image_id": torch.tensor([1]),
    }


def rectangle_image(width, height, box, value=255):
    """Black image with a white filled box (x0, y0, x1, y1), end exclusive."""
    array = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = value
    return Image.fromarray(array)


@pytest.mark.parametrize(
    "image_size, size, max_size, expected",
    [
        ((640, 480), 800, 1333, (800, 1066)),  # landscape: long side truncated
        ((480, 640), 800, 1333, (1066, 800)),  # portrait
        ((500, 500), 800, 1333, (800, 800)),
        ((2000, 500), 800, 1333, (333, 1332)),  # capped: round(333.25) = 333, then int(1332.0)
        ((1000, 333), 800, 1333, (444, 1333)),  # capped: round(443.889) = 444, int(1333.33)
        ((400, 100), 800, 1330, (332, 1328)),  # capped: round(332.5) = 332 (round half to even)
        ((800, 600), 600, 1333, (600, 800)),  # already at the size: unchanged
        ((300, 200), 100, None, (100, 150)),  # no cap
        ((300, 200), (120, 50), 10, (50, 120)),  # an explicit (w, h) is taken as is
    ],
)
def test_get_size_official_rule(image_size, size, max_size, expected):
    assert T.get_size(image_size, size, max_size) == expected


def test_hflip_mirrors_image_and_boxes_exactly():
    image = rectangle_image(40, 30, (2, 3, 10, 8))
    target = make_target([[2, 3, 10, 8], [0, 0, 40, 30]])
    flipped, out = T.hflip(image, target)
    assert np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    assert out["boxes"].tolist() == [[30, 3, 38, 8], [0, 0, 40, 30]]
    assert target["boxes"].tolist()[0] == [2, 3, 10, 8]  # the input target is not modified
    # The flipped box is exactly where the white pixels went.
    ys, xs = np.nonzero(np.asarray(flipped)[..., 0])
    assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == out["boxes"][0].tolist()
    again, back = T.hflip(flipped, out)
    assert np.array_equal(np.asarray(again), np.asarray(image))
    assert torch.equal(back["boxes"], target["boxes"])


def test_random_horizontal_flip_probability():
    image, target = rectangle_image(10, 4, (0, 0, 2, 2)), make_target([[0, 0, 2, 2]])
    assert T.RandomHorizontalFlip(p=1.0)(image, target)[1]["boxes"].tolist() == [[8, 0, 10, 2]]
    assert T.RandomHorizontalFlip(p=0.0)(image, target)[1]["boxes"].tolist() == [[0, 0, 2, 2]]


def test_resize_scales_boxes_area_and_size():
    image = rectangle_image(40, 20, (4, 2, 20, 10))
    resized, out = T.resize(image, make_target([[4, 2, 20, 10]]), 10)
    assert resized.size == (20, 10)
    assert out["boxes"].tolist() == [[2, 1, 10, 5]]
    assert out["area"].tolist() == [32.0]  # 128 * 0.5 * 0.5
    assert out["size"].tolist() == [10, 20]
    # Bilinear, as torchvision's default on PIL images.
    expected = image.resize((20, 10), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(resized), np.asarray(expected))


def test_resize_uses_actual_ratios_per_axis():
    _, out = T.resize(Image.new("RGB", (30, 20)), make_target([[3, 2, 30, 20]]), 15, max_size=None)
    # (30, 20) -> shorter side 15: h 15, w int(15 * 30 / 20) = 22; ratios 22/30 and 15/20
    assert out["size"].tolist() == [15, 22]
    torch.testing.assert_close(out["boxes"], torch.tensor([[3 * 22 / 30, 1.5, 22.0, 15.0]]))


def test_random_resize_picks_from_sizes_and_caps():
    random.seed(0)
    transform = T.RandomResize([10, 20, 30], max_size=45)
    seen = set()
    for _ in range(30):
        image, _ = transform(Image.new("RGB", (60, 30)), None)
        assert image.size in {(20, 10), (40, 20), (44, 22)}  # 30 capped: round(45 * 30 / 60) = 22
        seen.add(image.size)
    assert len(seen) == 3
    with pytest.raises(ValueError):
        T.RandomResize(10)


def test_crop_clips_boxes_and_drops_empty_ones():
    image = rectangle_image(40, 30, (0, 0, 40, 30), value=7)
    target = make_target([[5, 5, 15, 15], [18, 12, 30, 25], [0, 0, 4, 4]], labels=[3, 4, 5])
    cropped, out = T.crop(image, target, (10, 8, 12, 20))  # top, left, height, width
    assert cropped.size == (20, 12)
    # Shifted by (-8, -10), clipped to [0, 20] x [0, 12]; the third box falls outside.
    assert out["boxes"].tolist() == [[0, 0, 7, 5], [10, 2, 20, 12]]
    assert out["labels"].tolist() == [3, 4]
    assert out["area"].tolist() == [35.0, 100.0]
    assert out["iscrowd"].tolist() == [0, 0]
    assert out["size"].tolist() == [12, 20]
    assert out["image_id"].tolist() == [1]


def test_random_size_crop_keeps_boxes_inside_and_non_empty():
    random.seed(0)
    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    transform = T.RandomSizeCrop(20, 35)
    dropped = 0
    for _ in range(50):
        corners = generator.uniform(0, 50, size=(6, 2))
        boxes = np.concatenate([corners, corners + generator.uniform(1, 15, size=(6, 2))], axis=1)
        image, out = transform(Image.new("RGB", (50, 40)), make_target(boxes.tolist()))
        w, h = image.size
        assert 20 <= w <= 35 and 20 <= h <= 35
        assert out["size"].tolist() == [h, w]
        b = out["boxes"]
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(out["labels"]) == len(b) == len(out["area"])
        dropped += 6 - len(b)
    assert dropped > 0  # the test did exercise dropping


def test_random_size_crop_on_an_image_smaller_than_min_size():
    image, _ = T.RandomSizeCrop(20, 30)(Image.new("RGB", (12, 25)), None)
    assert image.size[0] == 12 and 20 <= image.size[1] <= 25


def test_random_select():
    first = lambda image, target: ("first", target)  # noqa: E731
    second = lambda image, target: ("second", target)  # noqa: E731
    assert T.RandomSelect(first, second, p=1.0)(None, None)[0] == "first"
    assert T.RandomSelect(first, second, p=0.0)(None, None)[0] == "second"


def test_to_tensor_and_normalize():
    array = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    target = make_target([[0, 0, 8, 6], [2, 1, 4, 5]])
    image, out = T.Compose([T.ToTensor(), T.Normalize()])(Image.fromarray(array), target)
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    raw = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, (raw - mean) / std)
    # cxcywh divided by (w, h, w, h) = (8, 6, 8, 6).
    expected = torch.tensor([[0.5, 0.5, 1.0, 1.0], [3 / 8, 0.5, 2 / 8, 4 / 6]])
    torch.testing.assert_close(out["boxes"], expected)
    assert out["labels"].tolist() == [1, 2]


def white_box(image: torch.Tensor):
    """xyxy of the pixels brighter than mid-grey in a normalized image."""
    std, mean = torch.tensor(T.IMAGENET_STD), torch.tensor(T.IMAGENET_MEAN)
    raw = image * std.view(3, 1, 1) + mean.view(3, 1, 1)
    ys, xs = torch.nonzero(raw.mean(0) > 0.5, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


@pytest.mark.parametrize("image_set", ["train", "val"])
def test_pipeline_boxes_follow_the_pixels(image_set):
    """Through the whole pipeline (flips, resizes, crops), the normalized box still covers the
    white rectangle it was drawn from (to a pixel of resampling blur)."""
    random.seed(0)
    torch.manual_seed(0)
    transform = T.make_coco_transforms(image_set, **SYNTHETIC_TRANSFORM_KWARGS)
    scales = SYNTHETIC_TRANSFORM_KWARGS["scales"]
    source = rectangle_image(128, 100, (30, 20, 90, 70))
    for _ in range(12):
        image, out = transform(source, make_target([[30, 20, 90, 70]]))
        h, w = image.shape[-2:]
        assert min(h, w) in scales or max(h, w) <= SYNTHETIC_TRANSFORM_KWARGS["max_size"]
        assert out["size"].tolist() == [h, w]
        if image_set == "val":
            assert (h, w) == (125, 160)  # 128 capped by max_size: round(160 * 100 / 128)
        if len(out["boxes"]) == 0:
            continue
        box = out["boxes"][0]
        assert ((box >= 0) & (box <= 1)).all()
        cx, cy, bw, bh = (box * torch.tensor([w, h, w, h])).tolist()
        expected = torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        torch.testing.assert_close(white_box(image), expected, atol=1.5, rtol=0)


def test_official_defaults():
    train = T.make_coco_transforms("train")
    resize = train.transforms[1].transforms1
    assert resize.sizes == list(range(480, 801, 32)) and resize.max_size == 1333
    crop_branch = train.transforms[1].transforms2.transforms
    assert crop_branch[0].sizes == [400, 500, 600] and crop_branch[0].max_size is None
    assert (crop_branch[1].min_size, crop_branch[1].max_size) == (384, 600)
    val = T.make_coco_transforms("val")
    assert val.transforms[0].sizes == [800] and val.transforms[0].max_size == 1333
    with pytest.raises(ValueError, match="image_set"):
        T.make_coco_transforms("bogus")
