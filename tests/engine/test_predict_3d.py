"""`deformdetr predict` with a MonoDETR checkpoint: each image with its camera (a calib folder, one
calib file, intrinsics), the evaluation's input and decoding (result files equal `eval
--results-dir`'s, and score the same), KITTI result files and their zip for the test split (no
labels read), batches equal to one image at a time."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from deformdetr.cli import main
from deformdetr.data.kitti import read_calib, read_label_lines
from deformdetr.eval.kitti import evaluate_kitti, read_kitti_label_dir, read_kitti_result_dir

# A tiny MonoDETR on 32 x 96 synthetic images; test.threshold 0 keeps each image's test.topk
# best (query, class) pairs, so that every image has detections to compare.
TINY = ["data.synthetic.image_size=[32,96]", "data.synthetic.num_train=4", "data.synthetic.num_val=5",
        "data.resolution=[96,32]", "data.num_workers=0", "device=cpu", "train.batch_size=2", "train.epochs=1",
        "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=1",
        "model.num_queries=5", "model.group_num=1", "model.dim_feedforward=32", "test.threshold=0", "test.topk=4"]
VAL_IDS = range(4, 9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, checkpoint) of a tiny model trained for an epoch on the synthetic set."""
    folder = tmp_path_factory.mktemp("mono_predict")
    root = folder / "kitti"
    overrides = TINY + [f"data.root={root}"]
    assert main(["train", "--config", "monodetr_synthetic", "--output-dir", str(folder / "run"), *overrides]) == 0
    return root, folder / "run" / "checkpoint.pth"


def val_images(root):
    return [str(root / "training" / "image_2" / f"{i:06d}.png") for i in VAL_IDS]


def predict(checkpoint, images, out, *options):
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, images), "--output-dir", str(out),
                 "--device", "cpu", *map(str, options)]) == 0
    return json.load(open(out / "predictions.json"))


def test_result_files_are_evaluations_and_score_the_same(tmp_path, trained):
    root, checkpoint = trained
    metrics, evaluated = tmp_path / "metrics.json", tmp_path / "evaluated"
    assert main(["eval", "--config", "monodetr_synthetic", "--checkpoint", str(checkpoint), "--json", str(metrics),
                 "--results-dir", str(evaluated), *TINY, f"data.root={root}"]) == 0
    # Batched as the evaluation's loader batches them (train.batch_size): bit for bit the same sums
    records = predict(checkpoint, val_images(root), tmp_path / "pred", "--calib", root / "training" / "calib",
                      "--batch-size", 2)
    results = tmp_path / "pred" / "kitti_results"
    names = [f"{i:06d}.txt" for i in VAL_IDS]
    assert sorted(os.listdir(results)) == names
    for name in names:  # the same numbers, written the same way
        assert (results / name).read_text() == (evaluated / name).read_text() != ""
    scored = evaluate_kitti(read_kitti_label_dir(root / "training" / "label_2", VAL_IDS),
                            read_kitti_result_dir(results, VAL_IDS)).to_flat_dict()
    assert scored == pytest.approx(json.load(open(metrics)), nan_ok=True)
    # predictions.json holds the result files' lines by name
    for record, name in zip(records, names):
        lines = read_label_lines(results / name)
        assert len(lines) == len(record["detections"]) == 4
        for line, detection in zip(lines, record["detections"]):
            assert line.type == detection["name"] and line.score == detection["score"]
            assert list(line.box2d) == detection["box_xyxy"] and list(line.location) == detection["location"]
            assert (line.h, line.w, line.l, line.alpha, line.ry) == tuple(detection[k] for k in
                                                                         ("h", "w", "l", "alpha", "ry"))
        assert record["P2"] == read_calib(root / "training" / "calib" / name).P2.tolist()
        assert os.path.isfile(record["png"])


def test_one_calib_file_for_all_images_and_intrinsics(tmp_path, trained):
    root, checkpoint = trained
    calib = root / "training" / "calib" / "000004.txt"  # the synthetic camera is the same for all
    by_folder = predict(checkpoint, val_images(root), tmp_path / "folder", "--calib", root / "training" / "calib")
    by_file = predict(checkpoint, val_images(root), tmp_path / "file", "--calib", calib)
    assert [r["detections"] for r in by_file] == [r["detections"] for r in by_folder]
    P2 = read_calib(calib).P2
    intrinsics = f"{P2[0, 0]},{P2[1, 1]},{P2[0, 2]},{P2[1, 2]}"
    by_intrinsics = predict(checkpoint, val_images(root)[:2], tmp_path / "intrinsics", "--intrinsics", intrinsics)
    assert np.allclose(by_intrinsics[0]["P2"], [[P2[0, 0], 0, P2[0, 2], 0], [0, P2[1, 1], P2[1, 2], 0], [0, 0, 1, 0]])
    # The same focal lengths and principal point, without KITTI's small camera offsets (P2[:, 3]):
    # the same boxes, the 3D positions moved by those offsets' few centimetres at most.
    for with_offsets, without in zip(by_folder[:2], by_intrinsics):
        assert np.allclose([d["box_xyxy"] for d in without["detections"]],
                           [d["box_xyxy"] for d in with_offsets["detections"]])
        assert np.allclose([d["location"] for d in without["detections"]],
                           [d["location"] for d in with_offsets["detections"]], atol=0.1)


