"""Fine-tuning on one's own COCO-format data: weights of a model trained with another class count,
data in folders of its own naming, the data set's own category ids and names everywhere a
person or a tool reads them."""

import json
import os
import shutil

import pytest

from deformdetr.cli import main
from deformdetr.data import generate_synthetic_coco
from deformdetr.engine.tasks.detection import COCO_RESULTS_NAME
from deformdetr.models.checkpoint import read_checkpoint

# The synthetic shapes circle, square, triangle become this data set's categories 3, 17, 40.
OWN = {1: (3, "apple"), 2: (17, "pear"), 3: (40, "kiwi")}


def own_data_set(root, source, split, images, annotations):
    """The synthetic ``split`` rewritten with our own ids and names into folders of our naming."""
    with open(os.path.join(source, "annotations", f"instances_{split}2017.json")) as handle:
        dataset = json.load(handle)
    dataset["categories"] = [{"id": new, "name": name} for new, name in OWN.values()]
    dataset["annotations"] = [dict(a, category_id=OWN[a["category_id"]][0]) for a in dataset["annotations"]
                              if a["category_id"] in OWN]
    shutil.copytree(os.path.join(source, f"{split}2017"), root / images)
    (root / annotations).parent.mkdir(parents=True, exist_ok=True)
    (root / annotations).write_text(json.dumps(dataset))


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    source = tmp_path_factory.mktemp("shapes")
    generate_synthetic_coco(source, num_train=8, num_val=4, image_size=48, seed=2, num_classes=3)
    root = tmp_path_factory.mktemp("own")
    own_data_set(root, str(source), "train", "my_photos", "labels/train.json")
    own_data_set(root, str(source), "val", "held_out", "labels/val.json")
    return root


def own_overrides(root):
    return [f"data.train_images={root / 'my_photos'}", f"data.train_annotations={root / 'labels/train.json'}",
            f"data.val_images={root / 'held_out'}", f"data.val_annotations={root / 'labels/val.json'}",
            "data.dataset=coco", "data.root=nowhere", "model.num_classes=auto"]


def test_fine_tuning_with_our_own_ids_and_names(tmp_path, own_root, tiny_overrides, capsys):
    # A model of 7 classes (the demo's), trained on the shapes for an epoch.
    first = tmp_path / "first"
    assert main(["train", "--config", "demo_synthetic", "--output-dir", str(first), *tiny_overrides,
                 "train.epochs=1"]) == 0
    # Fine-tuned on our data set of 3 categories (ids 3, 17, 40), from that model's weights.
    tuned = tmp_path / "tuned"
    capsys.readouterr()
    assert main(["train", "--config", "demo_synthetic", "--output-dir", str(tuned), "--weights",
                 str(first / "checkpoint.pth"), *tiny_overrides, *own_overrides(own_root)]) == 0
    err = capsys.readouterr().err
    assert "weights loaded" in err and "re-initialised (e.g. class_embed" in err
    report = json.load(open(tuned / "weights.json"))
    assert report["reinitialised"] and all(k.startswith("class_embed") for k in report["reinitialised"])
    assert not report["unused"] and len(report["loaded"]) > 100
    assert json.load(open(tuned / "config.json"))["model"]["num_classes"] == 3

    state = read_checkpoint(str(tuned / "checkpoint.pth"))
    assert state["categories"] == [{"label": 0, "id": 3, "name": "apple"}, {"label": 1, "id": 17, "name": "pear"},
                                   {"label": 2, "id": 40, "name": "kiwi"}]
    assert (tuned / "checkpoint_best.pth").exists()
    best = read_checkpoint(str(tuned / "checkpoint_best.pth"))["best"]
    assert best["metric"] == "AP" and best["epoch"] in (0, 1)
    assert [r.get("best_epoch") for r in map(json.loads, open(tuned / "log.jsonl"))].count(best["epoch"]) == 1

    # Predictions name our categories, with no data set at hand.
    predictions = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tuned / "checkpoint.pth"), str(own_root / "held_out"),
                 "--output-dir", str(predictions), "--threshold", "0", "--device", "cpu"]) == 0
    detections = [d for r in json.load(open(predictions / "predictions.json")) for d in r["detections"]]
    assert {(d["label"], d["category_id"], d["name"]) for d in detections} == {
        (0, 3, "apple"), (1, 17, "pear"), (2, 40, "kiwi")}

    # Evaluation: COCO results with our ids, and the per-category table with our names.
    metrics, results = tmp_path / "metrics.json", tmp_path / "results"
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", str(tuned / "checkpoint.pth"), "--json",
                 str(metrics), "--results-dir", str(results), *tiny_overrides, *own_overrides(own_root)]) == 0
    out = capsys.readouterr().out
    assert "category (id)" in out and "apple (3)" in out and "kiwi (40)" in out
    per_class = json.load(open(metrics))["per_class"]
    assert {name: row["id"] for name, row in per_class.items()} == {"apple": 3, "pear": 17, "kiwi": 40}
    assert {d["category_id"] for d in json.load(open(results / COCO_RESULTS_NAME))} == {3, 17, 40}


