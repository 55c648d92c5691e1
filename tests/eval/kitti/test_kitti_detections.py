"""MonoDETR's decoded detections as devkit annotations, scored and written as result files."""

import numpy as np
import pytest

from deformdetr.eval.kitti import kitti_detections, read_kitti_result_dir, write_kitti_result_dir
from deformdetr.models.mono.decode import Detection3D

PEDESTRIAN = Detection3D(label=0, alpha=-0.3, x1=100.25, y1=150.5, x2=130.75, y2=230.125, h=1.72, w=0.61, l=0.83,
                         x=-2.5, y=1.63, z=14.2, ry=-0.45, score=0.8125)


def test_training_labels_become_names_and_sizes_the_devkit_order():
    car = PEDESTRIAN._replace(label=1.0, h=1.5, w=1.6, l=3.9, score=0.5)  # decoded labels may be floats
    anno = kitti_detections([PEDESTRIAN, car])
    assert anno["name"].tolist() == ["Pedestrian", "Car"]  # label 0 is Pedestrian (training order)
    assert anno["dimensions"].tolist() == [[0.83, 1.72, 0.61], [3.9, 1.5, 1.6]]  # (l, h, w)
    assert anno["bbox"][0].tolist() == [100.25, 150.5, 130.75, 230.125]
    assert anno["location"][0].tolist() == [-2.5, 1.63, 14.2]
    assert anno["alpha"].tolist() == [-0.3, -0.3] and anno["rotation_y"].tolist() == [-0.45, -0.45]
    assert anno["score"].tolist() == [0.8125, 0.5]
    assert anno["truncated"].tolist() == [0, 0] and anno["occluded"].tolist() == [0, 0]
    empty = kitti_detections([])
    assert empty["bbox"].shape == (0, 4) and empty["dimensions"].shape == (0, 3) and len(empty["name"]) == 0
    with pytest.raises(ValueError, match="training label"):
        kitti_detections([PEDESTRIAN._replace(label=3)])


def test_the_result_files_hold_the_scored_annotation(tmp_path):
    scored = [kitti_detections([PEDESTRIAN]), kitti_detections([])]
    write_kitti_result_dir(tmp_path, [4, 5], scored)
    assert (tmp_path / "000004.txt").read_text() == (
        "Pedestrian 0.0 0 -0.3 100.25 150.5 130.75 230.125 1.72 0.61 0.83 -2.5 1.63 14.2 -0.45 0.8125\n")
    for back, written in zip(read_kitti_result_dir(tmp_path, [4, 5]), scored):
        for key, value in written.items():
            assert np.array_equal(back[key], value), key
    with pytest.raises(ValueError, match="one annotation per id"):
        write_kitti_result_dir(tmp_path, [4, 5, 6], scored)
