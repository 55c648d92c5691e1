"""predict_images: drawings never overwrite input images nor each other; unreadable images are
skipped and listed, and predictions.json is still written."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deformdetr.engine.predict import drawing_names, predict_images


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