def test_weights_and_resume_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--weights", "a.pth", "--resume", "b.pth", "--output-dir", str(tmp_path)])
    assert "not allowed with argument" in capsys.readouterr().err
    from deformdetr.configs import load_config
    from deformdetr.engine.trainer import train

    with pytest.raises(ValueError, match="give one of them"):
        train(load_config("demo_synthetic", [f"output_dir={tmp_path}"]), resume="a.pth", weights="b.pth")


def test_weights_that_are_not_a_checkpoint_are_one_line(tmp_path, tiny_overrides, capsys):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(os.urandom(512))
    assert main(["train", "--weights", str(bad), "--output-dir", str(tmp_path / "run"), *tiny_overrides]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("deformdetr train: error")]
    assert len(lines) == 1 and "not a file written by torch.save" in lines[0]


def test_missing_data_paths_are_named(tmp_path, own_root, tiny_overrides, capsys):
    overrides = own_overrides(own_root) + [f"data.val_images={tmp_path / 'no_such_folder'}"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *tiny_overrides, *overrides]) == 2
    assert "no_such_folder" in capsys.readouterr().err
    missing_root = ["data.dataset=coco", f"data.root={tmp_path / 'no_root'}"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *tiny_overrides, *missing_root]) == 2
    assert "no_root" in capsys.readouterr().err


def test_annotations_of_images_that_are_missing_are_an_error_naming_them(tmp_path, own_root, tiny_overrides, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(own_root / "my_photos", photos)
    gone = sorted(photos.iterdir())[:2]
    for path in gone:
        path.unlink()
    overrides = own_overrides(own_root) + [f"data.train_images={photos}"]
    assert main(["train", "--output-dir", str(tmp_path / "run"), *tiny_overrides, *overrides]) == 2
    err = capsys.readouterr().err
    assert "lists 2 images that are not in" in err and gone[0].name in err and "skip_corrupt" in err


def test_fine_tuning_from_a_hugging_face_folder(tmp_path, own_root, tiny_overrides, capsys):
    pytest.importorskip("safetensors", reason="the Hugging Face format needs the [interop] extra (safetensors)")
    first = tmp_path / "first"
    assert main(["train", "--config", "demo_synthetic", "--output-dir", str(first), *tiny_overrides,
                 "train.epochs=1"]) == 0
    assert main(["convert", str(first / "checkpoint.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    tuned = tmp_path / "tuned"
    assert main(["train", "--config", "demo_synthetic", "--output-dir", str(tuned), "--weights", str(tmp_path / "hf"),
                 *tiny_overrides, *own_overrides(own_root), "train.epochs=1"]) == 0
    report = json.load(open(tuned / "weights.json"))
    assert report["reinitialised"] and all(k.startswith("class_embed") for k in report["reinitialised"])
    assert not report["unused"] and len(report["loaded"]) > 100
