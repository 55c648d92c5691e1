"""MonoDETR: forward/backward, gradients, checkpoints, overfitting, losses and decoding."""

import math

import numpy as np
import pytest
import torch

from deformdetr.models import build_monodetr_criterion, load_monodetr_checkpoint, monodetr
from deformdetr.models.mono.ddn_loss import DDNLoss
from deformdetr.models.mono.decode import angle2class, class2angle, decode, extract_dets_from_outputs
from deformdetr.models.mono.depth_predictor import lid_bin_indices, lid_bin_values
from deformdetr.models.mono.matcher import MonoHungarianMatcher
from deformdetr.ops import MSDeformAttn
from deformdetr.engine.tasks.base import to_device
from device_comparison import assert_close_to_cpu, in_float64

# Small but complete: every module of the official model, narrower and shallower (GroupNorm needs
# widths that are multiples of 32), on a ResNet-18.
TINY = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=32,
            depth_encoder_nheads=4, depth_encoder_dim_feedforward=32, num_queries=6, group_num=2)
# Parameters the official model holds but never uses (denoising and DAB-query variants are off;
# the self-attention values are the unprojected queries).
UNUSED = ("label_enc.", "sa_v_proj.", "decoder.query_scale.", "decoder.ref_point_head.")
P2 = torch.tensor([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791],
                   [0.0, 0.0, 1.0, 0.002745884]])
IMG_SIZES = torch.tensor([[1242, 375], [1242, 375]])


def tiny_model(**overrides):
    return monodetr(num_classes=3, **{**TINY, **overrides})


def inputs(batch=2, height=64, width=128):
    return torch.rand(batch, 3, height, width), P2.expand(batch, 3, 4).clone(), IMG_SIZES[:batch]


def targets():
    def one(c3d, lrtb, labels, depth):
        c3d, lrtb = torch.tensor(c3d), torch.tensor(lrtb)
        x0, y0 = c3d[:, 0] - lrtb[:, 0], c3d[:, 1] - lrtb[:, 2]
        x1, y1 = c3d[:, 0] + lrtb[:, 1], c3d[:, 1] + lrtb[:, 3]
        n = len(labels)
        bins, residuals = zip(*(angle2class(a) for a in np.linspace(-2.5, 2.5, n)))
        return {
            "labels": torch.tensor(labels),
            "boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1),
            "boxes_3d": torch.cat([c3d, lrtb], 1),
            "depth": torch.tensor(depth)[:, None],
            "size_3d": torch.tensor([[1.5, 1.6, 3.9]] * n) + 0.1 * torch.arange(n)[:, None],
            "heading_bin": torch.tensor(bins)[:, None],
            "heading_res": torch.tensor(residuals, dtype=torch.float32)[:, None],
        }

    return [
        one([[0.3, 0.5], [0.7, 0.6]], [[0.1, 0.1, 0.1, 0.15], [0.05, 0.08, 0.1, 0.1]], [1, 0], [12.0, 25.0]),
        one([[0.5, 0.55]], [[0.2, 0.15, 0.2, 0.2]], [2], [8.0]),
    ]


def perturbed(model, scale=0.02):
    # The official init zeroes some layers (sampling offsets, attention weights), which blocks
    # gradients at step 0; a small perturbation makes every path carry signal.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
    return model


def tiny_criterion():
    return build_monodetr_criterion(num_classes=3, dec_layers=TINY["dec_layers"], group_num=TINY["group_num"])


def test_forward_outputs_train_and_eval():
    model = tiny_model()
    images, calibs, sizes = inputs()
    out = model(images, calibs, sizes)
    queries = TINY["num_queries"] * TINY["group_num"]  # every query group while training
    expected = {"pred_logits": 3, "pred_boxes": 6, "pred_3d_dim": 3, "pred_depth": 2, "pred_angle": 24}
    for key, width in expected.items():
        assert out[key].shape == (2, queries, width), key
        assert torch.isfinite(out[key]).all(), key
    assert out["pred_depth_map_logits"].shape == (2, 81, 4, 8)  # stride 16, 80 LID bins + 1
    assert len(out["aux_outputs"]) == TINY["dec_layers"] - 1
    assert set(out["aux_outputs"][0]) == set(expected)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    model.eval()
    with torch.no_grad():
        out = model(images, calibs, sizes)
    assert out["pred_logits"].shape == (2, TINY["num_queries"], 3)  # the first group only


