"""HungarianMatcher against a straightforward torch + scipy implementation of the official
Deformable DETR matcher (whole-batch cost, scipy per image)."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from deformdetr.models import HungarianMatcher
from deformdetr.models.matcher import matching_cost_reference


def official_matcher(outputs, targets, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25):
    """The official algorithm: the whole-batch cost in float64 (the reference beside the
    matcher), then scipy per image."""
    double = {k: v.double() for k, v in outputs.items()}
    cost = matching_cost_reference(double, targets, cost_class, cost_bbox, cost_giou, alpha)
    sizes = [len(t["labels"]) for t in targets]
    blocks = [c[i] for i, c in enumerate(cost.split(sizes, -1))]
    return [tuple(torch.as_tensor(x, dtype=torch.int64) for x in scipy_lsa(b)) for b in blocks], blocks


def random_batch(target_counts, queries=30, classes=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    batch = len(target_counts)
    outputs = {
        "pred_logits": (torch.randn(batch, queries, classes, generator=g) * 3).to(dtype),
        "pred_boxes": (torch.rand(batch, queries, 4, generator=g) * 0.5 + 0.05).to(dtype),
    }
    targets = [
        {
            "labels": torch.randint(0, classes, (count,), generator=g),
            "boxes": (torch.rand(count, 4, generator=g) * 0.5 + 0.05).to(dtype),
        }
        for count in target_counts
    ]
    return outputs, targets


def assert_same_as_official(outputs, targets, matcher=None, **weights):
    matcher = matcher or HungarianMatcher()
    ours = matcher(outputs, targets)
    expected, blocks = official_matcher(outputs, targets, **weights)
    assert len(ours) == len(targets)
    for (rows, cols), (expected_rows, expected_cols), block in zip(ours, expected, blocks):
        for out in (rows, cols):
            assert out.dtype == torch.int64 and out.device.type == "cpu" and out.dim() == 1
        assert len(rows) == len(cols) == min(block.shape)
        assert torch.all(rows[1:] > rows[:-1])
        assert len(set(cols.tolist())) == len(cols)
        total = block[rows, cols].sum().item()
        assert total == pytest.approx(block[expected_rows, expected_cols].sum().item(), rel=1e-9, abs=1e-9)
        # Random continuous costs have no ties: the very same pairs.
        assert rows.tolist() == expected_rows.tolist()
        assert cols.tolist() == expected_cols.tolist()
    return ours


@pytest.mark.parametrize("seed", range(3))
def test_equals_official_on_mixed_target_counts(seed):
    outputs, targets = random_batch([3, 0, 7, 1, 12, 0, 30], seed=seed)
    assert_same_as_official(outputs, targets)


def test_detr_shapes():
    outputs, targets = random_batch([7, 5, 9, 0, 6, 8, 7, 7], queries=300, classes=91, seed=5)
    assert_same_as_official(outputs, targets)


def test_more_targets_than_queries():
    outputs, targets = random_batch([9, 4], queries=5, seed=1)
    ours = assert_same_as_official(outputs, targets)
    assert len(ours[0][0]) == 5 and ours[0][0].tolist() == [0, 1, 2, 3, 4]


def test_float64_and_custom_weights():
    outputs, targets = random_batch([4, 6], seed=2, dtype=torch.float64)
    weights = dict(cost_class=1.0, cost_bbox=3.0, cost_giou=0.5, alpha=0.4)
    matcher = HungarianMatcher(cost_class=1, cost_bbox=3, cost_giou=0.5, focal_alpha=0.4)
    assert_same_as_official(outputs, targets, matcher=matcher, **weights)


def test_each_weight_alone_matters():
    outputs, targets = random_batch([6], seed=4)
    for weights in (dict(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0),
                    dict(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0),
                    dict(cost_class=0.0, cost_bbox=0.0, cost_giou=1.0)):
        matcher = HungarianMatcher(**weights)
        assert_same_as_official(outputs, targets, matcher=matcher, **weights)


def test_zero_target_images():
    outputs, targets = random_batch([0, 0, 0], seed=3)
    for rows, cols in HungarianMatcher()(outputs, targets):
        assert rows.shape == cols.shape == (0,)
        assert rows.dtype == cols.dtype == torch.int64
    # Empty boxes written as a flat (0,) tensor are accepted too.
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0)}]
    (rows, cols), = HungarianMatcher()(random_batch([0])[0], targets)
    assert rows.numel() == 0 and cols.numel() == 0


def test_grad_inputs_and_int32_labels():
    outputs, targets = random_batch([3, 5], seed=6)
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    expected, _ = official_matcher(outputs, targets)
    for t in targets:
        t["labels"] = t["labels"].int()
    ours = HungarianMatcher()(outputs, targets)
    for (rows, cols), (expected_rows, expected_cols) in zip(ours, expected):
        assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()


def test_label_out_of_range():
    outputs, targets = random_batch([2, 3], classes=11)
    targets[1]["labels"][2] = 11
    with pytest.raises(ValueError, match=r"image 1, target 2\) is 11, out of range for 11 classes"):
        HungarianMatcher()(outputs, targets)
    targets[1]["labels"][2] = -1
    with pytest.raises(ValueError, match="out of range"):
        HungarianMatcher()(outputs, targets)


def test_shape_errors():
    outputs, targets = random_batch([2, 3])
    matcher = HungarianMatcher()
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2 images"):
        matcher(outputs, targets[:1])
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \(B, Q, 4\)"):
        matcher({**outputs, "pred_boxes": outputs["pred_boxes"][:, :, :3]}, targets)
    with pytest.raises(ValueError, match=r"pred_logits must have shape \(B, Q, C\)"):
        matcher({**outputs, "pred_logits": outputs["pred_logits"][0]}, targets)
    bad = [targets[0], {"labels": targets[1]["labels"], "boxes": targets[1]["boxes"][:2]}]
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\] must have shape \(T, 4\) = \(3, 4\)"):
        matcher(outputs, bad)
    bad = [targets[0], {"labels": targets[1]["labels"].float(), "boxes": targets[1]["boxes"]}]
    with pytest.raises(TypeError, match=r"targets\[1\]\['labels'\] must hold integer classes"):
        matcher(outputs, bad)
    with pytest.raises(KeyError, match="pred_boxes"):
        matcher({"pred_logits": outputs["pred_logits"]}, targets)


def test_degenerate_boxes_and_nan_logits():
    outputs, targets = random_batch([2, 3])
    targets[0]["boxes"][1, 2] = -0.1  # negative width
    with pytest.raises(ValueError, match="target_boxes has a degenerate box at flat index 1"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = random_batch([2, 3])
    outputs["pred_logits"][1, 4, targets[1]["labels"][0]] = float("nan")
    with pytest.raises(ValueError, match="image 1: matching cost matrix contains invalid numeric entries"):
        HungarianMatcher()(outputs, targets)


def test_all_weights_zero_is_rejected():
    with pytest.raises(ValueError, match="can't all be 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_predictions():
    outputs, targets = random_batch([3, 0, 5], seed=8)
    expected = HungarianMatcher()(outputs, targets)
    cuda_outputs = {k: v.cuda() for k, v in outputs.items()}
    cuda_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    for (rows, cols), (expected_rows, expected_cols) in zip(HungarianMatcher()(cuda_outputs, cuda_targets), expected):
        assert rows.device.type == "cpu"
        assert torch.equal(rows, expected_rows) and torch.equal(cols, expected_cols)


def test_target_sizes_that_overflow_are_refused_by_the_native_matcher():
    from deformdetr._native import _C

    # 4 x 2**62 wraps to 0 in int64: it must not pass for the 0 labels given.
    with pytest.raises(ValueError, match="add up to more than the 0 target_labels"):
        _C.hungarian_match(torch.randn(4, 3, 2), torch.full((4, 3, 4), 0.5), torch.tensor([2**62] * 4),
                           torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), 2.0, 5.0, 2.0, 0.25,
                           torch.empty(12, dtype=torch.int64), torch.empty(12, dtype=torch.int64), 2)
