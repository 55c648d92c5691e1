"""KITTI label files (the label_2 format) as devkit annotation dicts: ground-truth label
folders, detection result folders, and result files, all read and written through
:mod:`deformdetr.data.kitti` (:func:`~deformdetr.data.kitti.read_label_lines`,
:func:`~deformdetr.data.kitti.write_label_lines`: atomic, numbers written exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from deformdetr.data.kitti import KittiLabelLine, read_label_lines, write_label_lines
from deformdetr.eval.kitti.annotations import ANNOTATION_KEYS, FLOAT_KEYS, column_shape, empty_annotation

__all__ = [
    "read_kitti_label_file",
    "read_kitti_label_dir",
    "read_kitti_result_dir",
    "write_kitti_result_file",
    "write_kitti_result_dir",
    "annotation_from_lines",
    "lines_from_annotation",
]


def read_kitti_label_file(path) -> dict:
    """One label_2 file as a devkit annotation dict: 15 fields per line
    (type, truncated, occluded, alpha, bbox x1 y1 x2 y2, dimensions h w l, location x y z,
    rotation_y) or 16 with a score. ``dimensions`` come back as (l, h, w), the devkit's order;
    ``score`` is 0 when the file has none (as the devkit)."""
    return annotation_from_lines(read_label_lines(path))


def annotation_from_lines(lines: Sequence[KittiLabelLine]) -> dict:
    """Label lines -> a devkit annotation dict (float64; ``dimensions`` reordered to (l, h, w))."""
    anno = empty_annotation()
    if not lines:
        return anno
    anno["name"] = np.array([line.type for line in lines])
    anno["truncated"] = np.array([line.truncation for line in lines], dtype=np.float64)
    anno["occluded"] = np.array([line.occlusion for line in lines], dtype=np.float64).astype(np.int64)
    anno["alpha"] = np.array([line.alpha for line in lines], dtype=np.float64)
    anno["bbox"] = np.array([line.box2d for line in lines], dtype=np.float64)
    anno["dimensions"] = np.array([(line.l, line.h, line.w) for line in lines], dtype=np.float64)
    anno["location"] = np.array([line.location for line in lines], dtype=np.float64)
    anno["rotation_y"] = np.array([line.ry for line in lines], dtype=np.float64)
    # As the devkit: the first line decides whether the file carries scores (else all 0).
    if lines[0].score is not None:
        anno["score"] = np.array([line.score for line in lines], dtype=np.float64)
    else:
        anno["score"] = np.zeros(len(lines))
    return anno


def lines_from_annotation(anno: Mapping) -> list[KittiLabelLine]:
    """A devkit annotation dict with scores -> label lines (``dimensions`` back to h, w, l)."""
    lines = []
    for i in range(len(anno["name"])):
        l, h, w = anno["dimensions"][i]  # noqa: E741 (KITTI's name)
        lines.append(KittiLabelLine(
            type=str(anno["name"][i]), truncation=anno["truncated"][i], occlusion=anno["occluded"][i],
            alpha=anno["alpha"][i], box2d=tuple(anno["bbox"][i]), h=h, w=w, l=l,
            location=tuple(anno["location"][i]), ry=anno["rotation_y"][i], score=anno["score"][i],
        ))
    return lines


def _label_path(directory, image_id) -> Path:
    name = f"{int(image_id):06d}.txt" if not isinstance(image_id, str) else (
        image_id if image_id.endswith(".txt") else f"{image_id}.txt"
    )
    return Path(directory) / name


def read_kitti_label_dir(directory, ids: Iterable) -> list:
    """Ground-truth label files ``{id:06d}.txt`` of ``ids`` (ints or name stems), in order."""
    return [read_kitti_label_file(_label_path(directory, i)) for i in ids]


def read_kitti_result_dir(directory, ids: Iterable, missing_ok: bool = False) -> list:
    """Result files ``{id:06d}.txt`` of ``ids`` (ints or name stems), in order. A missing file is
    an error unless ``missing_ok`` (then: no detections for that image)."""
    annos = []
    for i in ids:
        path = _label_path(directory, i)
        if missing_ok and not path.exists():
            annos.append(empty_annotation())
        else:
            annos.append(read_kitti_label_file(path))
    return annos


def write_kitti_result_file(path, objects) -> None:
    """Writes detections in the label_2 format with a score (16 fields per line), atomically and
    with every number exact (it reads back as the float64 it was).

    ``objects``: a devkit annotation dict (``dimensions`` as (l, h, w)), or a list of per-object
    dicts with the same keys holding one object's values. ``truncated``, ``occluded`` and
    ``alpha`` default to 0, 0 and -10 when absent."""
    write_label_lines(path, lines_from_annotation(_objects_to_annotation(objects)))


def write_kitti_result_dir(directory, ids: Iterable, annotations: Iterable) -> None:
    """Result files ``{id:06d}.txt`` of ``ids`` (ints or name stems), one annotation each (see
    :func:`write_kitti_result_file`); :func:`read_kitti_result_dir` reads them back."""
    ids, annotations = list(ids), list(annotations)
    if len(ids) != len(annotations):
        raise ValueError(f"one annotation per id: got {len(ids)} ids and {len(annotations)} annotations")
    for image_id, annotation in zip(ids, annotations):
        write_kitti_result_file(_label_path(directory, image_id), annotation)


def _objects_to_annotation(objects) -> dict:
    if isinstance(objects, Mapping):
        anno = dict(objects)
        n = len(anno["name"])
    else:
        objects = list(objects)
        n = len(objects)
        anno = {}
        for key in ANNOTATION_KEYS + ("score",):
            if all(key in o for o in objects):
                anno[key] = [o[key] for o in objects]
    defaults = {"truncated": 0.0, "occluded": 0, "alpha": -10.0}
    for key, value in defaults.items():
        if key not in anno:
            anno[key] = [value] * n
    required = ("name", "bbox", "dimensions", "location", "rotation_y", "score")
    missing = [k for k in required if k not in anno]
    if missing:
        raise KeyError(f"objects lack {missing}")
    out = {"name": list(anno["name"])}
    for key in FLOAT_KEYS:
        out[key] = np.asarray(anno[key], dtype=np.float64).reshape((n,) + column_shape(key))
    return out
