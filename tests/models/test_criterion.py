"""SetCriterion and MonoSetCriterion: target dtypes and shapes, and loss weights per layer.

Synthetic model outputs (no network), so every test runs in milliseconds."""

import pytest
import torch

from deformdetr.models import build_criterion, build_monodetr_criterion

BATCH, QUERIES, CLASSES = 2, 4, 5


def boxes(*shape):
    # (cx, cy, w, h) well inside the image, so every GIoU is defined.
    centre = 0.3 + 0.4 * torch.rand(*shape, 2)
    return torch.cat([centre, 0.1 + 0.2 * torch.rand(*shape, 2)], -1)


def outputs(aux_layers=2, enc=False):
    torch.manual_seed(0)

    def layer():
        return {"pred_logits": torch.randn(BATCH, QUERIES, CLASSES), "pred_boxes": boxes(BATCH, QUERIES)}

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(aux_layers)]
    if enc:
        out["enc_outputs"] = layer()
    return out


def targets(labels_dtype=torch.int64):
    torch.manual_seed(1)
    return [
        {"labels": torch.tensor([1, 3], dtype=labels_dtype), "boxes": boxes(2)},
        {"labels": torch.tensor([4], dtype=labels_dtype), "boxes": boxes(1)},
    ]


def assert_same_losses(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


def host_reads(run) -> int:
    """How many times ``run`` reads a tensor's value back to the host (on a GPU each one waits
    for the device)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                reads.append(func)
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return len(reads)


def test_the_losses_read_from_the_device_once_for_all_layers():
    """num_boxes only (as official); the matched boxes' GIoU no longer checks each layer's boxes."""
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3, aux_loss=True)
    out, expected_targets = outputs(aux_layers=2), targets()
    assert host_reads(lambda: criterion(out, expected_targets)) == 1


# ---- targets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_labels_of_any_integer_dtype_give_the_int64_losses(dtype):
    # uint8 used to index as a boolean mask, int16 as an invalid index.
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    expected = criterion(outputs(), targets())
    assert_same_losses(criterion(outputs(), targets(dtype)), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_labels_are_a_type_error_naming_the_target(dtype):
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    bad = targets()
    bad[1]["labels"] = bad[1]["labels"].to(dtype)
    with pytest.raises(TypeError, match=r"targets\[1\]\['labels'\].*integer"):
        criterion(outputs(), bad)


@pytest.mark.parametrize("empty_boxes", [torch.zeros(0), torch.zeros(0, 0), torch.zeros(0, 4)])
def test_an_image_without_objects_may_hold_any_empty_boxes(empty_boxes):
    # torch.zeros(0) used to crash in loss_boxes when no image had a box.
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    expected = criterion(outputs(), [empty, empty])
    written = {"labels": torch.zeros(0, dtype=torch.long), "boxes": empty_boxes}
    assert_same_losses(criterion(outputs(), [written, written]), expected)
    assert torch.isfinite(criterion.total(expected))


@pytest.mark.parametrize("bad_boxes", [torch.rand(2, 5), torch.rand(8), torch.rand(3, 4)])
def test_boxes_of_another_shape_are_a_value_error_naming_the_target(bad_boxes):
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    bad = targets()
    bad[0]["boxes"] = bad_boxes
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] must have shape \(T, 4\) = \(2, 4\)"):
        criterion(outputs(), bad)


def test_two_stage_encoder_targets_are_checked_too():
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    expected = criterion(outputs(enc=True), targets())
    assert "loss_ce_enc" in expected
    assert_same_losses(criterion(outputs(enc=True), targets(torch.uint8)), expected)


# ---- total -----------------------------------------------------------------------------------


def test_total_is_the_weighted_sum_and_ignores_logged_values():
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    losses = criterion(outputs(enc=True), targets())
    assert {"class_error", "cardinality_error", "cardinality_error_0"} <= losses.keys()
    expected = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    torch.testing.assert_close(criterion.total(losses), expected)


def test_total_refuses_per_layer_losses_of_a_criterion_built_for_fewer_layers():
    criterion = build_criterion(num_classes=CLASSES, dec_layers=1)
    losses = criterion(outputs(aux_layers=2), targets())  # a 3-layer decoder
    with pytest.raises(ValueError, match=r"built for 1 decoder layer.*model has 3.*dec_layers=3"):
        criterion.total(losses)


def test_total_refuses_aux_losses_of_a_criterion_built_without_aux_loss():
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3, aux_loss=False)
    losses = criterion(outputs(aux_layers=2), targets())
    expected = r"loss_ce_0.*aux_loss=False.*its 3 decoder layers.*aux_loss=True, dec_layers=3"
    with pytest.raises(ValueError, match=expected):
        criterion.total(losses)


def test_total_refuses_unweighted_encoder_losses_when_other_layers_are_weighted():
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3)
    criterion.weight_dict = {k: v for k, v in criterion.weight_dict.items() if not k.endswith("_enc")}
    losses = criterion(outputs(enc=True), targets())
    with pytest.raises(ValueError, match=r"loss_ce_enc.*encoder"):
        criterion.total(losses)


def test_total_keeps_the_official_semantics_of_two_stage_without_aux_loss():
    # Officially, two-stage with aux_loss=False computes the encoder losses and leaves them out.
    criterion = build_criterion(num_classes=CLASSES, dec_layers=3, aux_loss=False)
    losses = criterion(outputs(aux_layers=0, enc=True), targets())
    assert "loss_ce_enc" in losses
    expected = 2 * losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    torch.testing.assert_close(criterion.total(losses), expected)


# ---- MonoDETR --------------------------------------------------------------------------------

MONO_QUERIES, DEPTH_BINS = 6, 8


def mono_outputs():
    torch.manual_seed(2)

    def layer():
        centre = 0.3 + 0.4 * torch.rand(BATCH, MONO_QUERIES, 2)
        return {
            "pred_logits": torch.randn(BATCH, MONO_QUERIES, 3),
            "pred_boxes": torch.cat([centre, 0.05 + 0.1 * torch.rand(BATCH, MONO_QUERIES, 4)], -1),
            "pred_depth": torch.randn(BATCH, MONO_QUERIES, 2) + torch.tensor([20.0, 0.0]),
            "pred_3d_dim": 1 + torch.rand(BATCH, MONO_QUERIES, 3),
            "pred_angle": torch.randn(BATCH, MONO_QUERIES, 24),
        }

    out = layer()
    out["pred_depth_map_logits"] = torch.randn(BATCH, DEPTH_BINS + 1, 6, 8)
    out["aux_outputs"] = [layer()]
    return out


def mono_targets(labels_dtype=torch.int64):
    torch.manual_seed(3)

    def one(labels):
        n = len(labels)
        lrtb = 0.05 + 0.1 * torch.rand(n, 4)
        c3d = 0.3 + 0.4 * torch.rand(n, 2)
        x0, x1 = c3d[:, 0] - lrtb[:, 0], c3d[:, 0] + lrtb[:, 1]
        y0, y1 = c3d[:, 1] - lrtb[:, 2], c3d[:, 1] + lrtb[:, 3]
        return {
            "labels": torch.tensor(labels, dtype=labels_dtype),
            "boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1),
            "boxes_3d": torch.cat([c3d, lrtb], 1),
            "depth": 10 + 20 * torch.rand(n, 1),
            "size_3d": 1 + torch.rand(n, 3),
            "heading_bin": torch.randint(0, 12, (n, 1)),
            "heading_res": torch.rand(n, 1) * 0.2,
        }

    return [one([1, 0]), one([2])]


def mono_criterion():
    return build_monodetr_criterion(num_classes=3, dec_layers=2, group_num=2, num_depth_bins=DEPTH_BINS).eval()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_mono_labels_of_any_integer_dtype_give_the_int64_losses(dtype):
    criterion = mono_criterion()
    expected = criterion(mono_outputs(), mono_targets())
    assert_same_losses(criterion(mono_outputs(), mono_targets(dtype)), expected)


def test_mono_float_labels_are_a_type_error():
    # The MonoDETR matcher used to truncate them with .long().
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\].*integer"):
        mono_criterion()(mono_outputs(), mono_targets(torch.float32))


def test_mono_images_without_objects_may_hold_empty_boxes_of_any_shape():
    criterion = mono_criterion()
    empty = {k: v[:0] for k, v in mono_targets()[0].items()}
    expected = criterion(mono_outputs(), [empty, empty])
    written = dict(empty, boxes=torch.zeros(0), boxes_3d=torch.zeros(0), size_3d=torch.zeros(0))
    assert_same_losses(criterion(mono_outputs(), [written, written]), expected)
    assert torch.isfinite(criterion.total(expected))
