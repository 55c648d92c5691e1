"""KITTI label and result files as devkit annotations: reading label folders, writing and reading
back result files."""

from __future__ import annotations

import numpy as np
import pytest

from deformdetr.eval.kitti import evaluate_kitti, read_kitti_label_file, read_kitti_result_dir, write_kitti_result_file
from deformdetr.eval.kitti import empty_annotation


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
    with pytest.raises(ValueError, match="bad.txt' line 1: expected 15 or 16 fields"):
        read_kitti_label_file(bad)


def test_a_label_file_with_bytes_that_are_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"Car 0 0 0 1 2 3 4 1 1 1 1 1 1 0\nCar\xe9 0 0 0 1 2 3 4 1 1 1 1 1 1 0\n")
    with pytest.raises(ValueError, match="latin1.txt.*line 2: not UTF-8"):
        read_kitti_label_file(bad)


def test_result_files_read_back_exactly_what_was_scored(tmp_path):
    # Detections with full-precision float64 values (as decoded): written and read back, they are
    # the same numbers, so the result folder evaluates to exactly the in-memory APs.
    rng = np.random.default_rng(0)
    gts, dts = [], []
    for image in range(6):
        n = 5
        x1, y1 = rng.uniform(0, 600, n), rng.uniform(100, 200, n)
        gt = dict(name=np.array(["Car", "Pedestrian", "Car", "Cyclist", "Car"]), truncated=rng.uniform(0, 0.2, n),
                  occluded=rng.integers(0, 2, n), alpha=rng.uniform(-3, 3, n),
                  bbox=np.c_[x1, y1, x1 + rng.uniform(30, 90, n), y1 + rng.uniform(30, 90, n)],
                  dimensions=rng.uniform(0.5, 4, (n, 3)), location=np.c_[rng.uniform(-8, 8, n), rng.uniform(1, 2, n),
                                                                        rng.uniform(5, 50, n)],
                  rotation_y=rng.uniform(-3, 3, n))
        dt = {k: np.array(v, copy=True) for k, v in gt.items()}
        for key in ("bbox", "dimensions", "location", "alpha", "rotation_y"):
            dt[key] = dt[key] + rng.normal(0, 0.05, dt[key].shape)
        dt["score"] = rng.uniform(0, 1, n)
        dt["truncated"], dt["occluded"] = np.zeros(n), np.zeros(n, dtype=np.int64)
        gts.append(gt)
        dts.append(dt)
        write_kitti_result_file(tmp_path / f"{image:06d}.txt", dt)
    back = read_kitti_result_dir(tmp_path, range(6))
    for read, written in zip(back, dts):
        for key in ("alpha", "bbox", "dimensions", "location", "rotation_y", "score"):
            assert np.array_equal(read[key], written[key]), key
    in_memory = evaluate_kitti(gts, dts).to_flat_dict()
    assert evaluate_kitti(gts, back).to_flat_dict() == in_memory
    assert 0 < in_memory["Car_3d_easy_R40"] < 100


def test_result_files_are_written_atomically(tmp_path):
    path = tmp_path / "000001.txt"
    write_kitti_result_file(path, [dict(name="Car", bbox=[1, 2, 3, 4], dimensions=[4, 1.5, 1.6], location=[1, 1.5, 9],
                                        rotation_y=0.5, score=0.7)])
    before = path.read_text()
    with pytest.raises(ValueError, match="one word"):
        write_kitti_result_file(path, [dict(name="Two words", bbox=[1, 2, 3, 4], dimensions=[4, 1.5, 1.6],
                                            location=[1, 1.5, 9], rotation_y=0.5, score=0.7)])
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["000001.txt"]
    write_kitti_result_file(path, empty_annotation())
    assert path.read_text() == "" and [p.name for p in tmp_path.iterdir()] == ["000001.txt"]
