"""CocoDetection: the official target conversion (crowd and empty boxes dropped, clamping, the
target format), errors for missing/corrupt files, skipping them on request, and build_coco;
load_image's decoding of high bit depths and its size limit; errors and warnings that name
unusable annotation files."""

from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.data import (
    CocoDetection,
    ImageLoadError,
    build_coco,
    collate_fn,
    convert_coco_annotations,
    generate_synthetic_coco,
)


def write_coco(tmp_path, images, annotations):
    """images: [(id, file_name, (w, h) or None for no file)], annotations: [dict]."""
    folder = tmp_path / "images"
    folder.mkdir()
    entries = []
    for image_id, file_name, size in images:
        if size is not None:
            w, h = size
            Image.new("RGB", (w, h), (image_id * 20, 0, 0)).save(folder / file_name)
        entries.append({"id": image_id, "file_name": file_name, "width": 40, "height": 30})
    ann = {
        "images": entries,
        "annotations": [dict(a, id=i + 1) for i, a in enumerate(annotations)],
        "categories": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(ann))
    return folder, ann_file


def ann(image_id, bbox, category_id=1, iscrowd=0, area=10.0):
    return {
        "image_id": image_id,
        "bbox": bbox,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "area": area,
    }


@pytest.fixture
def dataset_files(tmp_path):
    images = [(1, "a.png", (40, 30)), (2, "b.png", (40, 30)), (3, "c.png", (40, 30))]
    annotations = [
        ann(1, [2, 3, 10, 5], category_id=7, area=50.0),  # kept
        ann(1, [0, 0, 20, 20], iscrowd=1),  # crowd: dropped
        ann(1, [35, 25, 10, 10], area=99.0),  # clamped to (35, 25, 40, 30)
        ann(1, [5, 5, 0, 4]),  # zero width: dropped
        ann(1, [50, 5, 4, 4]),  # outside the image: empty after clamping, dropped
        ann(1, [-3, -2, 6, 5], category_id=7),  # clamped at 0
        ann(2, [1, 1, 2, 2]),
    ]
    return write_coco(tmp_path, images, annotations)


def test_target_conversion_follows_the_official_rules(dataset_files):
    dataset = CocoDetection(*dataset_files)
    assert len(dataset) == 3
    image, target = dataset[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (40, 30)
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [35, 25, 40, 30], [0, 0, 3, 3]]
    assert target["labels"].tolist() == [7, 1, 7]
    assert target["area"].tolist() == [50.0, 99.0, 10.0]
    assert target["iscrowd"].tolist() == [0, 0, 0]
    assert target["image_id"].tolist() == [1]
    assert target["orig_size"].tolist() == [30, 40] and target["size"].tolist() == [30, 40]
    dtypes = {k: v.dtype for k, v in target.items()}
    assert dtypes == {
        "boxes": torch.float32,
        "labels": torch.int64,
        "image_id": torch.int64,
        "area": torch.float32,
        "iscrowd": torch.int64,
        "orig_size": torch.int64,
        "size": torch.int64,
    }


def test_image_without_annotations_gives_empty_target(dataset_files):
    _, target = CocoDetection(*dataset_files)[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"].tolist() == [3]


def test_clamping_uses_the_decoded_image_size():
    target = convert_coco_annotations([ann(5, [10, 10, 100, 100])], image_id=5, width=20, height=15)
    assert target["boxes"].tolist() == [[10, 10, 20, 15]]
    assert target["orig_size"].tolist() == [15, 20]


def test_transforms_receive_image_and_target(dataset_files):
    seen = []

    def transform(image, target):
        seen.append((image.size, len(target["boxes"])))
        return "image", target

    image, _ = CocoDetection(*dataset_files, transforms=transform)[1]
    assert image == "image" and seen == [((40, 30), 1)]


def test_missing_folder_or_annotation_file(tmp_path, dataset_files):
    folder, ann_file = dataset_files
    with pytest.raises(FileNotFoundError, match="image folder"):
        CocoDetection(tmp_path / "nope", ann_file)
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(folder, tmp_path / "nope.json")


def test_corrupt_image_raises_error_naming_the_file(dataset_files):
    folder, ann_file = dataset_files
    (folder / "b.png").write_bytes(b"this is not an image" * 10)
    dataset = CocoDetection(folder, ann_file)
    with pytest.raises(ImageLoadError, match="b.png") as info:
        dataset[1]
    assert isinstance(info.value, OSError) and info.value.path.endswith("b.png")


@pytest.mark.filterwarnings("ignore:.*0 usable boxes")
def test_truncated_jpeg_raises_error_naming_the_file(tmp_path):
    folder, ann_file = write_coco(tmp_path, [(1, "t.jpg", None)], [])
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "t.jpg", quality=90)
    data = (folder / "t.jpg").read_bytes()
    (folder / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="t.jpg"):
        CocoDetection(folder, ann_file)[0]


