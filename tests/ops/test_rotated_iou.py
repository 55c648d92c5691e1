"""Rotated BEV and 3D box overlaps: native kernels against the numpy references (a different
polygon algorithm), a raster estimate, and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deformdetr.ops import bev_box_iou, bev_box_iou_reference, box3d_iou, box3d_iou_reference
from deformdetr.ops.rotated_iou import bev_corners, rotated_rect_intersection_area_reference


def random_bev(count: int, seed: int, spread: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[
        rng.uniform(-spread, spread, (count, 2)),
        rng.uniform(0.3, 4.0, (count, 2)),
        rng.uniform(-math.pi, math.pi, count),
    ]


def random_3d(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bev = random_bev(count, seed + 1000)
    y = rng.uniform(0.0, 2.0, count)
    h = rng.uniform(0.5, 2.0, count)
    # (x, y, z, l, h, w, ry)
    return np.c_[bev[:, 0], y, bev[:, 1], bev[:, 2], h, bev[:, 3], bev[:, 4]]


def raster_intersection(a: np.ndarray, b: np.ndarray, steps: int = 1500) -> float:
    """Intersection area of two BEV boxes by counting grid-cell centres inside both."""
    corners = np.concatenate([bev_corners(a[None]), bev_corners(b[None])], 1)[0]
    lo, hi = corners.min(0), corners.max(0)
    xs = lo[0] + (np.arange(steps) + 0.5) * (hi[0] - lo[0]) / steps
    zs = lo[1] + (np.arange(steps) + 0.5) * (hi[1] - lo[1]) / steps
    px, pz = np.meshgrid(xs, zs, indexing="ij")

    def inside(box):
        x, z, length, width, ry = box
        dx, dz = px - x, pz - z
        # Local coordinates: invert (u, v) -> (c u + s v, -s u + c v).
        c, s = math.cos(ry), math.sin(ry)
        u = c * dx - s * dz
        v = s * dx + c * dz
        return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)

    cell = (hi[0] - lo[0]) * (hi[1] - lo[1]) / steps**2
    return float((inside(a) & inside(b)).sum() * cell)


@pytest.mark.parametrize("criterion", [-1, 0, 1, 2])
def test_bev_native_matches_reference(criterion):
    a, b = random_bev(60, 0), random_bev(45, 1)
    got = bev_box_iou(a, b, criterion)
    want = bev_box_iou_reference(a, b, criterion)
    assert got.shape == (60, 45) and got.dtype == np.float64
    assert 0.2 < (got > 0).mean() < 0.8  # a mix of overlapping and disjoint pairs
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_bev_against_raster_estimate():
    a, b = random_bev(12, 2, spread=1.0), random_bev(12, 3, spread=1.0)
    inter = bev_box_iou(a, b, criterion=2)
    for i in range(len(a)):
        estimate = raster_intersection(a[i], b[i])
        bound = 0.01 * max(a[i, 2] * a[i, 3], b[i, 2] * b[i, 3]) + 1e-3
        assert abs(inter[i, i] - estimate) < bound, (i, inter[i, i], estimate)


def test_bev_hand_computed_cases():
    square = [0.0, 0.0, 2.0, 2.0, 0.0]
    cases = [
        (square, square, 1.0),  # identical
        (square, [0.0, 0.0, 2.0, 2.0, math.pi / 2], 1.0),  # a square turned a quarter
        ([0.0, 0.0, 4.0, 2.0, 0.3], [0.0, 0.0, 4.0, 2.0, 0.3 + math.pi], 1.0),  # turned a half
        (square, [5.0, 5.0, 2.0, 2.0, 0.7], 0.0),  # disjoint
        (square, [2.0, 0.0, 2.0, 2.0, 0.0], 0.0),  # touching along an edge
        (square, [2.0, 2.0, 2.0, 2.0, 0.0], 0.0),  # touching at a corner
        (square, [1.0, 0.0, 2.0, 2.0, 0.0], 2.0 / 6.0),  # half shifted: 2 / (4 + 4 - 2)
        (square, [0.0, 0.0, 1.0, 1.0, 0.4], 1.0 / 4.0),  # contained
        (square, [0.0, 0.0, 2.0, 2.0, math.pi / 4], 1.0 / math.sqrt(2.0)),  # octagon
        # A 4 x 2 box against itself turned a quarter: a 2 x 2 intersection, 4 / (8 + 8 - 4).
        ([0.0, 0.0, 4.0, 2.0, 0.0], [0.0, 0.0, 4.0, 2.0, math.pi / 2], 1.0 / 3.0),
    ]
    for a, b, want in cases:
        got = bev_box_iou(np.array([a]), np.array([b]))[0, 0]
        ref = bev_box_iou_reference(np.array([a]), np.array([b]))[0, 0]
        assert got == pytest.approx(want, abs=1e-12), (a, b)
        assert ref == pytest.approx(want, abs=1e-9), (a, b)


def test_bev_is_symmetric_and_criteria_divide_as_the_devkit():
    a = np.array([[0.0, 0.0, 2.0, 2.0, 0.0]])  # area 4
    b = np.array([[0.0, 0.0, 1.0, 1.0, 0.0]])  # area 1, inside a
    assert bev_box_iou(a, b, -1)[0, 0] == pytest.approx(0.25)
    assert bev_box_iou(a, b, 2)[0, 0] == pytest.approx(1.0)  # the intersection area
    # rotate_iou_gpu_eval's kernel passes the second box first: criterion 0 divides by its area.
    assert bev_box_iou(a, b, 0)[0, 0] == pytest.approx(1.0)
    assert bev_box_iou(a, b, 1)[0, 0] == pytest.approx(0.25)
    x, y = random_bev(30, 4), random_bev(20, 5)
    np.testing.assert_allclose(bev_box_iou(x, y), bev_box_iou(y, x).T, rtol=1e-12, atol=1e-15)


def test_bev_far_from_origin_keeps_precision():
    a = random_bev(10, 6)
    b = a.copy()
    b[:, 0] += 0.1
    shift = np.array([1e5, -2e5, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(bev_box_iou(a + shift, b + shift), bev_box_iou(a, b), atol=1e-9)


def test_the_reference_computes_in_the_dtype_it_is_given():
    # float32 throughout (what bench/kitti_iou_float32.py needs to measure the devkit's precision).
    a, b = random_bev(200, 9), random_bev(200, 10)
    exact = rotated_rect_intersection_area_reference(a, b)
    single = rotated_rect_intersection_area_reference(a, b, dtype=np.float32)
    assert exact.dtype == np.float64 and single.dtype == np.float32 and bev_corners(a, np.float32).dtype == np.float32
    np.testing.assert_allclose(single, exact, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(single.astype(np.float64), exact)
    # The edge crossings can be computed another way; no crossings, no intersection where no
    # corner of one box is inside the other.
    calls = []

    def no_crossings(c1, c2):
        calls.append(c1.dtype)
        return np.zeros((len(c1), 16, 2), c1.dtype), np.zeros((len(c1), 16), bool)

    crossed = rotated_rect_intersection_area_reference(a, b, edge_crossings=no_crossings)
    assert calls == [np.float64] and (crossed <= exact + 1e-12).all() and (crossed < exact - 1e-6).any()


@pytest.mark.parametrize("criterion", [-1, 0, 1, 2])
def test_3d_native_matches_reference(criterion):
    a, b = random_3d(50, 7), random_3d(40, 8)
    got = box3d_iou(a, b, criterion)
    want = box3d_iou_reference(a, b, criterion)
    assert 0.1 < (got > 0).mean() < 0.8
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_3d_vertical_offsets():
    # (x, y, z, l, h, w, ry): y is the bottom, the box spans [y - h, y].
    box = np.array([[1.0, 2.0, 10.0, 4.0, 1.5, 2.0, 0.3]])
    assert box3d_iou(box, box)[0, 0] == pytest.approx(1.0)
    for dy, want in [
        (0.75, 1.0 / 3.0),  # half the height: h/2 / (2h - h/2)
        (-0.75, 1.0 / 3.0),
        (1.5, 0.0),  # stacked, touching
        (3.0, 0.0),  # apart
    ]:
        other = box.copy()
        other[0, 1] += dy
        assert box3d_iou(box, other)[0, 0] == pytest.approx(want, abs=1e-12), dy
    # Vertical and BEV overlaps multiply: half the height and a BEV IoU of 1/3 (shift by l/2).
    other = box.copy()
    other[0, 1] += 0.75
    c, s = math.cos(0.3), math.sin(0.3)
    other[0, 0] += 2.0 * c  # along the box's length axis (cos ry, -sin ry) in (x, z)
    other[0, 2] -= 2.0 * s
    inter = (4.0 * 2.0 / 2) * 0.75
    volume = 4.0 * 1.5 * 2.0
    assert box3d_iou(box, other)[0, 0] == pytest.approx(inter / (2 * volume - inter), abs=1e-12)
    assert box3d_iou(box, other, 2)[0, 0] == pytest.approx(inter, abs=1e-12)
    smaller = box.copy()
    smaller[0, 3:6] /= 2
    smaller[0, 1] -= 0.1  # inside vertically: [2.0 - 0.1 - 0.75, 1.9] within [0.5, 2.0]
    assert box3d_iou(smaller, box, 0)[0, 0] == pytest.approx(1.0)  # criterion 0: boxes1 volume
    assert box3d_iou(smaller, box, 1)[0, 0] == pytest.approx(1.0 / 8.0)


def test_types_shapes_and_threads():
    a, b = random_bev(300, 9), random_bev(200, 10)
    want = bev_box_iou(a, b)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = bev_box_iou(a, b)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(single, want)
    t = bev_box_iou(torch.from_numpy(a).float(), torch.from_numpy(b))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), want, atol=1e-6)
    assert bev_box_iou(np.zeros((0, 5)), b).shape == (0, 200)
    assert box3d_iou(random_3d(3, 1), np.zeros((0, 7))).shape == (3, 0)
    assert bev_box_iou([], []).shape == (0, 0)
    np.testing.assert_array_equal(bev_box_iou(a[:, :].T.copy().T, b), want)  # non-contiguous


def test_validation_names_the_argument():
    good = random_bev(2, 0)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(N, 5\)"):
        bev_box_iou(good, np.zeros((2, 4)))
    bad = good.copy()
    bad[1, 3] = -1.0
    with pytest.raises(ValueError, match=r"boxes1\[1\].*non-negative"):
        bev_box_iou(bad, good)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"boxes1\[1\]"):
        bev_box_iou(bad, good)
    with pytest.raises(ValueError, match="criterion"):
        bev_box_iou(good, good, criterion=3)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 7\)"):
        box3d_iou(good, good)
    from deformdetr import _C

    out = np.empty((2, 2), dtype=np.float32)
    with pytest.raises(TypeError, match="out must be float64"):
        _C.bev_box_iou(good, good, out)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\)"):
        _C.bev_box_iou(good, good, np.empty((2, 3)))