def test_batches_give_the_results_of_one_image_at_a_time(tmp_path, trained):
    root, checkpoint = trained
    calib = ["--calib", str(root / "training" / "calib")]
    one = predict(checkpoint, val_images(root), tmp_path / "one", *calib)
    batched = predict(checkpoint, val_images(root), tmp_path / "three", *calib, "--batch-size", "3")
    for a, b in zip(one, batched):
        assert a["image"] == b["image"] and len(a["detections"]) == len(b["detections"])
        for x, y in zip(a["detections"], b["detections"]):
            assert x["label"] == y["label"] and x["score"] == pytest.approx(y["score"], abs=1e-5)
            assert np.allclose(x["box_xyxy"] + x["location"], y["box_xyxy"] + y["location"], atol=1e-3)


def test_the_test_split_gets_a_result_file_per_image_and_a_zip(tmp_path, trained, capsys):
    """KITTI's testing/ has images and calib files, no labels: a result file for every image, also
    one without detections, and the zip the server takes (files at its root)."""
    root, checkpoint = trained
    testing = tmp_path / "testing"
    for sub in ("image_2", "calib"):
        shutil.copytree(root / "training" / sub, testing / sub,
                        ignore=lambda folder, names: [n for n in names if n[:6] not in ("000004", "000005", "000006")])
    out = tmp_path / "submission"
    predict(checkpoint, [testing / "image_2"], out, "--calib", testing / "calib", "--threshold", "1")
    names = ["000004.txt", "000005.txt", "000006.txt"]
    assert sorted(os.listdir(out / "kitti_results")) == names
    assert all((out / "kitti_results" / n).read_text() == "" for n in names)  # nothing scores 1
    with zipfile.ZipFile(out / "kitti_results.zip") as archive:
        assert sorted(archive.namelist()) == names
    # a later run on fewer images leaves only its own files, in the folder and the zip
    predict(checkpoint, [testing / "image_2" / "000005.png"], out, "--calib", testing / "calib")
    assert os.listdir(out / "kitti_results") == ["000005.txt"]
    assert zipfile.ZipFile(out / "kitti_results.zip").namelist() == ["000005.txt"]
    assert "detections in 1 images" in capsys.readouterr().out


def test_images_without_a_camera_are_named_before_anything_runs(tmp_path, trained, capsys):
    root, checkpoint = trained
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(root / "training" / "calib" / "000004.txt", calib)
    assert main(["predict", "--checkpoint", str(checkpoint), *val_images(root)[:3], "--calib", str(calib),
                 "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("deformdetr predict: error: 2 of 3 images have no calib file in") and \
        error.endswith("000005.png, 000006.png")
    assert not (tmp_path / "out").exists()
    assert main(["predict", "--checkpoint", str(checkpoint), *val_images(root)[:1], "--output-dir",
                 str(tmp_path / "out")]) == 2
    assert "needs the camera of the images: give --calib" in capsys.readouterr().err


def test_images_of_another_shape_are_seen_as_a_band_and_said_so(tmp_path, trained, capsys):
    """The network sees such an image scaled to its input width about the middle; the boxes come
    back in the whole image's rows, as if the band had been cropped out and predicted on."""
    root, checkpoint = trained
    image = Image.open(val_images(root)[0])
    tall = Image.new("RGB", (96, 64), (90, 90, 90))
    tall.paste(image, (0, 16))  # the 32 x 96 image in the middle of a 64 x 96 one
    tall.save(tmp_path / "tall.png")
    calib = read_calib(root / "training" / "calib" / "000004.txt")
    shifted = calib.copy()
    shifted.P2[1] += 16 * shifted.P2[2]  # the same camera, its image 16 rows lower
    from deformdetr.data.kitti import write_calib

    write_calib(tmp_path / "tall.txt", shifted)
    tall_records = predict(checkpoint, [tmp_path / "tall.png"], tmp_path / "out_tall", "--calib", tmp_path / "tall.txt")
    assert "1 of 1 images are not of the model's input shape (96x32)" in capsys.readouterr().err
    plain = predict(checkpoint, val_images(root)[:1], tmp_path / "out_plain", "--calib", root / "training" / "calib")
    for band, whole in zip(tall_records[0]["detections"], plain[0]["detections"]):
        assert band["score"] == pytest.approx(whole["score"], abs=1e-5)
        assert np.allclose(band["box_xyxy"], np.add(whole["box_xyxy"], [0, 16, 0, 16]), atol=1e-3)
        assert np.allclose(band["location"], whole["location"], atol=1e-3)


def test_a_2d_checkpoint_refuses_the_camera_options(tmp_path, capsys):
    import argparse
    import dataclasses

    import torch

    from deformdetr.models import deformable_detr

    model = deformable_detr("multi_scale", num_classes=3, backbone="resnet18", hidden_dim=32, nheads=2,
                            enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=2)
    path = tmp_path / "detr.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(**dataclasses.asdict(model.config))}, path)
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "x.png"), "--intrinsics", "1,1,1,1"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"deformdetr predict: error: --intrinsics is for 3D (MonoDETR) models; {path} holds a 2D (Deformable DETR) "
        f"model")


def test_compile_runs_the_model_through_torch_compile(tmp_path, trained, monkeypatch, capsys):
    """`predict --compile` hands a 3D model to torch.compile and predicts with what it returns,
    and says that the first batch waits for the compilation."""
    import torch

    root, checkpoint = trained
    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return lambda *inputs: model(*inputs)

    monkeypatch.setattr(torch, "compile", fake_compile)
    calib = ["--calib", str(root / "training" / "calib")]
    plain = predict(checkpoint, val_images(root)[:2], tmp_path / "plain", *calib)
    assert compiled == [] and "torch.compile" not in capsys.readouterr().err
    through = predict(checkpoint, val_images(root)[:2], tmp_path / "compiled", *calib, "--compile")
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "MonoDETR"
    assert "compiling the model with torch.compile; the first batch waits for it" in capsys.readouterr().err
    assert [r["detections"] for r in through] == [r["detections"] for r in plain]