@pytest.mark.filterwarnings("ignore:.*0 usable boxes")
def test_missing_image_raises_error_naming_the_file(tmp_path):
    folder, ann_file = write_coco(tmp_path, [(1, "gone.jpg", None)], [])
    with pytest.raises(ImageLoadError, match="gone.jpg.*not found"):
        CocoDetection(folder, ann_file)[0]


def test_skip_corrupt_warns_and_returns_the_next_valid_sample(dataset_files):
    folder, ann_file = dataset_files
    (folder / "b.jpg").write_bytes(b"\xff\xd8 garbage")
    (folder / "b.png").rename(folder / "b_renamed.png")  # image 2 is now missing
    (folder / "c.png").write_bytes(b"\x00" * 64)  # image 3 is corrupt
    dataset = CocoDetection(folder, ann_file, skip_corrupt=True)
    with pytest.warns(RuntimeWarning, match="b.png"):
        with pytest.warns(RuntimeWarning, match="c.png"):
            _, target = dataset[1]
    assert target["image_id"].tolist() == [1]  # wrapped around to the first valid image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad files are not re-read nor re-reported
        assert dataset[2][1]["image_id"].tolist() == [1]


@pytest.mark.filterwarnings("ignore:.*0 usable boxes")
def test_skip_corrupt_with_no_valid_image_raises(tmp_path):
    folder, ann_file = write_coco(tmp_path, [(1, "x.jpg", None)], [])
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="no readable image"):
        CocoDetection(folder, ann_file, skip_corrupt=True)[0]


def test_index_out_of_range(dataset_files):
    with pytest.raises(IndexError):
        CocoDetection(*dataset_files)[3]


def test_build_coco_end_to_end_on_synthetic_data(tmp_path):
    random.seed(0)
    generate_synthetic_coco(tmp_path, num_train=4, num_val=2, image_size=(64, 48), seed=1)
    kwargs = dict(scales=[32, 40], max_size=60, crop_sizes=[40], crop_min_max=(24, 36))
    train = build_coco(tmp_path, "train", **kwargs)
    val = build_coco(tmp_path, "val", **kwargs)
    assert len(train) == 4 and len(val) == 2
    images, mask, targets = collate_fn([train[0], train[1], val[0]])
    assert images.shape[:2] == (3, 3) and mask.shape == (3, *images.shape[2:])
    assert val[0][0].shape == (3, 53, 40)  # val: shorter side to max(scales): 64 x 48 -> 53 x 40
    for target in targets:
        assert target["boxes"].min() >= 0 and target["boxes"].max() <= 1
    with pytest.raises(ValueError, match="image_set"):
        build_coco(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="COCO root"):
        build_coco(tmp_path / "missing", "train")


# ---- image decoding: bit depths and size -----------------------------------------------------


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_high_bit_depth_images_are_scaled_not_saturated(tmp_path, mode, suffix):
    from deformdetr.data.coco import load_image

    gradient = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (4, 1))  # 0 .. 65280 along x
    dtype = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32}[mode]
    path = tmp_path / f"gradient{suffix}"
    Image.fromarray(gradient.astype(dtype)).save(path)
    assert Image.open(path).mode == mode
    rgb = np.asarray(load_image(str(path)))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 256, 3)
    row = rgb[0, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == 255  # ordered, full range
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == (gradient >> 8)).all()


