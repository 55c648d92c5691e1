"""Model checkpoints: reading files of every layout, one-line errors for files that are not
checkpoints, the weight report, and the one loader for both families."""

import argparse
import os
import warnings

import pytest
import torch

from deformdetr.models import deformable_detr, load_checkpoint, monodetr, read_checkpoint
from deformdetr.models.checkpoint import CheckpointError, family_of, load_weights, model_state_of

SMALL_DETR = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2,
                  dim_feedforward=64, num_queries=12, pretrained_backbone=False)
SMALL_MONO = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2,
                  dim_feedforward=64, num_queries=6, group_num=2, depth_encoder_nheads=4,
                  depth_encoder_dim_feedforward=64, num_depth_bins=8)


def test_official_checkpoints_with_namespace_args_are_readable(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=2e-4)}, path)
    assert read_checkpoint(str(path))["args"].lr == 2e-4


def _damaged_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, good)
    files = {
        "truncated": good.read_bytes()[:100],
        "random bytes": os.urandom(4096),
        "empty": b"",
        "text": b"not a checkpoint\n",
    }
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    garbled = bytearray(legacy.read_bytes())
    garbled[30:40] = b"x" * 10
    files["garbled pickle"] = bytes(garbled)
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / (name.replace(" ", "_") + ".pth")
        paths[name].write_bytes(data)
    return paths


def test_files_that_are_not_checkpoints_get_one_line_that_never_advises_unsafe_loading(tmp_path):
    for kind, path in _damaged_files(tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            read_checkpoint(str(path))
        message = str(error.value)
        assert "\n" not in message, kind
        assert str(path) in message and "torch.save" in message, kind
        assert "weights_only" not in message, kind


class _Arbitrary:
    pass


def test_a_file_holding_python_objects_is_refused_by_name(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match=r"_Arbitrary.*without running code") as error:
        read_checkpoint(str(path))
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_missing_checkpoints_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(str(tmp_path / "missing.pth"))


def test_weights_are_found_in_every_layout():
    weights = {"w": torch.zeros(1)}
    for checkpoint in ({"model": weights}, {"model_state": weights}, weights):
        assert model_state_of(checkpoint, "x") is weights
    with pytest.raises(CheckpointError, match="holds no model weights"):
        model_state_of({"epoch": 3}, "x")


def test_the_weight_report_names_what_was_loaded_reinitialised_and_unused():
    torch.manual_seed(0)
    source = deformable_detr("multi_scale", num_classes=5, **SMALL_DETR)
    target = deformable_detr("multi_scale", num_classes=9, **SMALL_DETR)
    state = dict(source.state_dict(), extra_weight=torch.zeros(2))
    with pytest.raises(CheckpointError, match=r"1 unexpected .*extra_weight.*of another shape.*class_embed"):
        load_weights(target, state, "f.pth", strict=True)
    with pytest.warns(UserWarning, match="keep their initialisation"):
        report = load_weights(target, state, "f.pth", strict=False)
    assert report.unused == ["extra_weight"]
    heads = {k for k in target.state_dict() if k.startswith("class_embed.")}  # one per decoder layer
    assert set(report.reinitialised) == heads and len(heads) == 4
    assert len(report.loaded) + len(report.reinitialised) == len(target.state_dict())
    assert torch.equal(target.transformer.level_embed, source.transformer.level_embed)
    assert "re-initialised" in report.summary() and "1 unused" in report.summary()


def test_one_loader_builds_either_family_from_our_checkpoints(tmp_path):
    torch.manual_seed(0)
    for model in (deformable_detr("box_refine", num_classes=5, **SMALL_DETR), monodetr(num_classes=3, **SMALL_MONO)):
        path = tmp_path / "model.pth"
        torch.save({"model": model.state_dict(), "args": dict(vars(model.config))}, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # args say everything: nothing assumed
            loaded = load_checkpoint(str(path))
        assert type(loaded) is type(model) and loaded.config == model.config
        assert family_of(model.state_dict()).config_class is type(model.config)


def test_weights_of_no_known_detector_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="belong to no detector deformdetr knows"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="not a monodetr state dict"):
        load_checkpoint(str(path), family="monodetr")
