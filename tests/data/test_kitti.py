"""KITTI file formats and camera geometry: label/calib round trips, projections, angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deformdetr.data import Calibration, KittiObject, read_calib, read_labels, write_calib, write_labels
from deformdetr.data.kitti import (
    KittiLabelLine,
    kitti_class_name,
    kitti_label,
    kitti_level,
    parse_label_line,
    read_label_lines,
    write_label_lines,
)
from deformdetr.models.mono import decode as mono_decode

P2 = np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791],
               [0.0, 0.0, 1.0, 0.002745884]], dtype=np.float32)

# The first lines of KITTI's training/calib/000000.txt layout (values of a real file).
CALIB_TEXT = """P0: 7.070493e+02 0.000000e+00 6.040814e+02 0.000000e+00 0.000000e+00 7.070493e+02 1.805066e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P1: 7.070493e+02 0.000000e+00 6.040814e+02 -3.797842e+02 0.000000e+00 7.070493e+02 1.805066e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
P2: 7.070493e+02 0.000000e+00 6.040814e+02 4.575831e+01 0.000000e+00 7.070493e+02 1.805066e+02 -3.454157e-01 0.000000e+00 0.000000e+00 1.000000e+00 4.981016e-03
P3: 7.070493e+02 0.000000e+00 6.040814e+02 -3.341081e+02 0.000000e+00 7.070493e+02 1.805066e+02 2.330660e+00 0.000000e+00 0.000000e+00 1.000000e+00 3.201153e-03
R0_rect: 9.999128e-01 1.009263e-02 -8.511932e-03 -1.012729e-02 9.999406e-01 -4.037671e-03 8.470675e-03 4.123522e-03 9.999556e-01
Tr_velo_to_cam: 6.927964e-03 -9.999722e-01 -2.757829e-03 -2.457729e-02 -1.162982e-03 2.749836e-03 -9.999955e-01 -6.127237e-02 9.999753e-01 6.931141e-03 -1.143899e-03 -3.321029e-01
Tr_imu_to_velo: 9.999976e-01 7.553071e-04 -2.035826e-03 -8.086759e-01 -7.854027e-04 9.998898e-01 -1.482298e-02 3.195559e-01 2.024406e-03 1.482454e-02 9.998881e-01 -7.997231e-01
"""

LABEL_TEXT = """Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01
Car 0.12 1 -1.57 0.00 181.21 140.61 261.37 1.41 1.58 4.36 -16.73 2.35 26.91 -2.15
DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10
"""


def test_read_official_calib(tmp_path):
    path = tmp_path / "000000.txt"
    path.write_text(CALIB_TEXT)
    calib = read_calib(path)
    assert calib.P2.shape == (3, 4) and calib.P2.dtype == np.float32
    assert calib.P2[0, 3] == pytest.approx(45.75831) and calib.P2[2, 3] == pytest.approx(4.981016e-03)
    assert calib.fu == pytest.approx(707.0493) and calib.cv == pytest.approx(180.5066)
    assert calib.tx == pytest.approx(-45.75831 / 707.0493)
    assert calib.R0[0, 1] == pytest.approx(1.009263e-02)
    assert calib.V2C[2, 0] == pytest.approx(9.999753e-01)


def test_calib_round_trip_and_errors(tmp_path):
    path = tmp_path / "c.txt"
    write_calib(path, P2)
    assert np.array_equal(read_calib(path).P2, P2)
    (tmp_path / "bad.txt").write_text("P0: 1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt"):
        read_calib(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_calib(tmp_path / "missing.txt")


def test_label_round_trip(tmp_path):
    path = tmp_path / "000000.txt"
    path.write_text(LABEL_TEXT)
    objects = read_labels(path)
    assert [o.type for o in objects] == ["Pedestrian", "Car", "DontCare"]
    car = objects[1]
    assert car.truncation == pytest.approx(0.12) and car.occlusion == 1 and car.alpha == pytest.approx(-1.57)
    assert np.allclose(car.box2d, [0.0, 181.21, 140.61, 261.37])
    assert (car.h, car.w, car.l) == pytest.approx((1.41, 1.58, 4.36))
    assert np.allclose(car.location, [-16.73, 2.35, 26.91]) and car.ry == pytest.approx(-2.15)
    assert car.score is None
    # the official format (2 decimals, integer occlusion): object lines come back unchanged
    assert [o.to_kitti_line() for o in objects[:2]] == LABEL_TEXT.splitlines()[:2]
    write_labels(tmp_path / "copy.txt", objects)
    again = read_labels(tmp_path / "copy.txt")
    for a, b in zip(objects, again):
        assert a.type == b.type and a.occlusion == b.occlusion
        assert np.allclose([a.truncation, a.alpha, a.h, a.w, a.l, a.ry], [b.truncation, b.alpha, b.h, b.w, b.l, b.ry])
        assert np.allclose(a.box2d, b.box2d) and np.allclose(a.location, b.location)
    scored = KittiObject.from_line(car.to_kitti_line() + " 0.87")
    assert scored.score == pytest.approx(0.87) and scored.to_kitti_line().endswith(" 0.87")
    (tmp_path / "bad.txt").write_text("Car 0 0\n")
    with pytest.raises(ValueError, match=r"bad.txt' line 1"):
        read_labels(tmp_path / "bad.txt")


def test_label_lines_read_and_write_exactly(tmp_path):
    # The line type keeps the numbers as written (float64), where KittiObject keeps the official float32.
    line = KittiLabelLine.parse(LABEL_TEXT.splitlines()[1] + " 0.87")
    assert line.type == "Car" and line.box2d == (0.0, 181.21, 140.61, 261.37) and line.location == (-16.73, 2.35, 26.91)
    assert (line.h, line.w, line.l, line.ry, line.score) == (1.41, 1.58, 4.36, -2.15, 0.87)
    assert KittiObject.from_label_line(line).box2d.dtype == np.float32
    assert line.format(2) == LABEL_TEXT.splitlines()[1] + " 0.87"
    rng = np.random.default_rng(0)
    lines = [KittiLabelLine("Cyclist", 0.0, 1, *rng.normal(size=1), tuple(rng.uniform(0, 1000, 4)),
                            *rng.uniform(0, 4, 3), tuple(rng.normal(0, 20, 3)), *rng.normal(size=1), score)
             for score in (0.1 + 1e-12, float(np.float32(0.3)))]
    write_label_lines(tmp_path / "exact.txt", lines)  # by default, exactly
    assert read_label_lines(tmp_path / "exact.txt") == lines
    write_label_lines(tmp_path / "rounded.txt", lines, precision=2)
    assert read_label_lines(tmp_path / "rounded.txt")[0].box2d == tuple(round(x, 2) for x in lines[0].box2d)
    with pytest.raises(ValueError, match="one word"):
        KittiLabelLine("Person sitting", *line[1:]).format()


def test_label_files_are_written_atomically(tmp_path):
    path = tmp_path / "labels" / "000003.txt"  # the folder is created
    (tmp_path / "source.txt").write_text(LABEL_TEXT)
    objects = read_labels(tmp_path / "source.txt")
    write_labels(path, objects)
    before = path.read_text()
    bad = objects[0].copy()
    bad.type = ""
    with pytest.raises(ValueError, match="one word"):
        write_labels(path, objects + [bad])
    assert path.read_text() == before and [p.name for p in path.parent.iterdir()] == ["000003.txt"]


def test_parse_label_line_is_a_deprecated_alias():
    with pytest.deprecated_call(match="KittiLabelLine.parse"):
        name, numbers, score = parse_label_line(LABEL_TEXT.splitlines()[1])
    assert name == "Car" and len(numbers) == 14 and numbers[3:7] == [0.0, 181.21, 140.61, 261.37] and score is None


def test_levels():
    assert kitti_level(40, 0.15, 0) == ("Easy", 1)
    assert kitti_level(39, 0.0, 0) == ("Moderate", 2)
    assert kitti_level(30, 0.4, 2) == ("Hard", 3)
    assert kitti_level(24, 0.0, 0) == ("UnKnown", 4)
    assert kitti_level(30, 0.6, 0) == ("UnKnown", 4)
    assert kitti_level(100, 0.0, 3) == ("UnKnown", 4)
    assert kitti_level(10, -1, -1) == ("DontCare", 0)
    assert kitti_level(7, 0.0, 0, height_scale=0.25) == ("Moderate", 2)
    obj = KittiObject.from_line(LABEL_TEXT.splitlines()[0])
    assert obj.level() == ("Easy", 1)


def test_rect_to_img_and_back():
    calib = Calibration(P2)
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(-10, 10, 20), rng.uniform(-1, 3, 20), rng.uniform(3, 60, 20)], 1)
    pixels, depth = calib.rect_to_img(points)
    assert pixels.shape == (20, 2) and depth.shape == (20,)
    assert np.allclose(depth, points[:, 2], atol=1e-4)
    # the plain pinhole projection (dividing by the point's z, as the official)
    hom = np.concatenate([points, np.ones((20, 1))], 1) @ P2.T.astype(np.float64)
    assert np.allclose(pixels, hom[:, :2] / points[:, 2:3])
    back = calib.img_to_rect(pixels[:, 0], pixels[:, 1], points[:, 2])
    assert np.allclose(back, points, atol=1e-4)
    assert np.allclose(back, mono_decode.img_to_rect(P2, pixels[:, 0], pixels[:, 1], points[:, 2]))


def test_alpha_ry():
    calib = Calibration(P2)
    for ry in np.linspace(-3.1, 3.1, 13):
        for u in (0.0, calib.cu, 1241.0):
            alpha = calib.ry2alpha(ry, u)
            assert -math.pi <= alpha <= math.pi
            assert alpha == pytest.approx(ry - math.atan2(u - calib.cu, calib.fu)) or abs(alpha - ry) > 2
            assert calib.alpha2ry(alpha, u) == pytest.approx(ry, abs=1e-9)
            assert alpha == pytest.approx(mono_decode.ry2alpha(P2, ry, u))
    assert calib.ry2alpha(0.5, calib.cu) == pytest.approx(0.5)  # straight ahead: alpha = ry
    assert calib.ry2alpha(3.0, calib.cu + calib.fu) == pytest.approx(3.0 - math.pi / 4)
    assert calib.ry2alpha(-3.0, calib.cu + calib.fu) == pytest.approx(-3.0 - math.pi / 4 + 2 * math.pi)


def test_corners_and_centre():
    obj = KittiObject("Car", 0, 0, 0, [0, 0, 1, 1], 1.5, 1.6, 3.9, [1.0, 1.65, 20.0], 0.7)
    corners = obj.corners3d()
    assert corners.shape == (8, 3)
    assert np.allclose(corners[:4].mean(0), obj.location)  # bottom face around the location
    assert np.allclose(corners.mean(0), obj.center_3d)
    assert np.allclose(corners[4:, 1], 1.65 - 1.5)
    assert np.linalg.norm(corners[0] - corners[1]) == pytest.approx(1.6)  # width along z (ry = 0)
    assert np.linalg.norm(corners[1] - corners[2]) == pytest.approx(3.9)


@pytest.mark.parametrize("second_line, message", [
    ("Car 0.00 0 -1.57 x 181.21 140.61 261.37 1.41 1.58 4.36 -16.73 2.35 26.91 -2.15", "could not convert"),
    ("Car 0.00 0", "expected 15 or 16 fields"),
])
def test_malformed_label_line_names_file_and_line(tmp_path, second_line, message):
    path = tmp_path / "000007.txt"
    path.write_text(LABEL_TEXT.splitlines()[0] + "\n\n" + second_line + "\n")
    with pytest.raises(ValueError, match=rf"000007.txt' line 3: {message}"):
        read_labels(path)


def test_label_or_calib_bytes_that_are_not_text_name_file_and_line(tmp_path):
    path = tmp_path / "000008.txt"
    path.write_bytes(LABEL_TEXT.splitlines()[0].encode() + b"\nCar 0.00 0 \xff\xfe\n")
    with pytest.raises(ValueError, match=r"000008.txt' line 2: not UTF-8 text"):
        read_labels(path)
    with pytest.raises(ValueError, match=r"000008.txt' line 2: not UTF-8 text"):
        read_calib(path)


def test_calib_with_bad_numbers_names_file_and_line(tmp_path):
    path = tmp_path / "000009.txt"
    path.write_text(CALIB_TEXT.replace("R0_rect: 9.999128e-01", "R0_rect: nine"))
    with pytest.raises(ValueError, match=r"000009.txt' line 5: bad numbers for 'R0_rect'"):
        read_calib(path)


def test_training_labels_and_class_names_convert_both_ways():
    # The official MonoDETR training order, which is not the devkit's (Car first).
    assert [kitti_class_name(i) for i in range(3)] == ["Pedestrian", "Car", "Cyclist"]
    assert [kitti_label(name) for name in ("Pedestrian", "Car", "Cyclist")] == [0, 1, 2]
    assert kitti_class_name(np.float32(1.0)) == "Car"  # decoded rows hold labels as floats
    for bad in (3, -1, 0.5):
        with pytest.raises(ValueError, match="0 Pedestrian, 1 Car, 2 Cyclist"):
            kitti_class_name(bad)
    with pytest.raises(ValueError, match="training classes"):
        kitti_label("Van")