@pytest.mark.parametrize("values, expected_last", [(np.linspace(0, 1, 64), 255),  # [0, 1]: x 255
                                                   (np.linspace(0, 200, 64), 200),  # [0, 255]: kept
                                                   (np.linspace(-5, 3000, 64), 255)])  # stretched
def test_float_images_are_scaled_sensibly(tmp_path, values, expected_last):
    from deformdetr.data.coco import load_image

    path = tmp_path / "float.tif"
    Image.fromarray(np.tile(values.astype(np.float32), (2, 1))).save(path)
    assert Image.open(path).mode == "F"
    row = np.asarray(load_image(str(path)))[0, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and row[0] == 0 and row[-1] == expected_last
    assert len(set(row)) > 48  # 64 distinct inputs stay (almost all) distinct: nothing saturates


def test_too_large_image_raises_image_load_error_saying_how_to_allow_it(tmp_path, monkeypatch):
    from deformdetr.data.coco import load_image

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 pixels > 2 x 100: PIL's bomb error
    with pytest.raises(ImageLoadError, match=r"big.png.*too large.*MAX_IMAGE_PIXELS") as info:
        load_image(str(path))
    assert info.value.path == str(path)


# ---- annotation files ------------------------------------------------------------------------


def test_corrupt_annotation_json_names_the_file(tmp_path, dataset_files):
    from deformdetr.data.coco import AnnotationFileError

    folder, _ = dataset_files
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(AnnotationFileError, match=r"broken.json.*not valid JSON") as info:
        CocoDetection(folder, broken)
    assert isinstance(info.value, ValueError) and info.value.path == str(broken)


@pytest.mark.parametrize("content, message", [
    ([], "expected a JSON object"),
    ({"images": {}}, "'images' must be a list"),
    ({"images": [{"id": 1}]}, r"images\[0\] lacks 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]},
     r"annotations\[0\] lacks 'bbox'"),
    ({"images": [{"id": 1, "file_name": "a.png"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}]}, "bbox must be 4 numbers"),
])
def test_annotation_file_without_the_coco_layout_names_file_and_entry(tmp_path, dataset_files, content, message):
    from deformdetr.data.coco import AnnotationFileError

    folder, _ = dataset_files
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationFileError, match=f"odd.json.*{message}"):
        CocoDetection(folder, path)


@pytest.mark.parametrize("content", [{"images": [], "annotations": [], "categories": []}, {"categories": []}])
def test_annotation_file_without_images_is_an_error_naming_it(tmp_path, dataset_files, content):
    from deformdetr.data.coco import AnnotationFileError

    folder, _ = dataset_files
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(content))
    with pytest.raises(AnnotationFileError, match="empty.json.*no images"):
        CocoDetection(folder, path)


@pytest.mark.parametrize("annotations", [
    [],  # no annotations at all
    [ann(1, [5, 5, 0, 4]), ann(2, [1, 1, 3, 0]), ann(2, [50, 5, 4, 4]), ann(3, [0, 0, 9, 9], iscrowd=1)],
])
def test_annotation_file_without_usable_boxes_warns_once_with_counts(tmp_path, annotations):
    images = [(1, "a.png", (40, 30)), (2, "b.png", (40, 30)), (3, "c.png", (40, 30))]
    folder, ann_file = write_coco(tmp_path, images, annotations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = CocoDetection(folder, ann_file)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "ann.json" in messages[0] and f"0 usable boxes among {len(annotations)} annotations of 3 images" \
        in messages[0]
    assert len(dataset) == 3  # still usable (e.g. to look at the images)


def test_annotation_file_with_usable_boxes_only_counts_the_degenerate_ones(dataset_files):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CocoDetection(*dataset_files)
    assert [str(w.message).split(": ", 1)[1] for w in caught] == ["1 boxes of zero or negative size are skipped"]
