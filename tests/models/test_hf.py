"""Hugging Face transformers' Deformable DETR format, both ways: folders that transformers'
save_pretrained writes (its own model, small, random weights, never downloaded) load into ours and
give transformers' outputs in all five variants; ours written as such a folder load in transformers
and give ours; round trips keep every weight; what cannot be read is a one-line error."""

import json
import os

import pytest
import torch

pytest.importorskip("safetensors", reason="the Hugging Face format needs the [interop] extra (safetensors)")
transformers = pytest.importorskip("transformers", reason="transformers (the [interop] extra) builds the references")

from deformdetr.models import deformable_detr, load_checkpoint  # noqa: E402
from deformdetr.models.checkpoint import CheckpointError, read_weights  # noqa: E402
from deformdetr.models import hf  # noqa: E402

SIZES = dict(d_model=64, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
             encoder_attention_heads=4, decoder_attention_heads=4, num_queries=20, two_stage_num_proposals=20,
             num_labels=5)
HF_VARIANTS = {
    "single_scale": dict(num_feature_levels=1),
    "single_scale_dc5": dict(num_feature_levels=1),  # dilated below, as timm's output_stride=16 does
    "multi_scale": {},
    "box_refine": dict(with_box_refine=True),
    "two_stage": dict(with_box_refine=True, two_stage=True),
}
OURS = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=20, num_classes=5, pretrained_backbone=False)


def transformers_model(variant: str):
    """transformers' own model with its own ResNet-18 (no timm), every weight perturbed so that
    no initial zero hides a wrong mapping."""
    settings = HF_VARIANTS[variant]
    stages = ["stage2", "stage3", "stage4"] if settings.get("num_feature_levels", 4) > 1 else ["stage4"]
    backbone = transformers.ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic",
                                         out_features=stages)
    config = transformers.DeformableDetrConfig(use_timm_backbone=False, backbone_config=backbone, **SIZES, **settings)
    model = transformers.DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name
                             else tensor + 0.05 * torch.randn_like(tensor))
    if variant == "single_scale_dc5":
        _dilate_last_stage(model.model.backbone.model.encoder.stages[3])
    return model


def _dilate_last_stage(stage) -> None:
    """What timm's output_stride=16 (transformers' dilation=True) does to the last stage: stride 1,
    and dilation 2 after its first block (torchvision's rule, and ours)."""
    stage.layers[0].layer[0].convolution.stride = (1, 1)
    stage.layers[0].shortcut.convolution.stride = (1, 1)
    for block in stage.layers[1:]:
        for conv in block.layer:
            conv.convolution.dilation, conv.convolution.padding = (2, 2), (2, 2)


def save_folder(model, folder, variant: str) -> str:
    """The folder save_pretrained writes; the dilated model as the hub's timm-backbone models are
    stored (timm's names, config use_timm_backbone + dilation), which is the only way transformers
    describes a dilated ResNet."""
    model.save_pretrained(folder)
    if variant == "single_scale_dc5":
        settings, _ = hf.settings_from_hf_config(json.loads(open(os.path.join(folder, "config.json")).read()), folder)
        safetensors = pytest.importorskip("safetensors.torch")
        weights = safetensors.load_file(os.path.join(folder, "model.safetensors"))
        ours = hf.state_from_hf(weights, settings, timm_backbone=False)
        safetensors.save_file(hf.state_to_hf(ours, timm_backbone=True), os.path.join(folder, "model.safetensors"))
        config = json.loads(open(os.path.join(folder, "config.json")).read())
        config.update(backbone_config=None, use_timm_backbone=True, backbone="resnet18", dilation=True)
        with open(os.path.join(folder, "config.json"), "w") as handle:
            json.dump(config, handle)
    return str(folder)


def padded_batch():
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 70:] = True
    mask[1, :, 100:] = True
    return images.masked_fill(mask[:, None], 0.0), mask


@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_a_transformers_folder_loads_and_gives_transformers_outputs(tmp_path, variant):
    reference = transformers_model(variant)
    folder = save_folder(reference, tmp_path / variant, variant)
    ours = load_checkpoint(folder).eval()
    assert ours.config.dilation == (variant == "single_scale_dc5")
    images, mask = padded_batch()
    with torch.no_grad():
        expected = reference(pixel_values=images, pixel_mask=(~mask).long())
        got = ours(images, mask)
    torch.testing.assert_close(got["pred_logits"], expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got["pred_boxes"], expected.pred_boxes, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["single_scale", "multi_scale", "box_refine", "two_stage"])
def test_ours_written_as_hf_loads_in_transformers_and_gives_our_outputs(tmp_path, variant):
    ours = _perturbed(deformable_detr(variant, **OURS)).eval()
    hf.write_hf(ours, str(tmp_path), class_names={1: "cat"})
    theirs = transformers.DeformableDetrForObjectDetection.from_pretrained(str(tmp_path)).eval()
    assert theirs.config.id2label[1] == "cat"
    images, mask = padded_batch()
    with torch.no_grad():
        expected = ours(images, mask)
        got = theirs(pixel_values=images, pixel_mask=(~mask).long())
    torch.testing.assert_close(got.logits, expected["pred_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pred_boxes, expected["pred_boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", list(HF_VARIANTS))
def test_ours_to_hf_and_back_keeps_every_weight_bitwise(tmp_path, variant):
    ours = _perturbed(deformable_detr(variant, **OURS))
    hf.write_hf(ours, str(tmp_path))
    back = load_checkpoint(str(tmp_path))
    assert back.config == ours.config
    expected, got = ours.state_dict(), back.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _perturbed(model):
    """Independent heads differ per layer, as in a trained model (initially they are copies)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_a_folder_with_pytorch_model_bin_loads_the_same(tmp_path):
    from safetensors.torch import load_file

    folder = save_folder(transformers_model("box_refine"), tmp_path, "box_refine")
    expected = load_checkpoint(folder).state_dict()
    torch.save(load_file(os.path.join(folder, "model.safetensors")), os.path.join(folder, "pytorch_model.bin"))
    os.remove(os.path.join(folder, "model.safetensors"))
    got = load_checkpoint(folder).state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_class_names_come_from_id2label(tmp_path):
    folder = save_folder(transformers_model("single_scale"), tmp_path, "single_scale")
    assert read_weights(folder)["class_names"] == {i: f"LABEL_{i}" for i in range(5)}


def test_a_folder_that_is_not_a_transformers_model_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hugging Face model: it has no config.json"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(CheckpointError, match="'detr' model, not transformers' Deformable DETR"):
        load_checkpoint(str(tmp_path))


def test_a_backbone_we_do_not_have_is_named(tmp_path):
    folder = save_folder(transformers_model("single_scale"), tmp_path, "single_scale")
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(backbone_config=None, use_timm_backbone=True, backbone="resnet50d")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="timm backbone 'resnet50d' is not one deformdetr has"):
        load_checkpoint(folder)


def test_a_hub_id_that_cannot_be_fetched_is_a_one_line_error(monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="hub ids need huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nto load the file")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match=r"could not fetch 'SenseTime/deformable-detr' from the Hugging Face hub "
                                              r"\(OSError: We couldn't connect") as error:
        load_checkpoint("SenseTime/deformable-detr")
    assert "\n" not in str(error.value)


def test_a_missing_local_checkpoint_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint("outputs/checkpoint.pth")
