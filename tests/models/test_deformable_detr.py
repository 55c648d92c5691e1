"""Deformable DETR: the five variants build, run, train, save and load."""

import argparse
import dataclasses
import warnings

import pytest
import torch

from deformdetr.models import (
    VARIANTS,
    PostProcess,
    build_criterion,
    deformable_detr,
    load_checkpoint,
)
from deformdetr.models.deformable_detr import DeformableDETRConfig
from deformdetr.engine.tasks.base import to_device
from device_comparison import assert_close_to_cpu, in_float64

# Small but complete: every module of the official model is present, only narrower and shallower.
SMALL = dict(hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=12)


def small_model(variant, **overrides):
    return deformable_detr(variant, num_classes=5, **{**SMALL, **overrides})


def images():
    return [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]


def targets():
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def perturbed(model, scale=0.02):
    # The official init zeroes some layers (offsets, attention weights, the last box layer), which
    # blocks gradients at step 0; a small perturbation makes every path carry signal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_runs_forward_and_backward_and_every_trainable_parameter_gets_a_gradient(variant):
    model = perturbed(small_model(variant))
    model.train()
    out = model(images())
    assert out["pred_logits"].shape == (2, 12, 5)
    assert out["pred_boxes"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 1
    assert ("enc_outputs" in out) == (variant == "two_stage")
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    criterion = build_criterion(num_classes=5, dec_layers=2)
    losses = criterion(out, targets())
    criterion.total(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_backbone_freezing_follows_the_official_rule():
    model = small_model("multi_scale")
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(any(f"layer{i}" in n for i in (2, 3, 4)) for n in trainable)
    frozen = small_model("multi_scale", lr_backbone=0)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_heads_are_shared_without_refinement_and_independent_with_it():
    plain = small_model("multi_scale")
    assert plain.class_embed[0] is plain.class_embed[1]
    assert plain.transformer.decoder.bbox_embed is None
    refine = small_model("box_refine")
    assert refine.class_embed[0] is not refine.class_embed[1]
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed
    two_stage = small_model("two_stage")
    assert len(two_stage.class_embed) == 3 and two_stage.transformer.decoder.class_embed is two_stage.class_embed


def test_list_input_equals_padded_tensor_with_mask():
    model = small_model("multi_scale").eval()
    imgs = images()
    batch = torch.zeros(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    for i, img in enumerate(imgs):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
        mask[i, : img.shape[1], : img.shape[2]] = False
    with torch.no_grad():
        a = model(imgs)
        b = model(batch, mask)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"])
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])


@pytest.mark.parametrize("variant", ["single_scale_dc5", "two_stage"])
def test_checkpoint_round_trip_is_strict_and_exact(tmp_path, variant):
    model = small_model(variant).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    args = argparse.Namespace(**dataclasses.asdict(model.config))
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "args": args, "epoch": 3}, path)
    loaded = load_checkpoint(str(path)).eval()
    assert loaded.config.dilation == model.config.dilation
    assert loaded.config.two_stage == model.config.two_stage
    imgs = images()
    with torch.no_grad():
        a, b = model(imgs), loaded(imgs)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])


def test_load_checkpoint_infers_the_variant_from_keys_alone(tmp_path):
    model = small_model("box_refine")
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    config = load_checkpoint(str(path), nheads=4, dilation=False).config  # what keys cannot tell
    assert config.with_box_refine and not config.two_stage
    assert (config.num_classes, config.num_queries, config.dec_layers, config.hidden_dim) == (5, 12, 2, 64)


def test_load_checkpoint_rejects_weights_of_no_known_detector(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="belong to no detector deformdetr knows"):
        load_checkpoint(str(path))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="variant must be one of"):
        deformable_detr("three_stage")
    with pytest.raises(TypeError, match="unknown Deformable DETR setting"):
        deformable_detr("multi_scale", hidden_size=64)
    with pytest.raises(ValueError, match="requires with_box_refine"):
        deformable_detr("multi_scale", two_stage=True, **SMALL)
    with pytest.raises(ValueError, match="dec_layers must be at least 1"):
        deformable_detr("multi_scale", **{**SMALL, "dec_layers": 0})
    with pytest.raises(ValueError, match="hidden_dim must be a multiple of 32"):
        deformable_detr("multi_scale", **{**SMALL, "hidden_dim": 48})
    with pytest.raises(ValueError, match="divisible by nheads"):
        deformable_detr("multi_scale", **{**SMALL, "hidden_dim": 64, "nheads": 3})


def test_official_defaults():
    config = DeformableDETRConfig()
    assert (config.hidden_dim, config.nheads, config.enc_layers, config.dec_layers) == (256, 8, 6, 6)
    assert (config.dim_feedforward, config.num_queries, config.enc_n_points, config.dec_n_points) == (1024, 300, 4, 4)
    assert config.num_feature_levels == 4 and config.dropout == 0.1 and config.backbone == "resnet50"