def test_official_structure_names():
    model = tiny_model()
    keys = set(model.state_dict())
    for key in [
        "depthaware_transformer.level_embed",
        "depthaware_transformer.reference_points.weight",
        "depthaware_transformer.decoder.layers.0.cross_attn_depth.in_proj_weight",
        "depthaware_transformer.decoder.layers.0.norm_depth.weight",
        "depthaware_transformer.decoder.layers.1.sa_qcontent_proj.weight",
        "depthaware_transformer.decoder.bbox_embed.1.layers.2.weight",
        "depthaware_transformer.decoder.dim_embed.0.layers.1.weight",
        "depth_predictor.depth_bin_values",
        "depth_predictor.depth_head.3.weight",
        "depth_predictor.depth_classifier.weight",
        "depth_predictor.depth_encoder.layers.0.self_attn.in_proj_weight",
        "depth_predictor.depth_pos_embed.weight",
        "class_embed.1.weight", "bbox_embed.0.layers.2.bias", "dim_embed_3d.1.layers.1.weight",
        "angle_embed.0.layers.1.weight", "depth_embed.1.layers.1.bias", "query_embed.weight",
        "label_enc.weight", "input_proj.3.1.weight", "backbone.0.body.layer4.1.conv2.weight",
    ]:
        assert key in keys, key
    assert model.query_embed.weight.shape == (TINY["num_queries"] * TINY["group_num"], 64)
    assert model.angle_embed[0].layers[-1].out_features == 24
    assert torch.equal(model.depth_predictor.depth_bin_values, lid_bin_values(80, 1e-3, 60.0))
    assert not model.depth_predictor.depth_bin_values.requires_grad


def test_backward_reaches_every_trainable_parameter():
    model = perturbed(tiny_model(dropout=0.0))
    criterion = tiny_criterion()
    images, calibs, sizes = inputs()
    losses = criterion(model(images, calibs, sizes), targets())
    total = criterion.total(losses)
    assert torch.isfinite(total)
    total.backward()
    # Analytically zero: a bias added to every key shifts all attention scores equally.
    zero_by_design = ("sa_kcontent_proj.bias", "sa_kpos_proj.bias")
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(u in name for u in UNUSED):
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if not name.endswith(zero_by_design):
            assert p.grad.abs().sum() > 0, name


def test_checkpoint_strict_round_trip(tmp_path):
    model = perturbed(tiny_model()).eval()
    path = tmp_path / "monodetr.pth"
    # The official layout (lib/helpers/save_helper.py).
    torch.save({"epoch": 3, "model_state": model.state_dict(), "optimizer_state": None,
                "best_result": 0.0, "best_epoch": 0}, path)
    loaded = load_monodetr_checkpoint(str(path), group_num=TINY["group_num"], nheads=4, depth_encoder_nheads=4)
    assert loaded.config == model.config
    loaded.eval()
    images, calibs, sizes = inputs()
    with torch.no_grad():
        a, b = model(images, calibs, sizes), loaded(images, calibs, sizes)
    for key in ("pred_logits", "pred_boxes", "pred_3d_dim", "pred_depth", "pred_angle", "pred_depth_map_logits"):
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="group_num"):
        load_monodetr_checkpoint(str(path))  # 12 query rows are not 11 groups


def test_loss_falls_when_overfitting_two_images():
    torch.manual_seed(0)
    model = perturbed(tiny_model(dropout=0.0, backbone_from_scratch=True))
    criterion = tiny_criterion()
    images, calibs, sizes = inputs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        total = criterion.total(criterion(model(images, calibs, sizes), targets()))
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(total.item())
    assert all(math.isfinite(v) for v in history)
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:3]), history


