"""Decoded MonoDETR detections: named rows (Detection3D) and their named columns."""

import numpy as np

from deformdetr.models.mono.decode import Detection3D, detection_columns


def test_rows_are_named_tuples_whose_columns_are_named_too():
    row = Detection3D(label=1, alpha=0.1, x1=10, y1=20, x2=30, y2=60, h=1.5, w=1.6, l=3.9, x=2, y=1.6, z=20, ry=0.2,
                      score=0.9)
    assert tuple(row)[6:9] == (1.5, 1.6, 3.9) and len(row) == 14  # still a plain row of 14 numbers
    columns = detection_columns([row, row._replace(label=2, score=0.5)])
    assert set(columns) == set(Detection3D._fields)
    assert columns["label"].tolist() == [1, 2] and columns["score"].tolist() == [0.9, 0.5]
    assert columns["l"].dtype == np.float64 and columns["z"].tolist() == [20, 20]
    # Plain lists in the field order (the official decoder's rows) read the same way; no rows, no values.
    assert detection_columns([list(row)])["ry"].tolist() == [0.2]
    assert all(len(v) == 0 for v in detection_columns([]).values())
