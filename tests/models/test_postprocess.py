"""PostProcess: top-k detections in pixels; odd batches and layouts; bf16; input errors."""

import pytest
import torch

from deformdetr.models import PostProcess

SIZES = torch.tensor([[480, 640], [800, 1333]])


def outputs(batch=2, queries=6, classes=3):
    torch.manual_seed(0)
    centre = 0.2 + 0.6 * torch.rand(batch, queries, 2)
    boxes = torch.cat([centre, 0.05 + 0.3 * torch.rand(batch, queries, 2)], -1)
    return {"pred_logits": torch.randn(batch, queries, classes), "pred_boxes": boxes}


def assert_same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        for key in e:
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0, msg=key)


def test_top_k_scores_labels_and_pixel_boxes():
    out = outputs()
    results = PostProcess(num_select=5)(out, SIZES)
    prob = out["pred_logits"].sigmoid()
    for image, result in enumerate(results):
        flat = prob[image].flatten()
        torch.testing.assert_close(result["scores"], flat.sort(descending=True).values[:5])
        query = flat.argsort(descending=True)[:5] // 3
        assert torch.equal(result["labels"], flat.argsort(descending=True)[:5] % 3)
        cx, cy, w, h = out["pred_boxes"][image, query].unbind(-1)
        height, width = SIZES[image].tolist()
        expected = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                                (cx + w / 2) * width, (cy + h / 2) * height], -1)
        torch.testing.assert_close(result["boxes"], expected)


def test_an_empty_batch_gives_no_results():
    assert PostProcess(num_select=5)(outputs(batch=0), torch.zeros(0, 2)) == []
    assert PostProcess(num_select=5)(outputs(batch=0), []) == []


def test_permuted_non_contiguous_logits_give_the_contiguous_results():
    out = outputs()
    permuted = dict(out, pred_logits=out["pred_logits"].transpose(1, 2).contiguous().transpose(1, 2))
    assert not permuted["pred_logits"].is_contiguous()
    assert_same(PostProcess(num_select=5)(permuted, SIZES), PostProcess(num_select=5)(out, SIZES))


@pytest.mark.parametrize("sizes", [[[480, 640], [800, 1333]], ((480, 640), (800, 1333)), list(SIZES)])
def test_target_sizes_may_be_a_list_of_height_width_pairs(sizes):
    assert_same(PostProcess(num_select=5)(outputs(), sizes), PostProcess(num_select=5)(outputs(), SIZES))


def test_bf16_autocast_boxes_are_scaled_in_float32():
    # bf16 holds 1333 px only to 8 px; the boxes of bf16 outputs are converted in float32.
    out = outputs()
    bf16 = {k: v.bfloat16() for k, v in out.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = PostProcess(num_select=5)(bf16, SIZES)
    for image, result in enumerate(results):
        assert result["boxes"].dtype == torch.float32
        query = (bf16["pred_logits"][image].sigmoid().flatten().topk(5).indices // 3)
        cx, cy, w, h = bf16["pred_boxes"][image, query].float().unbind(-1)
        height, width = SIZES[image].tolist()
        expected = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                                (cx + w / 2) * width, (cy + h / 2) * height], -1)
        torch.testing.assert_close(result["boxes"], expected)


def test_float64_outputs_keep_float64_boxes():
    out = {k: v.double() for k, v in outputs().items()}
    assert PostProcess(num_select=5)(out, SIZES)[0]["boxes"].dtype == torch.float64


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(pred_boxes=torch.rand(2, 5, 4)), ValueError, r"pred_boxes'\] must have shape \(B, Q, 4\) = \(2, 6"),
        (dict(pred_boxes=torch.rand(3, 6, 4)), ValueError, r"pred_boxes'\] must have shape"),
        (dict(pred_boxes=torch.rand(2, 6, 6)), ValueError, r"pred_boxes'\] must have shape"),
        (dict(pred_logits=torch.randn(2, 18)), ValueError, r"pred_logits'\] must have shape \(B, Q, C\)"),
    ],
)
def test_bad_outputs(change, error, match):
    with pytest.raises(error, match=match):
        PostProcess(num_select=5)(dict(outputs(), **change), SIZES)


@pytest.mark.parametrize("missing", ["pred_logits", "pred_boxes"])
def test_missing_outputs_are_named(missing):
    out = outputs()
    del out[missing]
    with pytest.raises(ValueError, match=f"outputs must hold '{missing}'"):
        PostProcess(num_select=5)(out, SIZES)


@pytest.mark.parametrize(
    "sizes,error,match",
    [
        (torch.tensor([640, 480]), ValueError, r"target_sizes must have shape \(2, 2\)"),
        ([[480, 640]], ValueError, r"target_sizes must have shape \(2, 2\)"),
        ([[480, 640], [800]], ValueError, r"target_sizes must be a list of \(height, width\) pairs"),
        ("480x640", TypeError, r"target_sizes must be a \(B, 2\) tensor"),
    ],
)
def test_bad_target_sizes(sizes, error, match):
    with pytest.raises(error, match=match):
        PostProcess(num_select=5)(outputs(), sizes)


@pytest.mark.parametrize(
    "num_select,error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_num_select(num_select, error):
    with pytest.raises(error, match="num_select"):
        PostProcess(num_select=num_select)
