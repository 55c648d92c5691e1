"""The deformdetr command line."""

import os

import pytest

from deformdetr.cli import BENCHMARKS, main


def test_info_reports_the_build(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "deformdetr 0.1.0" in out and "CUDA kernels compiled" in out


@pytest.mark.parametrize("driver,too_old", [(12040, True), (13000, False), (0, False)])
def test_info_says_which_driver_the_cuda_kernels_need(capsys, monkeypatch, driver, too_old):
    from deformdetr._native import _C

    if not _C.cuda_compiled:
        pytest.skip("a CPU-only build: no CUDA runtime, nothing asked of the driver")
    monkeypatch.setattr(_C, "cuda_runtime_version", 13000)
    monkeypatch.setattr(_C, "cuda_minimum_driver_branch", 580)
    monkeypatch.setattr(_C, "cuda_driver_version", lambda: driver)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CUDA runtime of the kernels: 13.0" in out and "R580 or newer" in out
    assert ("too old" in out and "/usr/local/cuda-12.4/bin/nvcc" in out) == too_old


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


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--checkpoint", "c.pth", "x.png", "--threshold", "5"],
        ["predict", "--checkpoint", "c.pth", "x.png", "--threshold", "nan"],
        ["demo", "--minutes", "-5"],
        ["demo", "--threshold", "-0.1"],
        ["bench", "attention", "--repeat", "0"],
        ["bench", "matcher", "--batch", "0"],
        ["bench", "attention", "--dtype", "float16", "--device", "cpu"],
    ],
)
def test_out_of_range_arguments_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_bench_options_without_a_name_run_the_attention_benchmark(monkeypatch):
    import deformdetr.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_bench", lambda args: seen.update(what=args.what, rest=args.rest) or 0)
    assert main(["bench", "--batch", "2"]) == 0
    assert seen == {"what": "attention", "rest": ["--batch", "2"]}


def test_bench_help_lists_every_benchmark_and_each_name_has_a_runnable_module(capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    listed = capsys.readouterr().out.split("benchmarks:")[1]
    assert exit_info.value.code == 0
    for name, (module, summary) in BENCHMARKS.items():
        assert f"{name}  " in listed and summary in listed
        assert callable(importlib.import_module(f"deformdetr.bench.{module}").main)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmark_describes_itself_in_whole_sentences(name, capsys):
    import importlib

    first_paragraph = importlib.import_module(f"deformdetr.bench.{BENCHMARKS[name][0]}").__doc__.split("\n\n")[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", name, "--help"])
    assert exit_info.value.code == 0 and first_paragraph.rstrip().endswith(".")
    assert " ".join(first_paragraph.split()) in " ".join(capsys.readouterr().out.split())


def test_bench_runs_the_named_benchmark_with_its_options(monkeypatch):
    import deformdetr.bench.training as training

    seen = []
    monkeypatch.setattr(training, "main", seen.append)
    assert main(["bench", "training", "--steps", "3"]) == 0
    assert seen == [["--steps", "3"]]


def test_user_errors_are_one_message_and_interrupts_point_at_the_checkpoint(tmp_path, monkeypatch, capsys):
    import deformdetr.engine.trainer as trainer

    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert main(["predict", "--checkpoint", str(text), str(text)]) == 2
    assert "could not read checkpoint" in capsys.readouterr().err

    def interrupted(cfg, **kwargs):
        os.makedirs(cfg["output_dir"], exist_ok=True)
        open(os.path.join(cfg["output_dir"], "checkpoint.pth"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 130
    assert f"--resume {tmp_path / 'run' / 'checkpoint.pth'}" in capsys.readouterr().err


def test_mono3d_metrics_are_printed_as_kitti_ap():
    from deformdetr.engine.tasks.mono3d import Mono3DTask

    out = Mono3DTask.format_metrics(None, {"Car_3d_moderate_R40": 12.5, "Car_bev_moderate_R40": 20.25,
                                           "Car_3d_easy_R40": 30.0})
    assert "KITTI AP|R40 moderate" in out and "Car_3d 12.50" in out and "Car_bev 20.25" in out
    assert "easy" not in out


def test_image_folders_list_every_image_type_but_not_earlier_drawings(tmp_path):
    import json

    from PIL import Image

    from deformdetr.engine.predict import image_files

    for name in ("a.png", "b.tif", "c.gif", "a_1.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "predictions.json").write_text(json.dumps([{"image": str(tmp_path / "a.png"),
                                                           "png": str(tmp_path / "a_1.png")}]))
    names = [os.path.basename(p) for p in image_files([str(tmp_path)])]
    assert names == ["a.png", "b.tif", "c.gif"]


def _error_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if not line.startswith("(set DEFORMDETR")]


