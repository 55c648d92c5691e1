"""The synthetic shapes data set: deterministic, valid COCO, boxes tight around drawn shapes."""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from deformdetr.data import SYNTHETIC_CATEGORIES, CocoDetection, generate_synthetic_coco
from deformdetr.data.synthetic import _image_rng, render_synthetic_image


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_same_seed_gives_identical_files(tmp_path):
    first = generate_synthetic_coco(tmp_path / "a", num_train=5, num_val=2, image_size=48, seed=3)
    generate_synthetic_coco(tmp_path / "b", num_train=5, num_val=2, image_size=48, seed=3)
    generate_synthetic_coco(tmp_path / "c", num_train=5, num_val=2, image_size=48, seed=4)
    files_a, files_b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    names = {str(p) for p in files_a}
    assert "annotations/instances_train2017.json" in names
    assert "annotations/instances_val2017.json" in names
    assert "train2017/000000000005.jpg" in names and "val2017/000000000002.jpg" in names
    assert len(names) == 9
    assert files_a == files_b
    assert files_a != all_files(tmp_path / "c")
    assert first.train_images == str(tmp_path / "a" / "train2017")
    assert first.model_num_classes == len(SYNTHETIC_CATEGORIES) + 1


def test_image_content_does_not_depend_on_the_split_size(tmp_path):
    generate_synthetic_coco(tmp_path / "a", num_train=2, num_val=0, image_size=32, seed=0)
    generate_synthetic_coco(tmp_path / "b", num_train=4, num_val=0, image_size=32, seed=0)
    for i in (1, 2):
        name = f"train2017/{i:012d}.jpg"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_annotations_are_valid_coco(tmp_path):
    sizes = ((40, 72), (50, 90))  # heights 40..72, widths 50..90
    result = generate_synthetic_coco(
        tmp_path, num_train=30, num_val=3, image_size=sizes, seed=0, num_classes=4
    )
    coco = load_coco(result.train_annotations)
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["circle", "square", "triangle"]
    labels_seen = set()
    for image_id, info in coco.imgs.items():
        with Image.open(tmp_path / "train2017" / info["file_name"]) as image:
            assert image.size == (info["width"], info["height"])
        assert 40 <= info["height"] <= 72 and 50 <= info["width"] <= 90
        anns = coco.imgToAnns[image_id]
        assert 1 <= len(anns) <= 4
        short = min(info["width"], info["height"])
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
            assert 0.1 * short <= max(w, h) <= 0.6 * short  # objects 15%..50% of the side
            assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
            labels_seen.add(a["category_id"])
    assert labels_seen == {1, 2, 3, 4}
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    # The project's dataset reads it, every box surviving the conversion.
    dataset = CocoDetection(result.val_images, result.val_annotations)
    for index in range(len(dataset)):
        _, target = dataset[index]
        assert len(target["boxes"]) == len(load_coco(result.val_annotations).imgToAnns[index + 1])


@pytest.mark.parametrize("seed", range(4))
def test_boxes_are_tight_around_the_drawn_shapes(seed):
    sample = render_synthetic_image(np.random.default_rng(seed), 64, 80)
    changed = np.abs(sample.image.astype(int) - sample.background.astype(int)).sum(-1)
    inside_any = np.zeros(changed.shape, bool)
    for x, y, w, h in sample.boxes:
        inside_any[y : y + h, x : x + w] = True
        region = changed[y : y + h, x : x + w]
        # Clearly visible: a good part of the box differs strongly from the background...
        assert (region > 60).mean() > 0.25
        # ...and the box is tight: the shape reaches each of its four edges.
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
    assert not changed[~inside_any].any()  # nothing drawn outside the boxes


def test_written_images_match_the_rendered_ones(tmp_path):
    result = generate_synthetic_coco(
        tmp_path, num_train=3, num_val=0, image_size=(48, 64), seed=9, image_format="png"
    )
    coco = load_coco(result.train_annotations)
    for index in range(3):
        sample = render_synthetic_image(_image_rng(9, "train2017", index), 48, 64)
        image = np.asarray(Image.open(tmp_path / "train2017" / f"{index + 1:012d}.png"))
        assert np.array_equal(image, sample.image)  # png is lossless
        assert [a["bbox"] for a in coco.imgToAnns[index + 1]] == sample.boxes


def test_generation_is_fast(tmp_path):
    start = time.perf_counter()
    generate_synthetic_coco(tmp_path, num_train=100, num_val=0, image_size=128, seed=0)
    assert time.perf_counter() - start < 5.0  # ~2.5 ms an image on one core


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_coco(tmp_path, num_train=1, num_val=1, num_classes=0)
    with pytest.raises(ValueError, match="image_format"):
        generate_synthetic_coco(tmp_path, num_train=1, num_val=1, image_format="gif")