def test_matcher_matches_each_group():
    matcher = MonoHungarianMatcher()
    torch.manual_seed(1)
    outputs = {"pred_logits": torch.randn(2, 8, 3), "pred_boxes": torch.rand(2, 8, 6) * 0.3 + 0.2}
    indices = matcher(outputs, targets(), group_num=2)
    for (rows, cols), target in zip(indices, targets()):
        n = len(target["labels"])
        assert len(rows) == 2 * n
        assert ((rows[:n] < 4) & (rows[n:] >= 4)).all()  # one assignment inside each group of 4
        assert sorted(cols[:n].tolist()) == sorted(cols[n:].tolist()) == list(range(n))


def test_depth_map_loss_targets_and_foreground():
    depth_min, depth_max, bins = 1e-3, 60.0, 80
    edges = lid_bin_values(bins, depth_min, depth_max)  # near edges of the bins, then depth_max
    assert torch.allclose(edges[1:-1] - edges[:-2], torch.arange(1, bins) * (edges[1] - edges[0]), rtol=1e-4)  # widening
    middles = (edges[:-1] + edges[1:]) / 2
    assert torch.equal(lid_bin_indices(middles, bins, depth_min, depth_max), torch.arange(bins))
    assert lid_bin_indices(torch.tensor([0.0, 75.0, float("nan")]), bins, depth_min, depth_max).tolist() == [80] * 3
    # Logits that put all mass on the right bin cost almost nothing (only the official 1e-6 weight
    # of every other bin remains); the boxes are foreground.
    boxes = torch.tensor([[1.2, 1.0, 4.0, 3.0], [3.0, 2.0, 6.0, 4.0]])  # xyxy, depth-map pixels
    depths = torch.tensor([30.0, 10.0])
    logits = torch.full((1, bins + 1, 5, 8), -20.0)
    target = torch.full((5, 8), bins)
    target[1:3, 1:4] = lid_bin_indices(depths[:1], bins, depth_min, depth_max)
    target[2:4, 3:6] = lid_bin_indices(depths[1:], bins, depth_min, depth_max)  # nearer wins
    logits[0].scatter_(0, target[None], 20.0)
    ddn = DDNLoss()
    assert ddn(logits, boxes.clone(), [2], depths) < 1e-2
    uniform = torch.zeros(1, bins + 1, 5, 8)
    per_pixel = -0.25 * (1 - 1 / 81) ** 2 * math.log(1 / 81) * (1 + 81e-6)
    fg = 6 + 6 - 1  # the two boxes' pixels, overlapping in one
    expected = per_pixel * (13 * fg + (40 - fg)) / 40
    assert torch.allclose(ddn(uniform, boxes.clone(), [2], depths), torch.tensor(expected), rtol=1e-5)


def test_deformable_attention_with_lrtb_boxes_equals_centred_boxes():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.1)
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    value = torch.randn(1, 60, 32)
    query = torch.randn(1, 5, 32)
    cxcywh = torch.rand(1, 5, 2, 4) * 0.5 + 0.25
    half = cxcywh[..., 2:] / 2
    lrtb = torch.cat([cxcywh[..., :2], half[..., :1], half[..., :1], half[..., 1:], half[..., 1:]], -1)
    assert torch.allclose(attn(query, cxcywh, value, shapes, starts), attn(query, lrtb, value, shapes, starts),
                          atol=1e-6)