def test_an_unknown_task_is_one_line_naming_the_registered_tasks(tmp_path, capsys):
    checkpoint = str(tmp_path / "c.pth")
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", checkpoint, "task=segmentation"]) == 2
    assert _error_lines(capsys) == ["deformdetr eval: error: unknown task 'segmentation'; the tasks are: "
                                    "detection, mono3d"]
    config = tmp_path / "segmentation.yaml"
    config.write_text("task: segmentation\n")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert _error_lines(capsys) == ["deformdetr train: error: unknown task 'segmentation'; the tasks are: "
                                    "detection, mono3d"]
    # a registered task cannot be switched by an override: the preset's schema would not fit it
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", checkpoint, "task=mono3d"]) == 2
    assert "use a mono3d preset" in capsys.readouterr().err


def test_files_that_are_not_checkpoints_are_one_line_everywhere(tmp_path, capsys):
    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(4096))
    for argv in (["predict", "--checkpoint", str(bad), str(bad)],
                 ["eval", "--config", "demo_synthetic", "--checkpoint", str(bad)],
                 ["train", "--resume", str(bad), "--output-dir", str(tmp_path / "run")]):
        assert main(argv) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and str(bad) in lines[0] and "not a file written by torch.save" in lines[0]
        assert "weights_only" not in lines[0]


def test_warnings_print_as_one_line_each(tmp_path, capsys):
    import torch
    from PIL import Image

    from deformdetr.models import deformable_detr

    model = deformable_detr("multi_scale", num_classes=3, backbone="resnet18", hidden_dim=64, nheads=2,
                            enc_layers=1, dec_layers=1, dim_feedforward=32, num_queries=4)
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "args": dict(vars(model.config))}, path)
    Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    missing = tmp_path / "missing.png"
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "ok.png"), str(missing), "--output-dir",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "it/s]" not in line and line.strip()]
    warning = [line for line in err if "warning:" in line]
    assert warning == [f"deformdetr: warning: predict: skipping cannot load image {str(missing)!r}: file not found"]
    assert not any("warnings.warn" in line or ".py:" in line for line in err)


def test_what_one_process_of_a_distributed_run_says_is_said_once(tmp_path, monkeypatch, capsys):
    import deformdetr.engine.distributed as dist
    import deformdetr.engine.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda cfg, **kwargs: {"eval": {"AP": 0.5, "AP50": 0.7},
                                                                  "minutes": 1.0, "output_dir": "out"})
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(dist, "rank", lambda: 0)
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["COCO box AP 0.500, AP50 0.700", "outputs in out (1.0 min)"]


class _DemoTask:
    """What `deformdetr demo` asks of a trained task, recording the thresholds it draws from."""

    headline = "AP"

    def __init__(self):
        self.drawn = []

    def validation_images(self):
        return ["a.png"], {}

    def predict_images(self, model, images, output_dir, device, threshold, categories):
        self.drawn.append(threshold)

    def format_metrics(self, metrics):
        return "metrics"


def test_the_2d_demo_draws_from_its_own_threshold(tmp_path, monkeypatch):
    import deformdetr.engine.predict as predict
    import deformdetr.engine.trainer as trainer
    from deformdetr.engine.tasks import task_class

    task = _DemoTask()
    monkeypatch.setattr(trainer, "train", lambda cfg, **kwargs: {"eval": {"AP": 0.5}})
    monkeypatch.setattr(predict, "load_for_prediction", lambda path: (task, None, None))
    for extra, expected in (([], task_class("detection").demo_threshold), (["--threshold", "0.7"], 0.7)):
        assert main(["demo", "--output-dir", str(tmp_path), *extra]) == 0
        assert task.drawn.pop() == expected


