"""KITTI evaluation: hand-computed cases, a plain-loop restatement of the devkit's rules on random
data, and the label-file round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deformdetr.eval import (
    evaluate_kitti,
    read_kitti_label_file,
    read_kitti_result_dir,
    write_kitti_result_file,
)
from deformdetr.eval import kitti
from deformdetr.ops import bev_box_iou, box3d_iou


# ---- Building annotations.


def make_objects(objects: list[dict], with_score: bool) -> dict:
    """A devkit annotation dict from per-object dicts (defaults: an easy, unoccluded object)."""
    keys = ["name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y"]
    if with_score:
        keys.append("score")
    defaults = dict(truncated=0.0, occluded=0, alpha=0.0, rotation_y=0.0, score=1.0)
    anno = {k: [o.get(k, defaults.get(k)) for o in objects] for k in keys}
    out = {"name": np.array(anno["name"], dtype="<U16")}
    for k in keys[1:]:
        width = {"bbox": 4, "dimensions": 3, "location": 3}.get(k)
        out[k] = np.array(anno[k], dtype=np.float64).reshape((-1, width) if width else (-1,))
    return out


def car(index: int, **overrides) -> dict:
    """A car well clear of every other `index`: 2D box 100 px tall, 3D box 4 x 1.5 x 1.8 m."""
    x = 3.0 * (index % 10) - 15.0
    z = 10.0 + 8.0 * (index // 10)
    obj = dict(
        name="Car",
        bbox=[40.0 * (index % 10), 100.0 + 5 * (index // 10), 40.0 * (index % 10) + 30.0, 200.0 + 5 * (index // 10)],
        dimensions=[4.0, 1.5, 1.8],  # (l, h, w)
        location=[x, 1.6, z],
        rotation_y=0.1 * index,
        alpha=0.1 * index,
    )
    obj.update(overrides)
    return obj


def perfect_detections(gt_annos, scores=None):
    dts = []
    for i, g in enumerate(gt_annos):
        d = {k: np.array(v, copy=True) for k, v in g.items()}
        n = len(g["name"])
        d["score"] = np.linspace(0.9, 0.5, n) if scores is None else scores[i]
        keep = d["name"] != "DontCare"
        dts.append({k: v[keep] for k, v in d.items()})
    return dts


def one_car_per_image(count: int, **overrides):
    return [make_objects([car(i, **overrides)], False) for i in range(count)]


def ap(result, metric, cls="Car"):
    return [result.ap[cls][metric][d] for d in ("easy", "moderate", "hard")]


# ---- Hand-computed cases.


def test_ground_truth_as_detections_scores_100_everywhere():
    rng = np.random.default_rng(0)
    gts = []
    for image in range(45):
        objs = [car(0), car(1, name="Pedestrian", dimensions=[0.8, 1.7, 0.6]),
                car(2, name="Cyclist", dimensions=[1.8, 1.7, 0.6]),
                car(3, name="Van"), car(4, name="DontCare", dimensions=[-1, -1, -1],
                                         location=[-1000, -1000, -1000], rotation_y=-10)]
        for o in objs:
            o["rotation_y"] = float(rng.uniform(-math.pi, math.pi))
        gts.append(make_objects(objs, False))
    dts = perfect_detections(gts)
    for positions in (40, 11):
        result = evaluate_kitti(gts, dts, recall_positions=positions)
        for cls in ("Car", "Pedestrian", "Cyclist"):
            for metric in ("bbox", "bev", "3d", "aos"):
                assert ap(result, metric, cls) == pytest.approx([100.0] * 3), (cls, metric)
                assert [result.ap_loose[cls][metric][d] for d in kitti.DIFFICULTIES] == pytest.approx(
                    [100.0] * 3
                )
    assert "Car AP_R40@0.70, 0.70, 0.70:" in result.summary or "Car AP@0.70, 0.70, 0.70:" in result.summary
    flat = evaluate_kitti(gts, dts).to_flat_dict()
    assert flat["Car_3d_moderate_R40"] == pytest.approx(100.0)
    assert flat["Cyclist_image_hard"] == pytest.approx(100.0)


def test_a_false_positive_above_every_true_positive():
    # 41 cars, each found: 41 thresholds, precision 1 at each, AP 100. One more detection, far
    # from every car and scored above them all, makes the precision k / (k + 1) at the k-th
    # threshold; made monotone from the right it is 41/42 at every recall position.
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    assert ap(evaluate_kitti(gts, dts), "3d") == pytest.approx([100.0] * 3)
    stray = make_objects([car(99, location=[50.0, 1.6, 70.0], bbox=[500, 0, 540, 100])], True)
    stray["score"][:] = 0.99
    for key in dts[0]:
        dts[0][key] = np.concatenate([dts[0][key], stray[key]])
    for positions in (40, 11):
        result = evaluate_kitti(gts, dts, recall_positions=positions)
        for metric in ("bbox", "bev", "3d"):
            assert ap(result, metric) == pytest.approx([100.0 * 41 / 42] * 3), (metric, positions)
    # Scored below every true positive, the same detection costs nothing.
    dts[0]["score"][-1] = 0.1
    assert ap(evaluate_kitti(gts, dts), "3d") == pytest.approx([100.0] * 3)


def test_a_detection_below_the_minimum_overlap_is_a_miss():
    # 41 cars; the lowest-scored detection is lifted by half the car's height: BEV and 2D still
    # match, the 3D IoU is 1/3 < 0.7. 40 thresholds for 41 ground truths: precision 1 at recall
    # positions 0..39 and 0 at 40, AP_R40 = 39/40.
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    dts[0]["location"][0, 1] -= 0.75
    result = evaluate_kitti(gts, dts)
    assert ap(result, "bbox") == pytest.approx([100.0] * 3)
    assert ap(result, "bev") == pytest.approx([100.0] * 3)
    assert ap(result, "3d") == pytest.approx([97.5] * 3)
    # The loose 3D setting (0.5 for cars) still rejects 1/3.
    assert [result.ap_loose["Car"]["3d"][d] for d in kitti.DIFFICULTIES] == pytest.approx([97.5] * 3)
    # R11: positions 0, 4, ..., 36 have precision 1, position 40 has 0.
    result = evaluate_kitti(gts, dts, recall_positions=11)
    assert ap(result, "3d") == pytest.approx([100.0 * 10 / 11] * 3)


def test_dontcare_regions_excuse_2d_false_positives_only():
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    region = [600.0, 50.0, 700.0, 200.0]
    gts[0] = make_objects(
        [car(0), car(98, name="DontCare", bbox=region, dimensions=[-1, -1, -1],
                     location=[-1000, -1000, -1000], rotation_y=-10)], False)
    # A high-scored detection inside the DontCare box (and nowhere near a car in 3D).
    stray = make_objects([car(99, location=[50.0, 1.6, 70.0], bbox=[610, 60, 690, 190])], True)
    stray["score"][:] = 0.99
    for key in dts[0]:
        dts[0][key] = np.concatenate([dts[0][key], stray[key]])
    result = evaluate_kitti(gts, dts)
    assert ap(result, "bbox") == pytest.approx([100.0] * 3)
    assert ap(result, "bev") == pytest.approx([100.0 * 41 / 42] * 3)
    assert ap(result, "3d") == pytest.approx([100.0 * 41 / 42] * 3)
    # Covering less than the minimum overlap of the detection's own area: a false positive.
    dts[0]["bbox"][-1] = [650, 60, 790, 190]  # 50 of 140 px wide inside the region
    assert ap(evaluate_kitti(gts, dts), "bbox") == pytest.approx([100.0 * 41 / 42] * 3)


def test_neighbouring_classes_and_other_classes_are_ignored():
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    # A Van labelled in image 0, detected as a Car with the top score: ignored, not a FP.
    gts[0] = make_objects([car(0), car(5, name="Van")], False)
    van_hit = make_objects([car(5)], True)
    van_hit["score"][:] = 0.99
    for key in dts[0]:
        dts[0][key] = np.concatenate([dts[0][key], van_hit[key]])
    assert ap(evaluate_kitti(gts, dts), "3d") == pytest.approx([100.0] * 3)
    # A Truck is no neighbour of Car: the same detection on a Truck is a false positive.
    gts[0]["name"][1] = "Truck"
    assert ap(evaluate_kitti(gts, dts), "3d") == pytest.approx([100.0 * 41 / 42] * 3)
    # A Pedestrian detection does not count for Car at all.
    dts[0]["name"][1] = "Pedestrian"
    assert ap(evaluate_kitti(gts, dts), "3d") == pytest.approx([100.0] * 3)


def test_difficulty_assignment():
    objects = [
        car(0),  # easy: 100 px tall, unoccluded, untruncated
        car(1, bbox=[0, 0, 30, 30]),  # 30 px: moderate and hard
        car(2, bbox=[0, 0, 30, 40]),  # exactly 40 px: not easy (the height must exceed 40)
        car(3, occluded=1),  # moderate and hard
        car(4, occluded=2),  # hard
        car(5, occluded=3),  # never
        car(6, truncated=0.2),  # moderate and hard
        car(7, truncated=0.4),  # hard
        car(8, truncated=0.6),  # never
        car(9, bbox=[0, 0, 30, 25]),  # 25 px: never
        car(10, name="Van"),  # ignored for Car at every level
        car(11, name="Pedestrian"),  # another class
        car(12, name="DontCare"),
    ]
    gt = kitti._Flat([make_objects(objects, False)], "gt", with_score=False)
    dt = kitti._Flat([make_objects([car(0), car(1, bbox=[0, 0, 10, 34]), car(2, name="Tram", bbox=[0, 0, 1, 5])], True)],
                     "dt", with_score=True)
    expected_gt = {
        0: [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1],
        1: [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, -1, -1],
        2: [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, -1, -1],
    }
    expected_dt = {0: [0, 1, 1], 1: [0, 0, 1], 2: [0, 0, 1]}  # short detections are ignored
    for difficulty in range(3):
        ignored_gt, ignored_dt, valid = kitti._clean(gt, dt, "Car", difficulty)
        assert ignored_gt.tolist() == expected_gt[difficulty], difficulty
        assert ignored_dt.tolist() == expected_dt[difficulty], difficulty
        assert valid == expected_gt[difficulty].count(0)


def test_no_ground_truth_or_no_detections():
    gts = one_car_per_image(3)
    empty = [kitti.empty_annotation() for _ in gts]
    result = evaluate_kitti(gts, empty)
    assert ap(result, "3d") == [0.0, 0.0, 0.0]
    assert "aos" not in result.ap["Car"]  # no detection carries an alpha
    result = evaluate_kitti([kitti.empty_annotation(False)] * 3, perfect_detections(gts))
    assert ap(result, "bbox") == [0.0, 0.0, 0.0]


def test_arguments_are_checked():
    gts = one_car_per_image(2)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_kitti(gts, perfect_detections(gts)[:1])
    with pytest.raises(ValueError, match="recall_positions"):
        evaluate_kitti(gts, perfect_detections(gts), recall_positions=20)
    with pytest.raises(ValueError, match="classes"):
        evaluate_kitti(gts, perfect_detections(gts), classes=("Tram",))
    with pytest.raises(KeyError, match="score"):
        evaluate_kitti(gts, gts)
    result = evaluate_kitti(gts, perfect_detections(gts), classes=[0, "pedestrian"], metrics=["3d"])
    assert list(result.ap) == ["Car", "Pedestrian"] and list(result.ap["Car"]) == ["3d"]


# ---- The devkit's rules restated as plain loops, against the vectorized evaluation.


def random_annotations(images: int, seed: int):
    rng = np.random.default_rng(seed)
    names = ["Car", "Pedestrian", "Van", "DontCare", "Cyclist"]
    gts, dts = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        name = rng.choice(names, n, p=[0.5, 0.2, 0.1, 0.1, 0.1])
        x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 100, n)
        bbox = np.c_[x1, y1, x1 + rng.uniform(10, 120, n), y1 + rng.uniform(10, 120, n)]
        dims = np.c_[rng.uniform(1, 5, n), rng.uniform(1, 2, n), rng.uniform(0.5, 2, n)]
        loc = np.c_[rng.uniform(-4, 4, n), rng.uniform(1, 2, n), rng.uniform(5, 15, n)]
        gt = dict(name=name, truncated=rng.choice([0.0, 0.2, 0.4, 0.7], n),
                  occluded=rng.integers(0, 4, n).astype(float), alpha=rng.uniform(-3, 3, n),
                  bbox=bbox, dimensions=dims, location=loc, rotation_y=rng.uniform(-3, 3, n))
        gts.append(gt)
        # Detections: jittered copies (some twice) and strays; scores rounded to make ties.
        idx = np.r_[np.arange(n), rng.integers(0, max(n, 1), int(rng.integers(0, 4)) if n else 0)]
        k = len(idx)
        m = int(rng.integers(0, 4))
        dname = np.r_[np.where(rng.random(k) < 0.1, "Car", name[idx]) if k else np.zeros(0, "<U10"),
                      rng.choice(["Car", "Pedestrian"], m)]
        dname[dname == "DontCare"] = "Car"
        jitter = lambda a, s: a + rng.normal(0, s, a.shape)  # noqa: E731
        sx1, sy1 = rng.uniform(0, 300, m), rng.uniform(0, 100, m)
        dts.append(dict(
            name=dname,
            truncated=np.zeros(k + m), occluded=np.zeros(k + m),
            alpha=np.r_[jitter(gt["alpha"][idx], 0.3), rng.uniform(-3, 3, m)],
            bbox=np.r_[jitter(bbox[idx], 8), np.c_[sx1, sy1, sx1 + 50, sy1 + rng.uniform(10, 80, m)]],
            dimensions=np.r_[np.abs(jitter(dims[idx], 0.2)), np.c_[np.full(m, 3.0), np.ones(m), np.ones(m)]],
            location=np.r_[jitter(loc[idx], 0.3), np.c_[rng.uniform(-4, 4, m), np.ones(m) * 1.5, rng.uniform(5, 15, m)]],
            rotation_y=np.r_[jitter(gt["rotation_y"][idx], 0.2), rng.uniform(-3, 3, m)],
            score=np.round(rng.uniform(0, 1, k + m), 1),
        ))
    return gts, dts


def plain_overlaps(gt, dt, metric):
    """(detections, ground truths) overlaps of one image."""
    if metric == "bbox":
        out = np.zeros((len(dt["name"]), len(gt["name"])))
        for j, d in enumerate(dt["bbox"]):
            for i, g in enumerate(gt["bbox"]):
                iw = min(d[2], g[2]) - max(d[0], g[0])
                ih = min(d[3], g[3]) - max(d[1], g[1])
                if iw > 0 and ih > 0:
                    out[j, i] = iw * ih / ((d[2] - d[0]) * (d[3] - d[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih)
        return out
    fix = lambda dims: np.where(dims < 0, 0.0, dims)  # noqa: E731 (DontCare's -1 sizes)
    if metric == "bev":
        box = lambda a: np.c_[a["location"][:, [0, 2]], fix(a["dimensions"][:, [0, 2]]), a["rotation_y"]]  # noqa: E731
        return np.nan_to_num(bev_box_iou(box(dt), box(gt)))
    box = lambda a: np.c_[a["location"], fix(a["dimensions"]), a["rotation_y"]]  # noqa: E731
    return np.nan_to_num(box3d_iou(box(dt), box(gt)))


def plain_precision(gts, dts, cls, difficulty, metric, min_overlap):
    lower = cls.lower()
    neighbour = {"car": "van", "pedestrian": "person_sitting"}.get(lower)
    images = []
    num_valid = 0
    for gt, dt in zip(gts, dts):
        ig_gt = []
        for i, name in enumerate(gt["name"]):
            height = gt["bbox"][i][3] - gt["bbox"][i][1]
            hard = (gt["occluded"][i] > [0, 1, 2][difficulty] or gt["truncated"][i] > [0.15, 0.3, 0.5][difficulty]
                    or height <= [40, 25, 25][difficulty])
            if name.lower() == lower and not hard:
                ig_gt.append(0)
                num_valid += 1
            elif name.lower() == neighbour or name.lower() == lower:
                ig_gt.append(1)
            else:
                ig_gt.append(-1)
        ig_dt = []
        for j, name in enumerate(dt["name"]):
            if abs(dt["bbox"][j][3] - dt["bbox"][j][1]) < [40, 25, 25][difficulty]:
                ig_dt.append(1)
            else:
                ig_dt.append(0 if name.lower() == lower else -1)
        dc = [b for n, b in zip(gt["name"], gt["bbox"]) if n == "DontCare"]
        images.append((ig_gt, ig_dt, dc, plain_overlaps(gt, dt, metric), dt))

    # Thresholds: each ground truth takes its best-scored free candidate.
    tp_scores = []
    for ig_gt, ig_dt, dc, ov, dt in images:
        taken = set()
        for i, flag in enumerate(ig_gt):
            if flag == -1:
                continue
            best = None
            for j, flag_dt in enumerate(ig_dt):
                if flag_dt == -1 or j in taken or not ov[j, i] > min_overlap:
                    continue
                if best is None or dt["score"][j] > dt["score"][best]:
                    best = j
            if best is not None:
                taken.add(best)
                if flag == 0 and ig_dt[best] == 0:
                    tp_scores.append(dt["score"][best])
    thresholds, current = [], 0.0
    ordered = sorted(tp_scores, reverse=True)
    for i, score in enumerate(ordered):
        left = (i + 1) / num_valid
        right = (i + 2) / num_valid if i < len(ordered) - 1 else left
        if i < len(ordered) - 1 and (right - current) < (current - left):
            continue
        thresholds.append(score)
        current += 1 / 40.0

    precision = np.zeros(41)
    for t, thresh in enumerate(thresholds):
        tp = fp = 0
        for ig_gt, ig_dt, dc, ov, dt in images:
            taken = set()
            for i, flag in enumerate(ig_gt):
                if flag == -1:
                    continue
                free = [j for j, f in enumerate(ig_dt) if f != -1 and j not in taken
                        and dt["score"][j] >= thresh and ov[j, i] > min_overlap]
                counted = [j for j in free if ig_dt[j] == 0]
                if counted:
                    pick = max(counted, key=lambda j: (ov[j, i], -j))
                elif free:
                    pick = free[0]
                else:
                    continue
                taken.add(pick)
                if flag == 0 and ig_dt[pick] == 0:
                    tp += 1
            for j, f in enumerate(ig_dt):
                if f != 0 or j in taken or dt["score"][j] < thresh:
                    continue
                covered = False
                if metric == "bbox":
                    d = dt["bbox"][j]
                    for b in dc:
                        iw = min(d[2], b[2]) - max(d[0], b[0])
                        ih = min(d[3], b[3]) - max(d[1], b[1])
                        if iw > 0 and ih > 0 and iw * ih / ((d[2] - d[0]) * (d[3] - d[1])) > min_overlap:
                            covered = True
                if not covered:
                    fp += 1
        precision[t] = tp / (tp + fp) if tp + fp else np.nan
    for i in range(len(thresholds)):
        precision[i] = np.max(precision[i:])
    return precision


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_plain_loop_statement_of_the_rules(seed):
    gts, dts = random_annotations(30, seed)
    result = evaluate_kitti(gts, dts, classes=("Car", "Pedestrian"))
    checked = 0
    for setting in ("strict", "loose"):
        for metric in ("bbox", "bev", "3d"):
            curves = result.precision[setting][metric]
            for c, cls in enumerate(("Car", "Pedestrian")):
                for d in range(3):
                    want = plain_precision(gts, dts, cls, d, metric, kitti.MIN_OVERLAPS[setting][metric][cls])
                    np.testing.assert_allclose(curves[c, d], want, rtol=1e-12, atol=1e-12,
                                               err_msg=f"{setting} {metric} {cls} {d}")
                    checked += (want > 0).any()
    assert checked > 10  # the cases are not all empty


# ---- Label files.


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