def test_decode_with_a_hand_made_calibration():
    f, cu, cv = 700.0, 600.0, 180.0
    calib = torch.tensor([[[f, 0, cu, 0], [0, f, cv, 0], [0, 0, 1, 0]]])
    width, height = 1200, 360
    # One car: bottom centre (x, y, z) = (2, 1.5, 20), size (h, w, l) = (1.5, 1.6, 4), ry = 0.3.
    x, y, z, h, ry = 2.0, 1.5, 20.0, 1.5, 0.3
    u, v = f * x / z + cu, f * (y - h / 2) / z + cv  # the projected 3D centre
    left, right, top, bottom = 40.0, 50.0, 20.0, 30.0  # pixels from it to the 2D box sides
    u2d = u + (right - left) / 2  # the 2D box centre, where alpha is measured
    alpha = ry - math.atan2(u2d - cu, f)
    bin_id, residual = angle2class(alpha)
    assert math.isclose(class2angle(bin_id, residual, to_label_format=True), alpha, abs_tol=1e-9)
    queries = 4
    logits = torch.full((1, queries, 3), -8.0)
    logits[0, 2, 1] = 3.0
    boxes = torch.full((1, queries, 6), 0.1)
    boxes[0, 2] = torch.tensor([u / width, v / height, left / width, right / width, top / height, bottom / height])
    angle = torch.zeros(1, queries, 24)
    angle[0, 2, bin_id] = 5.0
    angle[0, 2, 12 + bin_id] = residual
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "pred_angle": angle,
               "pred_3d_dim": torch.tensor([h, 1.6, 4.0]).expand(1, queries, 3).clone(),
               "pred_depth": torch.tensor([z, 0.0]).expand(1, queries, 2).clone()}
    dets = extract_dets_from_outputs(outputs, topk=5)
    assert dets.shape == (1, 5, 37)
    (result,) = decode(outputs, calib, torch.tensor([[width, height]]), topk=5, threshold=0.2)
    assert len(result) == 1
    cls_id, a, x1, y1, x2, y2, hh, ww, ll, lx, ly, lz, r, score = result[0]
    assert cls_id == 1
    assert np.allclose([x1, y1, x2, y2], [u - left, v - top, u + right, v + bottom], atol=1e-3)
    assert np.allclose([hh, ww, ll], [h, 1.6, 4.0], atol=1e-6)
    assert np.allclose([lx, ly, lz], [x, y, z], atol=1e-4)
    assert math.isclose(a, alpha, abs_tol=1e-5) and math.isclose(r, ry, abs_tol=1e-5)
    assert math.isclose(score, torch.sigmoid(torch.tensor(3.0)).item(), rel_tol=1e-6)  # depth confidence 1
    # Class mean sizes are added back to relative sizes.
    mean = np.array([[0, 0, 0], [1.0, 1.0, 1.0], [0, 0, 0]])
    (result,) = decode(outputs, calib, torch.tensor([[width, height]]), cls_mean_size=mean)
    assert np.allclose(result[0][6:9], [h + 1, 2.6, 5.0], atol=1e-6)


def test_checkpoints_with_args_load_exactly_and_bare_weights_warn(tmp_path):
    import dataclasses
    import warnings

    model = perturbed(tiny_model()).eval()
    path = tmp_path / "ours.pth"
    # What the trainer saves: the weights and the model's settings as args.
    torch.save({"model": model.state_dict(), "args": dataclasses.asdict(model.config)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_monodetr_checkpoint(str(path)).eval()
    assert loaded.config == model.config
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    with pytest.warns(UserWarning, match="records no args.*nheads=8"):
        with pytest.raises(ValueError, match="group_num"):  # and then the guess does not fit
            load_monodetr_checkpoint(str(bare))


def test_matcher_refuses_labels_that_are_not_integers():
    outputs = {"pred_logits": torch.randn(2, 8, 3), "pred_boxes": torch.rand(2, 8, 6) * 0.3 + 0.2}
    bad = targets()
    bad[1]["labels"] = bad[1]["labels"].float() + 0.7  # .long() would silently truncate these
    with pytest.raises(TypeError, match=r"targets\[1\]\['labels'\] must hold integer classes"):
        MonoHungarianMatcher()(outputs, bad, group_num=2)


@pytest.mark.cuda
def test_cuda_outputs_losses_and_gradients_equal_the_cpu():
    cpu = perturbed(tiny_model(dropout=0.0)).train()
    gpu = tiny_model(dropout=0.0).train()
    gpu.load_state_dict(cpu.state_dict())
    cpu.double()
    gpu.double().cuda()
    criterion = tiny_criterion()
    batch = inputs()  # random: drawn once for both devices
    results = {}
    for name, model, device in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        out = model(*(in_float64(tensor).to(device) for tensor in batch))
        losses = criterion(out, to_device(in_float64(targets()), device))
        criterion.total(losses).backward()
        results[name] = (out, losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert_close_to_cpu(results["cpu"], results["cuda"])
