"""Training end to end: the CLI, exact resume, distributed runs, checkpoints that survive kills."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from deformdetr.cli import main
from deformdetr.configs import load_config
from deformdetr.models.checkpoint import read_checkpoint
from deformdetr.engine.trainer import train


def test_cli_train_eval_predict_end_to_end(tmp_path, tiny_overrides, synthetic_root, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "demo_synthetic", "--output-dir", str(out), *tiny_overrides]) == 0
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all("test_AP50" in r and "train_loss" in r for r in records)
    assert (out / "curves.png").stat().st_size > 0
    checkpoint = out / "checkpoint.pth"
    state = read_checkpoint(str(checkpoint))
    assert state["epoch"] == 1 and {"label": 1, "id": 1, "name": "circle"} in state["categories"]

    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", str(checkpoint), "--json", str(metrics),
                 *tiny_overrides]) == 0
    assert json.load(open(metrics))["AP50"] == pytest.approx(records[-1]["test_AP50"])

    predictions = tmp_path / "pred"
    val_images = os.path.join(synthetic_root, "val2017")
    assert main(["predict", "--checkpoint", str(checkpoint), val_images, "--output-dir", str(predictions),
                 "--threshold", "0", "--device", "cpu"]) == 0
    results = json.load(open(predictions / "predictions.json"))
    assert len(results) == 4 and all(os.path.exists(r["png"]) for r in results)
    assert all(len(r["detections"]) > 0 for r in results)


def test_resume_gives_the_parameters_of_an_uninterrupted_run(tmp_path, tiny_overrides):
    whole = load_config("demo_synthetic", tiny_overrides + [f"output_dir={tmp_path / 'whole'}", "train.eval_every=2"])
    train(whole, progress=False)
    # Stop after the first epoch (a time budget of 0 minutes), then resume for the second.
    first = load_config("demo_synthetic", tiny_overrides + [f"output_dir={tmp_path / 'split'}",
                                                            "train.max_minutes=0", "train.eval_every=2"])
    train(first, progress=False)
    assert read_checkpoint(str(tmp_path / "split" / "checkpoint.pth"))["epoch"] == 0
    rest = load_config("demo_synthetic", tiny_overrides + [f"output_dir={tmp_path / 'split'}", "train.eval_every=2"])
    train(rest, resume=str(tmp_path / "split" / "checkpoint.pth"), progress=False)
    a = read_checkpoint(str(tmp_path / "whole" / "checkpoint.pth"))
    b = read_checkpoint(str(tmp_path / "split" / "checkpoint.pth"))
    assert a["epoch"] == b["epoch"] == 1
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_train_compile_trains_and_evaluates_through_torch_compile_and_says_so(tmp_path, tiny_overrides, monkeypatch,
                                                                            capsys):
    compiled = []

    class Compiled(torch.nn.Module):  # what torch.compile returns: a module wrapping the model
        def __init__(self, module):
            super().__init__()
            self.module = module
            compiled.append(module)

        def forward(self, *inputs):
            return self.module(*inputs)

    monkeypatch.setattr(torch, "compile", Compiled)
    cfg = load_config("demo_synthetic", tiny_overrides + [f"output_dir={tmp_path}", "train.epochs=1",
                                                          "train.compile=true"])
    result = train(cfg, progress=False)
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "DeformableDETR"
    assert "test_AP50" in json.loads(open(tmp_path / "log.jsonl").readline()) and "AP" in result["eval"]
    assert "compiling the model with torch.compile; the first training step and evaluation" in capsys.readouterr().err


def test_bad_config_key_gives_a_clear_error(capsys):
    assert main(["train", "--config", "demo_synthetic", "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.lrr'" in err and "lr_backbone" in err
    assert main(["train", "--config", "no_such_preset"]) == 2
    assert "presets:" in capsys.readouterr().err


def _run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "deformdetr.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_killed_run_leaves_the_last_good_checkpoint_loadable(tmp_path, tiny_overrides):
    out = tmp_path / "killed"
    process = _run_cli(["train", "--config", "demo_synthetic", "--output-dir", str(out), *tiny_overrides,
                        "train.epochs=1000", "train.eval_every=1000"])
    checkpoint = out / "checkpoint.pth"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.2)
    assert checkpoint.exists(), process.communicate()[0][-2000:] if process.poll() is not None else "no checkpoint"
    time.sleep(1.0)  # well into later epochs and their checkpoint writes
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = read_checkpoint(str(checkpoint))
    assert state["epoch"] >= 0 and "model" in state


def _free_port() -> int:
    # A fixed port fails when another test run on the machine holds it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_gloo_ddp_run(tmp_path, tiny_overrides):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "deformdetr.cli", "train", "--config", "demo_synthetic", "--output-dir", str(out),
         *tiny_overrides, "train.epochs=1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(records) == 1 and "test_AP" in records[0]  # one log, written by rank 0 only
    assert read_checkpoint(str(out / "checkpoint.pth"))["epoch"] == 0


def _train_cli(out, overrides, *extra):
    return main(["train", "--config", "demo_synthetic", "--output-dir", str(out), *extra, *overrides])


def test_runs_are_not_replaced_or_corrupted_by_mistakes(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    one_epoch = [*tiny_overrides, "train.epochs=1"]
    assert _train_cli(out, one_epoch) == 0
    checkpoint = out / "checkpoint.pth"
    assert oct(checkpoint.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    record = json.loads(open(out / "log.jsonl").readline())
    assert {"train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou"} <= set(record)
    assert not any(key.endswith(("_0", "_enc")) for key in record)

    # A second fresh run into the same folder is refused; with --overwrite it starts a new log.
    capsys.readouterr()
    assert _train_cli(out, one_epoch) == 2
    assert "--resume" in capsys.readouterr().err
    assert _train_cli(out, one_epoch, "--overwrite") == 0
    assert [json.loads(line)["epoch"] for line in open(out / "log.jsonl")] == [0]

    # A resume that cannot work leaves the run's config.json as it was.
    config_before = (out / "config.json").read_text()
    capsys.readouterr()
    assert _train_cli(out, [*one_epoch, "model.hidden_dim=32"], "--resume", str(checkpoint)) == 2
    assert "do not fit the model" in capsys.readouterr().err
    assert (out / "config.json").read_text() == config_before

    # Weights alone are not a training checkpoint; they evaluate fine, with any preset's settings.
    weights = tmp_path / "weights.pth"
    torch.save(read_checkpoint(str(checkpoint))["model"], weights)
    assert _train_cli(tmp_path / "other", one_epoch, "--resume", str(weights)) == 2
    assert "not a training checkpoint" in capsys.readouterr().err
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", str(weights), *tiny_overrides]) == 0
    data_only = [o for o in tiny_overrides if not o.startswith("model.")]
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", str(checkpoint), *data_only]) == 0
    assert "using the model settings saved in" in capsys.readouterr().err

    # Resuming a finished run says so instead of silently doing nothing.
    assert _train_cli(out, one_epoch, "--resume", str(checkpoint)) == 0
    assert "nothing to train" in capsys.readouterr().err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_follows_a_changed_lr_drop(tmp_path, tiny_overrides):
    dropping = [*tiny_overrides, "train.lr_drop=1"]
    train(load_config("demo_synthetic", [*dropping, f"output_dir={tmp_path / 'a'}"]), progress=False)
    first = train(load_config("demo_synthetic", [*tiny_overrides, "train.epochs=1",
                                                 f"output_dir={tmp_path / 'b'}"]), progress=False)
    train(load_config("demo_synthetic", [*dropping, f"output_dir={tmp_path / 'b'}"]),
          resume=os.path.join(first["output_dir"], "checkpoint.pth"), progress=False)
    # Both runs trained epoch 0 at the base lr and epoch 1 at the dropped one: the same weights.
    states = [read_checkpoint(str(tmp_path / run / "checkpoint.pth"))["model"] for run in "ab"]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    lrs = [[json.loads(line)["lr"] for line in open(tmp_path / run / "log.jsonl")] for run in "ab"]
    assert lrs[0][1] == lrs[1][1] < lrs[0][0]  # the lr in effect after each epoch


def test_category_ids_beyond_num_classes_stop_before_training(tmp_path, tiny_overrides, capsys):
    assert _train_cli(tmp_path / "run", [*tiny_overrides, "model.num_classes=3"]) == 2
    assert "does not fit model.num_classes=3" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
