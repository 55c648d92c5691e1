"""The cameras of images to predict on: calib files (one for all, or by image stem), intrinsics, and
the camera of the part of an image MonoDETR sees."""

import numpy as np
import pytest

from deformdetr.data.camera import image_cameras, model_view, parse_intrinsics
from deformdetr.data.kitti import Calibration, write_calib

P2 = np.array([[700.0, 0, 600, 45], [0, 700, 180, 0.2], [0, 0, 1, 0.003]], dtype=np.float32)


def test_intrinsics_make_a_camera_without_offsets():
    calib = parse_intrinsics("721.5, 720,609.6,172.9")
    assert np.allclose(calib.P2, [[721.5, 0, 609.6, 0], [0, 720, 172.9, 0], [0, 0, 1, 0]])


@pytest.mark.parametrize("text, match", [("721,721,600", "fx,fy,cx,cy"), ("a,b,c,d", "fx,fy,cx,cy"),
                                         ("0,700,600,180", "must be positive"), ("700,700,nan,180", "finite")])
def test_bad_intrinsics_are_one_line_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_intrinsics(text)


def test_one_calib_file_serves_every_image(tmp_path):
    write_calib(tmp_path / "cam.txt", P2)
    cameras = image_cameras(["a.png", "b/c.jpg"], calib=str(tmp_path / "cam.txt"))
    assert len(cameras) == 2 and all(np.array_equal(c.P2, P2) for c in cameras)


def test_a_calib_folder_is_matched_by_image_stem_and_missing_ones_are_named(tmp_path):
    other = P2.copy()
    other[0, 2] = 500
    write_calib(tmp_path / "000001.txt", P2)
    write_calib(tmp_path / "000002.txt", other)
    cameras = image_cameras(["x/000002.png", "y/000001.jpg"], calib=str(tmp_path))
    assert cameras[0].cu == 500 and cameras[1].cu == 600
    with pytest.raises(FileNotFoundError, match=r"2 of 3 images have no calib file in .*: 000003.png, 000004.png$"):
        image_cameras(["000001.png", "000003.png", "000004.png"], calib=str(tmp_path))


@pytest.mark.parametrize("kwargs, match", [({}, "needs the camera of the images"),
                                           ({"calib": "c.txt", "intrinsics": "1,1,1,1"}, "exclude each other"),
                                           ({"calib": "nowhere"}, "no such file or folder")])
def test_the_camera_must_be_given_once(kwargs, match):
    with pytest.raises((ValueError, OSError), match=match):
        image_cameras(["a.png"], **kwargs)


def test_images_of_the_input_aspect_ratio_are_seen_whole_as_in_evaluation():
    calib = Calibration(P2)
    kitti = model_view(calib, (1242, 375), (1280, 384))  # 1% off 1280:384, as KITTI's images
    assert kitti.whole_image and kitti.size == (1242, 375) and np.array_equal(kitti.P2, P2)
    assert model_view(calib, (640, 192), (1280, 384)).top == 0


def test_other_images_give_the_camera_of_the_band_the_network_sees():
    calib = Calibration(P2)
    view = model_view(calib, (1920, 1080), (1280, 384))  # scaled by 2/3: 576 rows about the middle
    assert view.size == (1920, 576) and view.top == 252 and not view.whole_image
    point = np.array([[2.0, 1.0, 15.0]])
    # the band's camera puts a point where the image's camera does, less the band's first row
    assert np.allclose(Calibration(view.P2).project(point), calib.project(point) - [0, 252], atol=1e-4)
    wide = model_view(calib, (1600, 200), (1280, 384))  # the input reaches beyond the image
    assert wide.size == (1600, 480) and wide.top == -140
