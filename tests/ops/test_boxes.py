"""Box conversions, IoU and generalized IoU: native kernels against the torch references and
hand-computed values."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from deformdetr.ops import (
    box_cxcywh_to_xyxy,
    box_cxcywh_to_xyxy_reference,
    box_iou,
    box_iou_reference,
    box_xyxy_to_cxcywh,
    box_xyxy_to_cxcywh_reference,
    generalized_box_iou,
    generalized_box_iou_pairs,
    generalized_box_iou_reference,
)

DTYPES = [torch.float32, torch.float64]


def random_xyxy(count: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=g, dtype=torch.float64) * 10
    size = torch.rand(count, 2, generator=g, dtype=torch.float64) * 5
    return torch.cat([corner, corner + size], dim=1).to(dtype)


def tolerance(dtype):
    return dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_round_trip_and_match_reference(dtype):
    boxes = random_xyxy(50, dtype)
    cxcywh = box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, box_xyxy_to_cxcywh_reference(boxes), **tolerance(dtype))
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), boxes, **tolerance(dtype))
    torch.testing.assert_close(
        box_cxcywh_to_xyxy(cxcywh), box_cxcywh_to_xyxy_reference(cxcywh), rtol=0, atol=0
    )
    assert cxcywh.dtype == dtype


def test_conversions_hand_computed_and_any_leading_shape():
    cxcywh = torch.tensor([[[1.0, 2.0, 4.0, 6.0]], [[0.0, 0.0, 1.0, 1.0]]])  # (2, 1, 4)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert xyxy.shape == (2, 1, 4)
    assert xyxy.tolist() == [[[-1.0, -1.0, 3.0, 5.0]], [[-0.5, -0.5, 0.5, 0.5]]]
    assert box_xyxy_to_cxcywh(xyxy).tolist() == cxcywh.tolist()
    assert box_cxcywh_to_xyxy(torch.zeros(0, 4)).shape == (0, 4)


def test_conversions_of_noncontiguous_input():
    boxes = random_xyxy(20, torch.float32).T.contiguous().T  # same values, column-major
    assert not boxes.is_contiguous()
    torch.testing.assert_close(box_xyxy_to_cxcywh(boxes), box_xyxy_to_cxcywh_reference(boxes))


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    # Overlap 1, union 4 + 4 - 1 = 7, enclosing 3x3 = 9; disjoint: union 5, enclosing 16.
    expected_iou = torch.tensor([[1 / 7, 1.0, 0.0, 1 / 4]])
    expected_giou = torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 11 / 16, 1 / 4]])
    torch.testing.assert_close(box_iou(a, b), expected_iou)
    torch.testing.assert_close(generalized_box_iou(a, b), expected_giou)
    torch.testing.assert_close(generalized_box_iou_reference(a, b), expected_giou)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(1, 1), (7, 300), (300, 7), (64, 65)])
def test_pairwise_match_reference(dtype, sizes):
    boxes1, boxes2 = random_xyxy(sizes[0], dtype, seed=1), random_xyxy(sizes[1], dtype, seed=2)
    iou = box_iou(boxes1, boxes2)
    giou = generalized_box_iou(boxes1, boxes2)
    assert iou.shape == giou.shape == sizes and iou.dtype == giou.dtype == dtype
    torch.testing.assert_close(iou, box_iou_reference(boxes1, boxes2), **tolerance(dtype))
    torch.testing.assert_close(giou, generalized_box_iou_reference(boxes1, boxes2), **tolerance(dtype))
    assert (giou <= iou + 1e-6).all() and (giou >= -1 - 1e-6).all()
    assert ((iou >= 0) & (iou <= 1 + 1e-6)).all()


def test_zero_area_boxes_give_nan_like_torch():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(box_iou(point, point), box_iou_reference(point, point), equal_nan=True)
    assert torch.isnan(box_iou(point, point)).all()
    torch.testing.assert_close(
        generalized_box_iou(point, point), generalized_box_iou_reference(point, point), equal_nan=True
    )


def test_empty_inputs():
    assert box_iou(torch.zeros(0, 4), random_xyxy(3, torch.float32)).shape == (0, 3)
    assert generalized_box_iou(random_xyxy(3, torch.float32), torch.zeros(0, 4)).shape == (3, 0)


@pytest.mark.parametrize("fn", [generalized_box_iou, generalized_box_iou_reference])
def test_degenerate_boxes_raise(fn):
    good = random_xyxy(4, torch.float32)
    bad = good.clone()
    bad[2, 2] = bad[2, 0] - 1  # x1 < x0
    with pytest.raises(ValueError, match="boxes2.*degenerate"):
        fn(good, bad)
    with pytest.raises(ValueError, match="boxes1.*degenerate"):
        fn(bad, good)
    nan = good.clone()
    nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="degenerate"):
        fn(nan, good)


def test_grad_goes_to_the_differentiable_reference():
    boxes1 = random_xyxy(5, torch.float64, seed=3).requires_grad_()
    boxes2 = random_xyxy(6, torch.float64, seed=4)
    giou = generalized_box_iou(boxes1, boxes2)
    assert giou.requires_grad
    (1 - giou).sum().backward()
    assert boxes1.grad is not None and torch.isfinite(boxes1.grad).all()
    torch.autograd.gradcheck(generalized_box_iou, (boxes1, boxes2))
    torch.autograd.gradcheck(box_iou, (boxes1, boxes2))
    cxcywh = box_xyxy_to_cxcywh(boxes1)
    assert cxcywh.requires_grad
    with torch.no_grad():  # without grad mode the kernels run, with the same values
        torch.testing.assert_close(generalized_box_iou(boxes1, boxes2), giou.detach())


def test_half_precision_runs_the_reference():
    boxes = random_xyxy(5, torch.float16)
    out = box_iou(boxes, boxes)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), box_iou(boxes.float(), boxes.float()), rtol=1e-2, atol=1e-2)


def test_mixed_dtypes_promote():
    out = box_iou(random_xyxy(3, torch.float32), random_xyxy(2, torch.float64))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou])
def test_shape_and_dtype_errors(fn):
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 4\)"):
        fn(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(N, 4\)"):
        fn(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(TypeError, match="floating point"):
        fn(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="torch tensors"):
        fn([[0, 0, 1, 1]], torch.zeros(2, 4))


def test_conversion_shape_error():
    with pytest.raises(ValueError, match="last dimension of 4"):
        box_cxcywh_to_xyxy(torch.zeros(3, 5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_use_the_reference():
    boxes = random_xyxy(8, torch.float32).cuda()
    out = generalized_box_iou(boxes, boxes)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), generalized_box_iou(boxes.cpu(), boxes.cpu()))


def test_lazily_negated_views_are_read_with_their_sign():
    # z.conj().imag is a view with torch's negative bit: its memory holds the values unnegated.
    negated = torch._neg_view(torch.rand(6, 4) + 0.1)
    plain = negated.resolve_neg()
    torch.testing.assert_close(box_cxcywh_to_xyxy(negated), box_cxcywh_to_xyxy_reference(plain))
    corners = torch.tensor([[-1.0, -1.0, 0.0, 0.0]])
    negated_corners = torch._neg_view(torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(generalized_box_iou(negated_corners, corners),
                               generalized_box_iou_reference(corners, corners))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_a_huge_thread_request_uses_at_most_the_hardware_threads():
    from deformdetr._native import _C

    boxes1 = box_cxcywh_to_xyxy_reference(torch.rand(3000, 4))
    boxes2 = box_cxcywh_to_xyxy_reference(torch.rand(2000, 4))
    out = torch.empty(3000, 2000)
    _C.box_iou(boxes1, boxes2, out, 3000)  # work enough for 3000 threads, one row each
    assert len(os.listdir("/proc/self/task")) <= threading.active_count() + _C.hardware_threads() + 8
    torch.testing.assert_close(out, box_iou_reference(boxes1, boxes2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_giou_of_pairs_is_the_diagonal_bit_for_bit(dtype):
    boxes1, boxes2 = random_xyxy(9, dtype, seed=3), random_xyxy(9, dtype, seed=4)
    boxes1[0] = boxes2[0]  # identical, nested and disjoint pairs among the random ones
    expected = torch.diag(generalized_box_iou_reference(boxes1, boxes2))
    assert torch.equal(generalized_box_iou_pairs(boxes1, boxes2), expected)
    a, b = boxes1.clone().requires_grad_(True), boxes2.clone().requires_grad_(True)
    generalized_box_iou_pairs(a, b).sum().backward()
    a_ref, b_ref = boxes1.clone().requires_grad_(True), boxes2.clone().requires_grad_(True)
    torch.diag(generalized_box_iou_reference(a_ref, b_ref)).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    torch.testing.assert_close(b.grad, b_ref.grad)


def test_giou_of_pairs_needs_rows_in_pairs():
    with pytest.raises(ValueError, match="as many rows on each side"):
        generalized_box_iou_pairs(random_xyxy(3), random_xyxy(2))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        generalized_box_iou_pairs(random_xyxy(3)[:, :3], random_xyxy(3)[:, :3])
