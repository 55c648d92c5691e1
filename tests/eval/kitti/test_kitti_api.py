"""KITTI evaluation on hand-computed cases, by the vectorized engine (evaluate_kitti) and by the
plain-loop reference (evaluate_kitti_reference) alike, and its arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deformdetr.eval import evaluate_kitti, evaluate_kitti_reference
from deformdetr.eval.kitti import DIFFICULTIES, empty_annotation, reference, vectorized
from deformdetr.eval.kitti.annotations import checked_annotations

# Every hand-computed case holds for both implementations.
both = pytest.mark.parametrize("evaluate", [evaluate_kitti, evaluate_kitti_reference], ids=["vectorized", "reference"])


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


@both
def test_ground_truth_as_detections_scores_100_everywhere(evaluate):
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
        result = evaluate(gts, dts, recall_positions=positions)
        for cls in ("Car", "Pedestrian", "Cyclist"):
            for metric in ("bbox", "bev", "3d", "aos"):
                assert ap(result, metric, cls) == pytest.approx([100.0] * 3), (cls, metric)
                assert [result.ap_loose[cls][metric][d] for d in DIFFICULTIES] == pytest.approx(
                    [100.0] * 3
                )
    assert "Car AP_R40@0.70, 0.70, 0.70:" in result.summary or "Car AP@0.70, 0.70, 0.70:" in result.summary
    flat = evaluate(gts, dts).to_flat_dict()
    assert flat["Car_3d_moderate_R40"] == pytest.approx(100.0)
    assert flat["Cyclist_image_hard"] == pytest.approx(100.0)


@both
def test_a_false_positive_above_every_true_positive(evaluate):
    # 41 cars, each found: 41 thresholds, precision 1 at each, AP 100. One more detection, far
    # from every car and scored above them all, makes the precision k / (k + 1) at the k-th
    # threshold; made monotone from the right it is 41/42 at every recall position.
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    assert ap(evaluate(gts, dts), "3d") == pytest.approx([100.0] * 3)
    stray = make_objects([car(99, location=[50.0, 1.6, 70.0], bbox=[500, 0, 540, 100])], True)
    stray["score"][:] = 0.99
    for key in dts[0]:
        dts[0][key] = np.concatenate([dts[0][key], stray[key]])
    for positions in (40, 11):
        result = evaluate(gts, dts, recall_positions=positions)
        for metric in ("bbox", "bev", "3d"):
            assert ap(result, metric) == pytest.approx([100.0 * 41 / 42] * 3), (metric, positions)
    # Scored below every true positive, the same detection costs nothing.
    dts[0]["score"][-1] = 0.1
    assert ap(evaluate(gts, dts), "3d") == pytest.approx([100.0] * 3)


@both
def test_a_detection_below_the_minimum_overlap_is_a_miss(evaluate):
    # 41 cars; the lowest-scored detection is lifted by half the car's height: BEV and 2D still
    # match, the 3D IoU is 1/3 < 0.7. 40 thresholds for 41 ground truths: precision 1 at recall
    # positions 0..39 and 0 at 40, AP_R40 = 39/40.
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    dts[0]["location"][0, 1] -= 0.75
    result = evaluate(gts, dts)
    assert ap(result, "bbox") == pytest.approx([100.0] * 3)
    assert ap(result, "bev") == pytest.approx([100.0] * 3)
    assert ap(result, "3d") == pytest.approx([97.5] * 3)
    # The loose 3D setting (0.5 for cars) still rejects 1/3.
    assert [result.ap_loose["Car"]["3d"][d] for d in DIFFICULTIES] == pytest.approx([97.5] * 3)
    # R11: positions 0, 4, ..., 36 have precision 1, position 40 has 0.
    result = evaluate(gts, dts, recall_positions=11)
    assert ap(result, "3d") == pytest.approx([100.0 * 10 / 11] * 3)


@both
def test_dontcare_regions_excuse_2d_false_positives_only(evaluate):
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
    result = evaluate(gts, dts)
    assert ap(result, "bbox") == pytest.approx([100.0] * 3)
    assert ap(result, "bev") == pytest.approx([100.0 * 41 / 42] * 3)
    assert ap(result, "3d") == pytest.approx([100.0 * 41 / 42] * 3)
    # Covering less than the minimum overlap of the detection's own area: a false positive.
    dts[0]["bbox"][-1] = [650, 60, 790, 190]  # 50 of 140 px wide inside the region
    assert ap(evaluate(gts, dts), "bbox") == pytest.approx([100.0 * 41 / 42] * 3)


@both
def test_neighbouring_classes_and_other_classes_are_ignored(evaluate):
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    # A Van labelled in image 0, detected as a Car with the top score: ignored, not a FP.
    gts[0] = make_objects([car(0), car(5, name="Van")], False)
    van_hit = make_objects([car(5)], True)
    van_hit["score"][:] = 0.99
    for key in dts[0]:
        dts[0][key] = np.concatenate([dts[0][key], van_hit[key]])
    assert ap(evaluate(gts, dts), "3d") == pytest.approx([100.0] * 3)
    # A Truck is no neighbour of Car: the same detection on a Truck is a false positive.
    gts[0]["name"][1] = "Truck"
    assert ap(evaluate(gts, dts), "3d") == pytest.approx([100.0 * 41 / 42] * 3)
    # A Pedestrian detection does not count for Car at all.
    dts[0]["name"][1] = "Pedestrian"
    assert ap(evaluate(gts, dts), "3d") == pytest.approx([100.0] * 3)


@both
def test_a_quarter_turn_halves_the_orientation_similarity(evaluate):
    # AOS weighs each true positive by (1 + cos(alpha error)) / 2: a quarter turn gives 1/2.
    gts = one_car_per_image(41)
    dts = perfect_detections(gts, scores=[np.array([0.5 + 0.01 * i]) for i in range(41)])
    for d in dts:
        d["alpha"] = d["alpha"] + math.pi / 2
    result = evaluate(gts, dts)
    assert ap(result, "bbox") == pytest.approx([100.0] * 3)
    assert ap(result, "aos") == pytest.approx([50.0] * 3)
    # The first detection's alpha -10 says the detections carry no orientation: no AOS.
    dts[0]["alpha"][:] = -10
    assert "aos" not in evaluate(gts, dts).ap["Car"]


def test_difficulty_assignment_of_both_implementations():
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
    (gt,) = checked_annotations([make_objects(objects, False)], "gt", with_score=False)
    (dt,) = checked_annotations(
        [make_objects([car(0), car(1, bbox=[0, 0, 10, 34]), car(2, name="Tram", bbox=[0, 0, 1, 5]),
                       car(3, bbox=[0, 0, 10, 40])], True)],
        "dt", with_score=True)
    expected_gt = {
        0: [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1],
        1: [0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, -1, -1],
        2: [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, -1, -1],
    }
    # Detections shorter than the minimum height are ignored, whatever their class (40 px is not short).
    expected_dt = {0: [0, 1, 1, 0], 1: [0, 0, 1, 0], 2: [0, 0, 1, 0]}
    for difficulty in range(3):
        ignored_gt, ignored_dt, valid = vectorized._clean(vectorized._Flat([gt]), vectorized._Flat([dt]), "Car",
                                                          difficulty)
        assert ignored_gt.tolist() == expected_gt[difficulty], difficulty
        assert ignored_dt.tolist() == expected_dt[difficulty], difficulty
        assert valid == expected_gt[difficulty].count(0)
        assert reference._ignored_ground_truths(gt, "Car", difficulty) == expected_gt[difficulty]
        assert reference._ignored_detections(dt, "Car", difficulty) == expected_dt[difficulty]


@both
def test_no_ground_truth_or_no_detections(evaluate):
    gts = one_car_per_image(3)
    empty = [empty_annotation() for _ in gts]
    result = evaluate(gts, empty)
    assert ap(result, "3d") == [0.0, 0.0, 0.0]
    assert "aos" not in result.ap["Car"]  # no detection carries an alpha
    result = evaluate([empty_annotation(False)] * 3, perfect_detections(gts))
    assert ap(result, "bbox") == [0.0, 0.0, 0.0]


@both
def test_arguments_are_checked(evaluate):
    gts = one_car_per_image(2)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate(gts, perfect_detections(gts)[:1])
    with pytest.raises(ValueError, match="recall_positions"):
        evaluate(gts, perfect_detections(gts), recall_positions=20)
    with pytest.raises(ValueError, match="classes"):
        evaluate(gts, perfect_detections(gts), classes=("Tram",))
    with pytest.raises(KeyError, match="score"):
        evaluate(gts, gts)
    result = evaluate(gts, perfect_detections(gts), classes=[0, "pedestrian"], metrics=["3d"])
    assert list(result.ap) == ["Car", "Pedestrian"] and list(result.ap["Car"]) == ["3d"]