def test_loss_falls_when_overfitting_two_images():
    torch.manual_seed(0)
    model = small_model("box_refine", lr_backbone=0, dropout=0.0)
    criterion = build_criterion(num_classes=5, dec_layers=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    imgs, tgts = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)], targets()
    history = []
    for _ in range(30):
        loss = criterion.total(criterion(model(imgs), tgts))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) / 3 < 0.5 * sum(history[:3]) / 3


def test_postprocess_picks_top_scores_and_scales_boxes():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 0] = 1.0  # second: query 0, class 0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    result = PostProcess(num_select=2)({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    assert result["labels"].tolist() == [1, 0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 1.0])))
    torch.testing.assert_close(result["boxes"], torch.tensor([[0.0, 50.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]]))
    everything = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    assert everything["scores"].shape == (6,)  # fewer than 100 (query, class) pairs
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([100, 200]))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
def test_small_backbones_build_run_and_round_trip(tmp_path, backbone):
    model = small_model("multi_scale", backbone=backbone).eval()
    assert model.backbone[0].num_channels == [128, 256, 512]
    path = tmp_path / "small.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = load_checkpoint(str(path), nheads=4, dilation=False).eval()
    assert loaded.config.backbone == backbone
    imgs = images()
    with torch.no_grad():
        assert torch.equal(model(imgs)["pred_boxes"], loaded(imgs)["pred_boxes"])


def test_settings_a_state_dict_cannot_tell_are_assumed_aloud(tmp_path):
    model = small_model("two_stage").eval()  # nheads=4, 12 queries: not the official defaults
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    with pytest.warns(UserWarning, match=r"records no args.*nheads=8.*dilation=False.*num_queries=300"):
        load_checkpoint(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything given: nothing assumed, nothing to warn about
        loaded = load_checkpoint(str(path), nheads=4, dilation=False, num_queries=12).eval()
    imgs = images()
    with torch.no_grad():
        assert torch.equal(model(imgs)["pred_boxes"], loaded(imgs)["pred_boxes"])


def test_fine_tuning_loads_what_fits_and_names_the_rest(tmp_path):
    model = small_model("multi_scale")
    path = tmp_path / "weights.pth"
    headless = {k: v for k, v in model.state_dict().items() if not k.startswith("class_embed")}
    torch.save({"model": headless}, path)
    with pytest.warns(UserWarning, match="keep their initialisation.*class_embed"):
        tuned = load_checkpoint(str(path), strict=False, num_classes=7, nheads=4, dilation=False)
    assert tuned.class_embed[0].out_features == 7
    assert torch.equal(tuned.transformer.level_embed, model.transformer.level_embed)
    torch.save({"model": model.state_dict()}, path)  # the old head is there, of another shape
    with pytest.warns(UserWarning, match="keep their initialisation.*class_embed"):
        tuned = load_checkpoint(str(path), strict=False, num_classes=7, nheads=4, dilation=False)
    assert tuned.class_embed[0].out_features == 7
    with pytest.raises(ValueError, match="no 'class_embed.0.weight' to tell num_classes"):
        torch.save({"model": headless}, path)
        load_checkpoint(str(path), nheads=4, dilation=False)


@pytest.mark.parametrize(
    "make_input,error,match",
    [
        (lambda x: ((x * 255).to(torch.uint8), None), TypeError, "must be floating point"),
        (lambda x: (x[:, :1], None), ValueError, r"\(B, 3, H, W\) batch"),
        (lambda x: (x.double(), None), TypeError, "model's weights torch.float32"),
        (lambda x: (x[:0], None), ValueError, "at least one image"),
        (lambda x: (x.numpy(), None), TypeError, "must be a .* torch tensor"),
        (lambda x: (x, torch.full((1, 64, 96), 0.5)), TypeError, "mask must be bool"),
    ],
)
def test_inputs_a_model_cannot_take_are_named(make_input, error, match):
    model = small_model("multi_scale").eval()
    images, mask = make_input(torch.rand(1, 3, 64, 96))
    with pytest.raises(error, match=match), torch.no_grad():
        model(images, mask) if mask is not None else model(images)


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["multi_scale", "two_stage"])
def test_cuda_outputs_losses_and_gradients_equal_the_cpu(variant):
    cpu = perturbed(small_model(variant, dropout=0.0)).train()
    gpu = small_model(variant, dropout=0.0).train()
    gpu.load_state_dict(cpu.state_dict())
    cpu.double()
    gpu.double().cuda()
    criterion = build_criterion(num_classes=5, dec_layers=2)
    batch = images()  # random: drawn once for both devices
    results = {}
    for name, model, device in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        out = model([image.to(device, torch.float64) for image in batch])
        losses = criterion(out, to_device(in_float64(targets()), device))
        criterion.total(losses).backward()
        results[name] = (out, losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert_close_to_cpu(results["cpu"], results["cuda"])
