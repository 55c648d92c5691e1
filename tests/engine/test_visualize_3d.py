"""Drawings of 3D boxes: corners land where the camera projects them, edges behind the camera are
cut, front faces are marked, and the bird's-eye view places the box where it is."""

import math

import numpy as np
import pytest
from PIL import Image

from deformdetr.data.kitti import Calibration
from deformdetr.engine.visualize import class_colour
from deformdetr.engine.visualize_3d import NEAR_PLANE, bird_eye_view, draw_boxes_3d, projected_edges
from deformdetr.models.mono.decode import Detection3D

F, CX, CY = 100.0, 160.0, 60.0  # a 320 x 120 image
CALIB = Calibration([[F, 0, CX, 0], [0, F, CY, 0], [0, 0, 1, 0]])
# A car 4 m long, 2 m wide, 1.5 m high, its bottom centre 10 m ahead and 1.5 m below the camera,
# facing the camera's +x (ry = 0).
CAR = Detection3D(label=1, alpha=0.0, x1=0, y1=0, x2=0, y2=0, h=1.5, w=2.0, l=4.0, x=0.0, y=1.5, z=10.0, ry=0.0,
                  score=0.9)


def by_hand(x, y, z):
    return (F * x / z + CX, F * y / z + CY)


def corners_by_hand():
    """The eight corners of CAR in the official order: bottom (y = 1.5) 0-3, top (y = 0) 4-7;
    0, 1, 4, 5 at the front (x = +2)."""
    bottom = [(2, 1.5, 11), (2, 1.5, 9), (-2, 1.5, 9), (-2, 1.5, 11)]
    top = [(x, 0.0, z) for x, _, z in bottom]
    return [by_hand(*p) for p in bottom + top]


def test_projected_edges_end_at_the_corners_projected_by_hand():
    from deformdetr.data.kitti import BOX_EDGES, box_corners

    corners = box_corners(CAR.h, CAR.w, CAR.l, (CAR.x, CAR.y, CAR.z), CAR.ry)
    expected = corners_by_hand()
    segments = projected_edges(CALIB, corners)
    assert len(segments) == 12
    for (i, j), (start, end) in zip(BOX_EDGES, segments):
        assert start == pytest.approx(expected[i]) and end == pytest.approx(expected[j])


def test_the_drawn_corners_are_the_corners_projected_by_hand():
    image = Image.new("RGB", (320, 120), (0, 0, 0))
    drawing = np.asarray(draw_boxes_3d(image, CALIB, [CAR], {1: "Car"}, bev=False))
    scale = drawing.shape[1] // 320  # small images are enlarged by whole pixels
    colour = class_colour(1)
    for u, v in corners_by_hand():
        x, y = int(round(u * scale)), int(round(v * scale))
        patch = drawing[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
        assert any(tuple(p) == colour for p in patch), (u, v)
    # and nothing of that colour far from the box (the caption sits above it)
    assert not (drawing[int(80 * scale):] == colour).all(axis=-1).any()


def test_captions_of_boxes_in_one_place_do_not_cover_one_another():
    """Near duplicates of one object: the second box's lines cover the first's, and its caption
    would cover the first's; instead it goes below, so the first caption's colour still shows."""
    image = Image.new("RGB", (320, 120), (0, 0, 0))
    boxes = [CAR, CAR._replace(label=2)]
    drawing = np.asarray(draw_boxes_3d(image, CALIB, boxes, {1: "Car", 2: "Cyclist"}, bev=False))
    first, second = ((drawing == class_colour(label)).all(axis=-1) for label in (1, 2))
    assert first.sum() > 100 and second.sum() > first.sum()  # a caption's label, beside all of the lines
    rows = np.nonzero(first)[0]
    assert rows.max() < np.nonzero(second)[0].max()  # the second caption below the first


def test_a_caption_at_the_right_edge_moves_left_to_be_read_whole():
    """A box cut by the image's right edge: its caption (label above the box's top, v = 60) ends at
    the picture's edge instead of running off it."""
    right = CAR._replace(x=16.0)  # its corners project to u = 300 .. 340: beyond the 320 px image
    drawing = np.asarray(draw_boxes_3d(Image.new("RGB", (320, 120)), CALIB, [right], {1: "Car"}, bev=False))
    scale = drawing.shape[1] // 320
    label_rows = drawing[60 * scale - 8:60 * scale - 3]  # above the box's top edge: only the label
    columns = np.nonzero((label_rows == class_colour(1)).all(axis=-1).any(axis=0))[0]
    assert columns.max() == drawing.shape[1] - 1 and columns.min() < 300 * scale - 40


def test_edges_behind_the_camera_are_cut_at_the_near_plane():
    from deformdetr.data.kitti import box_corners

    near = CAR._replace(z=0.5)  # its width spans z = -0.5 .. 1.5: the back half is behind the camera
    corners = box_corners(near.h, near.w, near.l, (near.x, near.y, near.z), near.ry)
    segments = np.array(projected_edges(CALIB, corners))
    assert len(segments) == 8 and np.isfinite(segments).all()  # the 4 edges wholly behind are left out
    # the 4 edges that cross the near plane end where it cuts them (x = +-2, y = 0 or 1.5, z = 0.1)
    ends = {tuple(np.round(p, 6)) for p in segments.reshape(-1, 2)}
    for x in (-2.0, 2.0):
        for y in (0.0, 1.5):
            assert tuple(np.round(by_hand(x, y, NEAR_PLANE), 6)) in ends
    draw_boxes_3d(Image.new("RGB", (320, 120)), CALIB, [near])  # draws without error


def test_bird_eye_view_puts_each_footprint_where_its_box_stands():
    near, far = CAR._replace(z=5.0), CAR._replace(label=2, x=6.0, z=15.0)
    view = np.asarray(bird_eye_view(CALIB, (320, 120), [near, far], 400))

    def extent(label):
        ys, xs = np.nonzero((view == np.array(class_colour(label))).all(axis=-1))
        return xs.min(), xs.max(), ys.min(), ys.max()

    (nx0, nx1, ny0, ny1), (fx0, fx1, fy0, fy1) = extent(1), extent(2)
    metre = (nx1 - nx0) / 4.0  # the car is 4 m long across the view, 2 m deep
    assert (ny1 - ny0) == pytest.approx(2 * metre, abs=4)  # metres are as long up as across
    assert (ny0 + ny1) / 2 - (fy0 + fy1) / 2 == pytest.approx(10 * metre, abs=4)  # 10 m further: higher up
    assert (fx0 + fx1) / 2 - (nx0 + nx1) / 2 == pytest.approx(6 * metre, abs=4)  # 6 m to the right
    assert abs((nx0 + nx1) / 2 - view.shape[1] / 2) < 4  # the view is symmetric about the camera here


def test_the_picture_is_the_image_beside_the_view():
    image = Image.new("RGB", (320, 120), (10, 20, 30))
    picture = draw_boxes_3d(image, CALIB, [CAR, CAR._replace(label=0, x=-3.0, ry=math.pi / 2)], {0: "Ped", 1: "Car"})
    plain = draw_boxes_3d(image, CALIB, [CAR], bev=False)
    assert picture.width > plain.width and picture.height >= plain.height
    assert (np.asarray(picture) == class_colour(0)).all(axis=-1).any()
