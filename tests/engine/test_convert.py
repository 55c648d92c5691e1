"""deformdetr convert: ours -> official -> ours and ours -> Hugging Face -> ours keep every weight
and setting; the official layout is the one the official code saves."""

import argparse

import pytest
import torch

from deformdetr.engine.checkpoint import save_atomic
from deformdetr.engine.convert import convert_checkpoint
from deformdetr.models import deformable_detr, load_checkpoint, monodetr, read_checkpoint

SMALL_DETR = dict(num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2,
                  dim_feedforward=64, num_queries=12, pretrained_backbone=False)
SMALL_MONO = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
                  num_queries=6, group_num=2, depth_encoder_nheads=4, depth_encoder_dim_feedforward=64,
                  num_depth_bins=8)


def saved(model, path, class_names=None):
    """A checkpoint of the model: weights, settings (as args) and class names."""
    save_atomic({"model": model.state_dict(), "args": vars(model.config).copy(), "class_names": class_names or {}},
                str(path))
    return str(path)


def assert_same_weights(got, expected):
    got, expected = got.state_dict(), expected.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("variant", ["single_scale_dc5", "two_stage"])
def test_ours_to_official_and_back(tmp_path, variant):
    model = deformable_detr(variant, **SMALL_DETR)
    official = tmp_path / "official.pth"
    convert_checkpoint(saved(model, tmp_path / "ours.pth"), str(official), "official")
    checkpoint = read_checkpoint(str(official))
    assert set(checkpoint) == {"model", "args"} and isinstance(checkpoint["args"], argparse.Namespace)
    assert checkpoint["args"].with_box_refine == model.config.with_box_refine
    back = load_checkpoint(str(official), nheads=4)
    assert back.config == model.config
    assert_same_weights(back, model)


def test_monodetr_to_official_and_back(tmp_path):
    model = monodetr(**SMALL_MONO)
    official = tmp_path / "official.pth"
    convert_checkpoint(saved(model, tmp_path / "ours.pth"), str(official), "official")
    assert set(read_checkpoint(str(official))) == {"model_state"}
    assert_same_weights(load_checkpoint(str(official), nheads=4, depth_encoder_nheads=4, group_num=2), model)


def test_ours_to_hf_and_back_keeps_weights_and_class_names(tmp_path):
    pytest.importorskip("safetensors", reason="the Hugging Face format needs the [interop] extra (safetensors)")
    model = deformable_detr("box_refine", **SMALL_DETR)
    folder = tmp_path / "hf"
    convert_checkpoint(saved(model, tmp_path / "ours.pth", {1: "circle", 2: "square"}), str(folder), "hf")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert_same_weights(load_checkpoint(str(folder)), model)
    from deformdetr.models.checkpoint import read_weights

    assert read_weights(str(folder))["class_names"][2] == "square"


def test_monodetr_has_no_hf_format(tmp_path):
    pytest.importorskip("safetensors", reason="the Hugging Face format needs the [interop] extra (safetensors)")
    path = saved(monodetr(**SMALL_MONO), tmp_path / "mono.pth")
    with pytest.raises(ValueError, match="transformers has no MonoDETR"):
        convert_checkpoint(path, str(tmp_path / "hf"), "hf")
