"""KITTI label and result files as devkit annotations: reading label folders, writing and reading
back result files."""

from __future__ import annotations

import numpy as np
import pytest

from deformdetr.eval import read_kitti_label_file, read_kitti_result_dir, write_kitti_result_file


def test_label_files_round_trip(tmp_path):
    label = tmp_path / "label_2" / "000007.txt"
    label.parent.mkdir()
    label.write_text(
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        "DontCare -1 -1 -10 737.69 163.56 790.86 197.98 -1 -1 -1 -1000 -1000 -1000 -10\n"
        "\n"
    )
    anno = read_kitti_label_file(label)
    assert anno["name"].tolist() == ["Car", "DontCare"]
    np.testing.assert_allclose(anno["dimensions"][0], [3.64, 1.65, 1.67])  # (l, h, w)
    np.testing.assert_allclose(anno["location"][0], [-0.65, 1.71, 46.70])
    assert anno["occluded"].tolist() == [0, -1]
    assert anno["score"].tolist() == [0.0, 0.0]

    anno["score"] = np.array([0.93, 0.1])
    write_kitti_result_file(tmp_path / "results" / "000007.txt", anno)
    write_kitti_result_file(tmp_path / "results" / "000008.txt", [])
    lines = (tmp_path / "results" / "000007.txt").read_text().splitlines()
    assert len(lines) == 2 and len(lines[0].split()) == 16
    assert lines[0].split()[8:11] == ["1.65", "1.67", "3.64"]  # h w l in the file
    back = read_kitti_result_dir(tmp_path / "results", [7, "000008"])
    assert len(back[1]["name"]) == 0 and back[1]["bbox"].shape == (0, 4)
    for key in ("truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y", "score"):
        np.testing.assert_allclose(back[0][key], anno[key], err_msg=key)
    with pytest.raises(FileNotFoundError):
        read_kitti_result_dir(tmp_path / "results", [9])
    assert len(read_kitti_result_dir(tmp_path / "results", [9], missing_ok=True)[0]["name"]) == 0

    # Per-object dicts work too; alpha defaults to -10 (no orientation).
    write_kitti_result_file(tmp_path / "one.txt", [dict(name="Pedestrian", bbox=[1, 2, 3, 4], dimensions=[0.8, 1.7, 0.6],
                                                        location=[1, 1.5, 9], rotation_y=0.5, score=0.7)])
    one = read_kitti_label_file(tmp_path / "one.txt")
    assert one["alpha"].tolist() == [-10.0] and one["dimensions"].tolist() == [[0.8, 1.7, 0.6]]
    bad = tmp_path / "bad.txt"
    bad.write_text("Car 0 0 0 1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: expected 15 or 16 fields"):
        read_kitti_label_file(bad)


def test_a_label_file_with_bytes_that_are_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"Car 0 0 0 1 2 3 4 1 1 1 1 1 1 0\nCar\xe9 0 0 0 1 2 3 4 1 1 1 1 1 1 0\n")
    with pytest.raises(ValueError, match="latin1.txt.*line 2: not UTF-8"):
        read_kitti_label_file(bad)
