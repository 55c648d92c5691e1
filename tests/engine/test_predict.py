"""predict_images: drawings never overwrite input images nor each other; unreadable images are
skipped and listed, and predictions.json is still written."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.engine.predict import compiled, drawing_names, predict_images


class OneBox(torch.nn.Module):
    """A stand-in detector: one query, class 1 with score 0.88, a box in the image's centre."""

    def forward(self, images):
        logits = torch.full((len(images), 1, 3), -10.0)
        logits[:, 0, 1] = 2.0
        return {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]).repeat(len(images), 1, 1)}


def to_tensor(image, target):
    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255), target


def predict(paths, output_dir):
    return predict_images(OneBox(), [str(p) for p in paths], str(output_dir), to_tensor, "cpu")


def gray(path, value=128, size=(20, 16)):
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def test_output_dir_holding_the_inputs_keeps_the_input_images(tmp_path):
    image = gray(tmp_path / "gray.png")
    before = image.read_bytes()
    records = predict([image], tmp_path)
    assert image.read_bytes() == before  # the input is not replaced by the drawing
    assert records[0]["png"] == str(tmp_path / "gray_1.png") and os.path.exists(records[0]["png"])
    assert json.load(open(tmp_path / "predictions.json"))[0]["png"] == records[0]["png"]


def test_inputs_sharing_a_stem_get_one_drawing_each_in_input_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = [gray(tmp_path / "a" / "x.png", 10), gray(tmp_path / "b" / "x.png", 200),
             gray(tmp_path / "same.jpg", 50), gray(tmp_path / "same.png", 90)]
    out = tmp_path / "out"
    records = predict(paths, out)
    pngs = [r["png"] for r in records]
    assert [os.path.basename(p) for p in pngs] == ["x.png", "x_1.png", "same.png", "same_1.png"]
    # each drawing shows its own image: the background pixel differs between the two x.png inputs
    assert Image.open(pngs[0]).getpixel((0, 0)) == (10, 10, 10)
    assert Image.open(pngs[1]).getpixel((0, 0)) == (200, 200, 200)


def test_drawing_names_skip_names_of_inputs_and_earlier_drawings(tmp_path, monkeypatch):
    inputs = [str(tmp_path / "x.png"), str(tmp_path / "x_1.png"), str(tmp_path / "x.jpg")]
    # x.png and x_1.png are inputs in the output folder: their drawings and x.jpg's take x_2.., in order
    assert drawing_names(inputs, str(tmp_path)) == ["x_2.png", "x_1_1.png", "x_3.png"]
    # a relative spelling of the output folder is the same folder
    monkeypatch.chdir(tmp_path)
    assert drawing_names(["x.png"], ".") == ["x_1.png"]


def test_unreadable_image_is_skipped_with_a_warning_and_listed(tmp_path):
    good = gray(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image" * 8)
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning) as caught:
        records = predict([bad, good, missing], out)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "bad.png" in messages[0] and "missing.jpg" in messages[1]
    assert [os.path.basename(r["image"]) for r in records] == ["good.png"]
    assert [os.path.basename(s["image"]) for s in records.skipped] == ["bad.png", "missing.jpg"]
    assert len(json.load(open(out / "predictions.json"))) == 1
    skipped = json.load(open(out / "skipped.json"))
    assert skipped[0]["image"] == str(bad) and "corrupt" in skipped[0]["error"]
    # a later run that reads everything does not leave the old list behind
    predict([good], out)
    assert not (out / "skipped.json").exists()


def test_no_readable_image_at_all_is_an_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x00" * 32)
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of the 1 images.*bad.png"):
        predict([bad], tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_batches_give_the_results_of_one_image_at_a_time(tmp_path):
    from deformdetr.data.transforms import make_coco_transforms
    from deformdetr.models import deformable_detr

    torch.manual_seed(0)
    model = deformable_detr("multi_scale", num_classes=4, backbone="resnet18", hidden_dim=64, nheads=2,
                            enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=6)
    rng = np.random.default_rng(0)
    images = []
    for index, size in enumerate([(40, 30), (40, 30), (32, 48), (40, 30), (32, 48)]):  # two sizes, interleaved
        path = tmp_path / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    transform = make_coco_transforms("val", val_size=32, max_size=64)

    def detections(batch_size):
        records = predict_images(model, images, str(tmp_path / f"b{batch_size}"), transform, "cpu", threshold=0.0,
                                 batch_size=batch_size)
        assert [r["image"] for r in records] == images  # input order
        return records

    one, batched = detections(1), detections(2)
    for a, b in zip(one, batched):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        assert np.allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]], atol=1e-5)
        assert np.allclose([d["box_xyxy"] for d in a["detections"]], [d["box_xyxy"] for d in b["detections"]],
                           atol=1e-3)


def test_records_and_drawings_carry_the_data_sets_ids_and_names(tmp_path):
    from deformdetr.data.categories import Categories, Category

    categories = Categories([Category(1, 17, "pear")], num_classes=3)
    records = predict_images(OneBox(), [str(gray(tmp_path / "a.png"))], str(tmp_path / "out"), to_tensor, "cpu",
                             categories=categories)
    assert records[0]["detections"][0] | {"box_xyxy": None} == {
        "label": 1, "category_id": 17, "name": "pear", "score": pytest.approx(0.8808, abs=1e-4), "box_xyxy": None}


def test_official_checkpoints_of_91_classes_name_the_coco_categories(tmp_path):
    import argparse
    import dataclasses

    from deformdetr.engine.predict import load_for_prediction
    from deformdetr.models import deformable_detr

    model = deformable_detr("multi_scale", num_classes=91, backbone="resnet18", hidden_dim=64, nheads=2,
                            enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=4)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(**dataclasses.asdict(model.config))}, path)
    task, _, categories = load_for_prediction(str(path))
    assert task.name == "detection"
    assert (categories.name_of(1), categories.id_of(1), categories.name_of(90)) == ("person", 1, "toothbrush")


def test_compiling_says_what_waits_for_it_unless_told_not_to(monkeypatch, capsys):
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(torch, "compile", lambda module: ("compiled", module))
    assert compiled(model, "the first image of each size") == ("compiled", model)
    assert "compiling the model with torch.compile; the first image of each size waits for it" in capsys.readouterr().err
    assert compiled(model, "the first step", say=False) == ("compiled", model)
    assert capsys.readouterr().err == ""
