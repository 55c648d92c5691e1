"""The deformdetr command line."""

import pytest

from deformdetr.cli import main


def test_info_reports_the_build(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "deformdetr 0.1.0" in out and "CUDA kernels compiled" in out


def test_bench_attention_prints_speedups(capsys, monkeypatch):
    # Shrink the standard shapes so the test stays fast; the code path is the real one.
    import deformdetr.bench.ms_deform_attn as bench

    monkeypatch.setattr(bench, "LEVELS", ((10, 12), (5, 6)))
    assert main(["bench", "attention", "--repeat", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("speedup") == 2 and "encoder Lq=S" in out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_bench_matcher_reports_agreement(capsys):
    args = ["bench", "matcher", "--batch", "2", "--queries", "20", "--classes", "5"]
    assert main(args + ["--repeats", "1", "--lsa-size", "30"]) == 0
    out = capsys.readouterr().out
    assert "same total cost: True" in out and "speed-up" in out


def test_predict_accepts_an_official_style_checkpoint(tmp_path):
    import argparse
    import dataclasses
    import json

    import torch
    from PIL import Image

    from deformdetr.models import deformable_detr

    model = deformable_detr("multi_scale", num_classes=5, backbone="resnet18", hidden_dim=64, nheads=2,
                            enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=4)
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(**dataclasses.asdict(model.config))}, path)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "red.png"), "--output-dir", str(out),
                 "--threshold", "0", "--device", "cpu"]) == 0
    record = json.load(open(out / "predictions.json"))[0]
    # threshold 0 keeps every (query, class) pair: 4 queries x 5 classes
    assert (record["width"], record["height"]) == (40, 30) and len(record["detections"]) == 20
