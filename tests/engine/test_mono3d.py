"""MonoDETR through the engine: synthetic KITTI data -> train -> KITTI evaluation, via the CLI."""

import json

import pytest

from deformdetr.cli import main
from deformdetr.data import generate_synthetic_kitti
from deformdetr.models.checkpoint import read_checkpoint
from deformdetr.eval.kitti import read_kitti_result_dir

TINY_MONO = ["data.num_workers=0", "train.batch_size=4", "train.epochs=1", "device=cpu",
             "model.hidden_dim=64", "model.enc_layers=1", "model.dec_layers=1", "model.num_queries=6"]


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti")
    generate_synthetic_kitti(root, num_train=8, num_val=4, seed=3)
    return str(root)


def test_monodetr_trains_and_evaluates_on_synthetic_kitti(tmp_path, kitti_root):
    out = tmp_path / "mono"
    overrides = TINY_MONO + [f"data.root={kitti_root}"]
    assert main(["train", "--config", "monodetr_synthetic", "--output-dir", str(out), *overrides]) == 0
    record = json.loads(open(out / "log.jsonl").readline())
    assert "test_Car_3d_moderate_R40" in record and "test_Pedestrian_bev_hard_R40" in record
    assert 0.0 <= record["test_Car_3d_moderate_R40"] <= 100.0
    checkpoint = out / "checkpoint.pth"
    assert read_checkpoint(str(checkpoint))["config"]["task"] == "mono3d"
    metrics, results = tmp_path / "metrics.json", tmp_path / "results"
    assert main(["eval", "--config", "monodetr_synthetic", "--checkpoint", str(checkpoint), "--json", str(metrics),
                 "--results-dir", str(results), *overrides]) == 0
    assert json.load(open(metrics))["Car_3d_moderate_R40"] == pytest.approx(record["test_Car_3d_moderate_R40"])
    # One KITTI result file per validation image (ids 8..11), readable by the evaluation's reader.
    assert sorted(p.name for p in results.iterdir()) == [f"{i:06d}.txt" for i in range(8, 12)]
    annotations = read_kitti_result_dir(str(results), range(8, 12))
    assert all(set(a["name"]) <= {"Car", "Pedestrian", "Cyclist"} for a in annotations)


def test_mono3d_config_rejects_detection_keys():
    from deformdetr.configs import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.variant"):
        load_config("monodetr_synthetic", ["model.variant=two_stage"])


def test_monodetr_training_loss_falls_on_synthetic_kitti(tmp_path, kitti_root):
    out = tmp_path / "falls"
    overrides = TINY_MONO + [f"data.root={kitti_root}", "train.epochs=5", "train.lr=1e-3",
                             "train.eval_every=100", "data.random_crop=0", "data.random_flip=0"]
    assert main(["train", "--config", "monodetr_synthetic", "--output-dir", str(out), *overrides]) == 0
    losses = [json.loads(line)["train_loss"] for line in open(out / "log.jsonl")]
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]


def test_monodetr_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, kitti_root):
    import torch

    overrides = [o for o in TINY_MONO if not o.startswith("train.epochs")] + [
        f"data.root={kitti_root}", "train.decay_list=[1]", "train.eval_every=5"]

    def run(name, epochs, *extra):
        args = ["train", "--config", "monodetr_synthetic", "--output-dir", str(tmp_path / name), *extra]
        assert main([*args, *overrides, f"train.epochs={epochs}"]) == 0
        return read_checkpoint(str(tmp_path / name / "checkpoint.pth"))

    straight = run("straight", 2)
    run("resumed", 1)
    resumed = run("resumed", 2, "--resume", str(tmp_path / "resumed" / "checkpoint.pth"))
    assert resumed["epoch"] == straight["epoch"] == 1
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