def test_the_demo_names_an_earlier_better_epoch_and_its_checkpoint(tmp_path, monkeypatch, capsys):
    import deformdetr.engine.predict as predict
    import deformdetr.engine.trainer as trainer

    monkeypatch.setattr(predict, "load_for_prediction", lambda path: (_DemoTask(), None, None))
    for best, said in (({"metric": "AP", "value": 0.65, "epoch": 13}, True),
                       ({"metric": "AP", "value": 0.584, "epoch": 14}, False), (None, False)):
        monkeypatch.setattr(trainer, "train", lambda cfg, **kwargs: {"eval": {"AP": 0.584}, "best": best})
        assert main(["demo", "--output-dir", str(tmp_path)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert "AP 0.584" in last
        expected = f" (best 0.650 at epoch 13: {tmp_path / 'checkpoint_best.pth'})"
        assert (expected in last) is said and ("best" in last) is said


@pytest.mark.slow
def test_the_3d_demo_trains_evaluates_and_draws(tmp_path, capsys):
    """`demo --task mono3d`: the task's demo preset (here shrunk to seconds), its headline metric on
    the last line, 3D pictures of validation images."""
    out = tmp_path / "demo3d"
    tiny = ["data.synthetic.image_size=[32,96]", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
            "data.resolution=[96,32]", "data.num_workers=0", "device=cpu", "train.batch_size=2", "train.epochs=1",
            "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=1",
            "model.num_queries=4", "model.group_num=1", "model.dim_feedforward=32"]
    assert main(["demo", "--task", "mono3d", "--output-dir", str(out), "--num-images", "2", *tiny]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("deformdetr demo: 3D (MonoDETR) on synthetic data (demo_monodetr_synthetic)")
    assert lines[-1].startswith("demo done in") and ": Car_3d_moderate_R40 " in lines[-1]
    assert sorted(p.name for p in (out / "predictions").glob("*.png")) == ["000004.png", "000005.png"]
    assert sorted(p.name for p in (out / "predictions" / "kitti_results").iterdir()) == ["000004.txt", "000005.txt"]


def test_bench_model_times_the_model_and_accounts_for_its_parts(capsys):
    assert main(["bench", "model", "--size", "64x96", "--variant", "single_scale", "--repeat", "1",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| inference |" in out and "| training step |" in out
    assert main(["bench", "model", "--size", "64x96", "--repeat", "1", "--threads", "1", "--parts"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"backbone", "input projections", "encoder", "decoder", "heads"} <= set(rows)
    assert all("nan" not in rows[part] for part in ("backbone", "input projections", "encoder", "decoder", "heads"))
    # Then the training step's table (same part names, later lines), with the rest of a step.
    assert "| part (training step) |" in out and {"other", "loss", "optimizer step (fused AdamW)"} <= set(rows)
    assert main(["bench", "model", "--size", "64x96", "--repeat", "1", "--threads", "1", "--ops", "3"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row[0].strip() for row in rows][0] == "operator (inference)" and rows[-1][0].strip() == "(all operators)"
    ops = rows[1:-1]
    times = [float(row[2]) for row in ops]
    assert len(ops) == 3 and times == sorted(times, reverse=True) and sum(times) <= float(rows[-1][2])
    assert all(row[0].strip() and int(row[1]) >= 1 for row in ops)


def test_convert_to_hf_then_predict_and_eval_take_the_folder(tmp_path, capsys):
    """A Hugging Face folder serves predict (its id2label names the detections) and eval (its
    config.json gives the model, whatever the preset)."""
    import json

    import torch
    from PIL import Image

    from deformdetr.data import generate_synthetic_coco
    from deformdetr.models import deformable_detr

    pytest.importorskip("safetensors", reason="the Hugging Face format needs the [interop] extra (safetensors)")
    names = {i: f"shape{i}" for i in range(7)}  # the synthetic set's ids run to 6
    model = deformable_detr("box_refine", num_classes=7, backbone="resnet18", hidden_dim=64, nheads=2,
                            enc_layers=1, dec_layers=2, dim_feedforward=32, num_queries=6, pretrained_backbone=False)
    ours = tmp_path / "ours.pth"
    torch.save({"model": model.state_dict(), "args": vars(model.config).copy(),
                "class_names": names}, ours)
    folder = tmp_path / "hf"
    assert main(["convert", str(ours), str(folder), "--to", "hf"]) == 0
    assert f"a Hugging Face transformers folder (config.json, model.safetensors) in {folder}" in capsys.readouterr().out
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(folder), str(tmp_path / "red.png"), "--output-dir", str(out),
                 "--threshold", "0", "--device", "cpu"]) == 0
    found = {d["name"] for d in json.load(open(out / "predictions.json"))[0]["detections"]}
    assert found == set(names.values())
    generate_synthetic_coco(tmp_path / "data", num_train=2, num_val=2, image_size=48, seed=1)
    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--config", "demo_synthetic", "--checkpoint", str(folder), "--json", str(metrics),
                 f"data.root={tmp_path / 'data'}", "data.val_size=48", "data.max_size=64", "data.num_workers=0",
                 "train.batch_size=2", "device=cpu"]) == 0
    assert "AP50" in json.load(open(metrics))


def test_a_folder_that_is_not_a_hf_model_is_one_line(tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tmp_path), str(tmp_path)]) == 2
    assert "is a folder but not a Hugging Face model: it has no config.json" in capsys.readouterr().err
