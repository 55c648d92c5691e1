"""Pictures of 3D detections: the boxes projected onto the image (their front faces crossed, each
captioned with its number, class, score and depth), beside a bird's-eye view of the scene (the
camera at the origin, x to the right and z ahead in metres, the camera's field of view, each box's
footprint with its front edge thick and its number). Colours mark classes, as in the 2D drawings.
Captions and numbers that would cover one another are put one below the other."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from deformdetr.data.kitti import BOX_EDGES, FRONT_FACE, Calibration, box_corners
from deformdetr.engine.visualize import class_colour, draw_caption, enlarged

__all__ = ["draw_boxes_3d", "projected_edges", "bird_eye_view", "NEAR_PLANE"]

#: Edges are cut where they pass behind this depth (m): a pinhole projects nothing behind it.
NEAR_PLANE = 0.1
_BEV_MIN_HEIGHT = 400
_MARGIN = 36  # px around the bird's-eye view's plot, room for its axis labels
_BACKGROUND = (250, 250, 250)
_GRID = (215, 215, 215)
_INK = (60, 60, 60)


def _corners(box) -> np.ndarray:
    return box_corners(box.h, box.w, box.l, (box.x, box.y, box.z), box.ry)


def projected_edges(calib: Calibration, corners: np.ndarray, edges=BOX_EDGES) -> list[tuple]:
    """The ``edges`` (pairs of corner indices) of a box's (8, 3) ``corners`` as pixel segments
    ((u0, v0), (u1, v1)) by ``calib``'s pinhole projection; the part of an edge nearer than
    :data:`NEAR_PLANE` is cut off, and an edge wholly behind it is left out."""
    segments = []
    for i, j in edges:
        a, b = corners[i].astype(np.float64), corners[j].astype(np.float64)
        if a[2] < NEAR_PLANE and b[2] < NEAR_PLANE:
            continue
        if a[2] < NEAR_PLANE or b[2] < NEAR_PLANE:
            cut = a + (b - a) * (NEAR_PLANE - a[2]) / (b[2] - a[2])
            a, b = (cut, b) if a[2] < NEAR_PLANE else (a, cut)
        (u0, v0), (u1, v1) = calib.project(np.stack([a, b]))
        segments.append(((u0, v0), (u1, v1)))
    return segments


def _font(size: int):
    return ImageFont.load_default(size=size)


def draw_boxes_3d(image: Image.Image, calib: Calibration, boxes: Sequence,
                  class_names: Optional[Mapping[int, str]] = None, bev: bool = True) -> Image.Image:
    """``image`` with the 3D ``boxes`` drawn on it and, with ``bev``, a bird's-eye view beside it.
    ``boxes``: rows with the fields of ``models.mono.decode.Detection3D`` (label, h, w, l, x, y, z
    (bottom centre, camera frame), ry, score); ``calib`` the image's camera; ``class_names``
    {label: name}. Boxes are numbered in the given order, in both panels."""
    canvas, scale = enlarged(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 150))
    font = _font(max(11, min(canvas.size) // 22))
    captions = []
    for number, box in enumerate(boxes, 1):
        color = class_colour(box.label)
        corners = _corners(box)
        for (u0, v0), (u1, v1) in projected_edges(calib, corners):
            draw.line([(u0 * scale, v0 * scale), (u1 * scale, v1 * scale)], fill=color, width=width)
        a, b, c, d = FRONT_FACE  # the front face crossed: its diagonals
        for (u0, v0), (u1, v1) in projected_edges(calib, corners, ((a, c), (b, d))):
            draw.line([(u0 * scale, v0 * scale), (u1 * scale, v1 * scale)], fill=color, width=max(1, width // 2))
        visible = corners[corners[:, 2] >= NEAR_PLANE]
        if len(visible):
            pixels = calib.project(visible) * scale
            x0 = float(np.clip(pixels[:, 0].min(), 0, canvas.width - 1))
            y0 = float(np.clip(pixels[:, 1].min(), 0, canvas.height - 1))
            name = (class_names or {}).get(int(box.label), str(int(box.label)))
            captions.append((x0, y0, f"{number} {name} {float(box.score):.2f} {float(box.z):.1f}m", color))
    # The captions over all the lines, inside the picture (moved left at its right edge); one that
    # would cover an earlier one (near duplicates of one object put theirs in one place) moves
    # down below it.
    taken: list[tuple] = []
    for x0, y0, caption, color in captions:
        left, top, right, bottom = draw.textbbox((x0, y0), caption, font=font)
        width, height = right - left + 2, bottom - top + 2  # draw_caption's label, above (x0, y0)
        x0 = max(0.0, min(x0, canvas.width - width))
        label_top = max(0.0, y0 - height)
        label_top += _shift_below(taken, (x0, label_top, x0 + width, label_top + height))
        draw_caption(draw, x0, label_top + height, caption, color, font)
    if not bev:
        return canvas
    view = bird_eye_view(calib, image.size, boxes, max(_BEV_MIN_HEIGHT, canvas.height))
    picture = Image.new("RGB", (canvas.width + view.width, max(canvas.height, view.height)), _BACKGROUND)
    picture.paste(canvas, (0, (picture.height - canvas.height) // 2))
    picture.paste(view, (canvas.width, 0))
    return picture


def _grid_step(span: float) -> float:
    """A round grid spacing (m) giving 4 to 10 lines over ``span``."""
    for step in (1, 2, 5, 10, 20, 50, 100):
        if span / step <= 10:
            return float(step)
    return 10.0 ** math.ceil(math.log10(span / 10))


def bird_eye_view(calib: Calibration, image_size: Sequence[int], boxes: Sequence, height: int) -> Image.Image:
    """The scene from above, ``height`` px high: the camera at the origin looking up the picture
    (z ahead, x to the right, metres on both axes), its field of view (the image's left and right
    columns), and each box's footprint in its class colour, front edge thick, numbered."""
    footprints = [_corners(box)[:4][:, [0, 2]] for box in boxes]  # the bottom face, (x, z)
    far = max([20.0] + [float(f[:, 1].max()) + 5 for f in footprints])
    step = _grid_step(far)
    far = step * math.ceil(far / step)
    # The field of view's edges: where the image's first and last columns look, at depth `far`.
    left, right = ((u - calib.cu) / calib.fu * far for u in (0.0, float(image_size[0])))
    xs = [left, right] + [float(v) for f in footprints for v in (f[:, 0].min() - 2, f[:, 0].max() + 2)]
    x_min, x_max = step * math.floor(min(xs) / step), step * math.ceil(max(xs) / step)
    per_metre = (height - 2 * _MARGIN) / far
    width = int(round((x_max - x_min) * per_metre)) + 2 * _MARGIN
    view = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(view)
    font = _font(12)

    def pixel(x: float, z: float) -> tuple[float, float]:
        return _MARGIN + (x - x_min) * per_metre, height - _MARGIN - z * per_metre

    for index in range(int(round((x_max - x_min) / step)) + 1):
        x = x_min + index * step
        draw.line([pixel(x, 0), pixel(x, far)], fill=_GRID)
        draw.text(pixel(x, 0), f"{x:g}", fill=_INK, font=font, anchor="mt")
    for index in range(int(round(far / step)) + 1):
        z = index * step
        draw.line([pixel(x_min, z), pixel(x_max, z)], fill=_GRID)
        if index:  # z = 0 is the camera's row, where the x labels begin
            draw.text((_MARGIN - 4, pixel(x_min, z)[1]), f"{z:g}", fill=_INK, font=font, anchor="rm")
    draw.text((width - 4, height - 4), "x (m)", fill=_INK, font=font, anchor="rd")
    draw.text((4, 4), "z (m)", fill=_INK, font=font, anchor="la")
    draw.line([pixel(left, far), pixel(0, 0), pixel(right, far)], fill=_INK, width=1)
    cx, cy = pixel(0, 0)
    draw.polygon([(cx, cy - 7), (cx - 5, cy + 3), (cx + 5, cy + 3)], fill=_INK)  # the camera
    line = max(1, height // 250)
    numbers = []
    for number, (box, footprint) in enumerate(zip(boxes, footprints), 1):
        color = class_colour(box.label)
        points = [pixel(x, z) for x, z in footprint]
        draw.polygon(points, outline=color, width=line)
        front = [points[FRONT_FACE[0]], points[FRONT_FACE[1]]]
        draw.line(front, fill=color, width=3 * line)
        right_most = max(points, key=lambda p: p[0])
        numbers.append(((right_most[0] + 3, right_most[1]), str(number), color))
    taken: list[tuple] = []
    for (x, y), text, color in numbers:  # one below the other where they would overlap
        y += _shift_below(taken, draw.textbbox((x, y), text, font=font, anchor="lm"))
        draw.text((x, y), text, fill=color, font=font, anchor="lm")
    return view


def _shift_below(taken: list, rect: Sequence[float]) -> float:
    """How far down the rectangle ``rect`` (x0, y0, x1, y1) must move to cover none of those in
    ``taken``: 0 where it covers none, else just below those it would cover, as often as needed.
    The rectangle so moved is added to ``taken``."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    shift = 0.0
    for _ in range(len(taken) + 1):  # each move leaves at least one rectangle above for good
        moved = (x0, y0 + shift, x1, y1 + shift)
        covered = [r for r in taken if moved[0] < r[2] and r[0] < moved[2] and moved[1] < r[3] and r[1] < moved[3]]
        if not covered:
            break
        shift = max(r[3] for r in covered) - y0
    taken.append(moved)
    return shift
