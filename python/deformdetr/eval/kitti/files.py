"""KITTI label files (the label_2 format) as devkit annotation dicts: ground-truth label
folders, detection result folders, and result files written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from deformdetr.data.kitti import numbered_lines, parse_label_line
from deformdetr.eval.kitti.annotations import empty_annotation

__all__ = ["read_kitti_label_file", "read_kitti_label_dir", "read_kitti_result_dir", "write_kitti_result_file"]


def read_kitti_label_file(path) -> dict:
    """One label_2 file as a devkit annotation dict: 15 fields per line
    (type, truncated, occluded, alpha, bbox x1 y1 x2 y2, dimensions h w l, location x y z,
    rotation_y) or 16 with a score. ``dimensions`` come back as (l, h, w), the devkit's order;
    ``score`` is 0 when the file has none (as the devkit)."""
    rows = []
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            rows.append(parse_label_line(line))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
    anno = empty_annotation()
    if not rows:
        return anno
    values = np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 14)
    anno["name"] = np.array([r[0] for r in rows])
    anno["truncated"] = values[:, 0]
    anno["occluded"] = values[:, 1].astype(np.int64)
    anno["alpha"] = values[:, 2]
    anno["bbox"] = values[:, 3:7]
    anno["dimensions"] = values[:, 7:10][:, [2, 0, 1]]  # h w l -> l h w
    anno["location"] = values[:, 10:13]
    anno["rotation_y"] = values[:, 13]
    # As the devkit: the first line decides whether the file carries scores (else all 0).
    if rows[0][2] is not None:
        anno["score"] = np.array([r[2] for r in rows], dtype=np.float64)
    else:
        anno["score"] = np.zeros(len(rows))
    return anno


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
    """Writes detections in the label_2 format with a score (16 fields per line).

    ``objects``: a devkit annotation dict (``dimensions`` as (l, h, w)), or a list of per-object
    dicts with the same keys holding one object's values. ``truncated``, ``occluded`` and
    ``alpha`` default to 0, 0 and -10 when absent. The file is written atomically."""
    anno = _objects_to_annotation(objects)
    n = len(anno["name"])
    lines = []
    for i in range(n):
        l, h, w = (float(v) for v in anno["dimensions"][i])
        fields = [
            str(anno["name"][i]),
            _fmt(anno["truncated"][i]),
            str(int(anno["occluded"][i])),
            _fmt(anno["alpha"][i]),
            *(_fmt(v) for v in anno["bbox"][i]),
            _fmt(h), _fmt(w), _fmt(l),
            *(_fmt(v) for v in anno["location"][i]),
            _fmt(anno["rotation_y"][i]),
            _fmt(anno["score"][i]),
        ]
        if any(" " in f or not f for f in fields[:1]):
            raise ValueError(f"object {i}: name {fields[0]!r} must be one word")
        lines.append(" ".join(fields))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def _fmt(value) -> str:
    return f"{float(value):.8g}"


def _objects_to_annotation(objects) -> dict:
    if isinstance(objects, Mapping):
        anno = dict(objects)
        n = len(anno["name"])
    else:
        objects = list(objects)
        n = len(objects)
        anno = {}
        for key in ("name", "truncated", "occluded", "alpha", "bbox", "dimensions", "location",
                    "rotation_y", "score"):
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
    for key in ("truncated", "occluded", "alpha", "rotation_y", "score"):
        out[key] = np.asarray(anno[key], dtype=np.float64).reshape(n)
    for key, width in (("bbox", 4), ("dimensions", 3), ("location", 3)):
        out[key] = np.asarray(anno[key], dtype=np.float64).reshape(n, width)
    return out
