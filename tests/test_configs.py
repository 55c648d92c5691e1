"""Presets, overrides and their checks."""

import pytest

from deformdetr.configs import PRESETS, ConfigError, load_config


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg["task"] in ("detection", "mono3d") and cfg["output_dir"]


@pytest.mark.parametrize(
    "preset,levels,dilation,refine,two_stage",
    [
        ("deformable_detr_single_scale", 1, False, False, False),
        ("deformable_detr_single_scale_dc5", 1, True, False, False),
        ("deformable_detr_multi_scale", 4, False, False, False),
        ("deformable_detr_box_refine", 4, False, True, False),
        ("deformable_detr_two_stage", 4, False, True, True),
    ],
)
def test_official_variant_presets_build_their_variant(preset, levels, dilation, refine, two_stage):
    from deformdetr.engine.tasks.detection import DetectionTask

    cfg = load_config(preset, ["model.enc_layers=1", "model.dec_layers=1"])
    model, _ = DetectionTask(cfg).build_model(load_pretrained=False)
    c = model.config
    assert (c.num_feature_levels, c.dilation, c.with_box_refine, c.two_stage) == (levels, dilation, refine, two_stage)
    assert (cfg["train"]["lr"], cfg["train"]["lr_backbone"], cfg["train"]["epochs"], cfg["train"]["lr_drop"]) == (
        2e-4, 2e-5, 50, 40)


def test_model_settings_override_the_variant():
    from deformdetr.engine.tasks.detection import DetectionTask

    cfg = load_config("demo_synthetic", ["model.variant=box_refine", "model.num_feature_levels=3"])
    model, _ = DetectionTask(cfg).build_model(load_pretrained=False)
    assert model.config.num_feature_levels == 3 and model.config.with_box_refine


def test_overrides_are_typed_by_the_schema():
    cfg = load_config("demo_synthetic", ["train.lr=1e-3", "train.epochs=3", "train.amp=off",
                                         "model.two_stage=true", "data.scales=[32, 48]", "train.lr_backbone=0"])
    assert cfg["train"]["lr"] == 1e-3 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["amp"] == "off"
    assert cfg["model"]["two_stage"] is True and cfg["data"]["scales"] == [32, 48]
    assert cfg["train"]["lr_backbone"] == 0.0


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lr=fast", "must be a number"),
        ("train.nope=1", "unknown config key 'train.nope'"),
        ("train=1", "is a section"),
        ("train.amp=fp8", "train.amp must be"),
        ("model.variant=three_stage", "model.variant must be one of"),
        ("train.epochs=0", "positive integer"),
        ("lr", "section.key=value"),
        ("train.eval_every=0", "train.eval_every must be a positive integer"),
        ("data.num_workers=-1", "data.num_workers must be 0"),
        ("train.max_minutes=abc", "'train.max_minutes' must be a number"),
        ("train.max_minutes=-1", "train.max_minutes must be 0 or more"),
        ("model.dilation=maybe", "'model.dilation' must be true or false"),
        ("model.two_stage=1", "'model.two_stage' must be true or false"),
        ("train.lr=true", "'train.lr' must be a number"),
        ("model.num_queries=1.5", "'model.num_queries' must be a whole number"),
        ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
        ("train.scales=[1,", "unknown config key|not a YAML value"),
        ("data.scales=[1,", "not a YAML value"),
    ],
)
def test_bad_overrides_raise_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("demo_synthetic", [override])


def test_yaml_files_and_bases(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo_synthetic\ntrain:\n  lr: 1e-4\n")
    cfg = load_config(str(path))
    assert cfg["train"]["lr"] == 1e-4 and cfg["model"]["backbone"] == "resnet18"
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(loop))


def test_nullable_keys_take_values_of_their_type():
    cfg = load_config("demo_synthetic", ["model.num_feature_levels=2.0", "train.max_minutes=3",
                                         "model.dilation=true", "model.pretrained_backbone=/w.pth"])
    assert cfg["model"]["num_feature_levels"] == 2 and isinstance(cfg["model"]["num_feature_levels"], int)
    assert cfg["train"]["max_minutes"] == 3.0 and cfg["model"]["dilation"] is True
    assert cfg["model"]["pretrained_backbone"] == "/w.pth"


def test_a_relative_base_is_found_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "common.yaml").write_text("base: demo_synthetic\ntrain:\n  epochs: 7\n")
    (tmp_path / "configs" / "run.yaml").write_text("base: common.yaml\ntrain:\n  lr: 1.0e-3\n")
    monkeypatch.chdir(tmp_path)  # the working folder does not hold common.yaml
    cfg = load_config(str(tmp_path / "configs" / "run.yaml"))
    assert cfg["train"]["epochs"] == 7 and cfg["train"]["lr"] == 1e-3


def test_a_broken_yaml_file_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(str(path))
