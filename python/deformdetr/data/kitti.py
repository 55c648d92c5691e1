"""The KITTI object-detection file formats: camera calibration (``calib/*.txt``) and labels
(``label_2/*.txt``), with the geometry MonoDETR's data pipeline needs (the official
``kitti_utils``'s ``Calibration`` and ``Object3d``), and the class labels MonoDETR trains with.

Two class orders, never mixed: label indices (a target's ``labels``, a model's class outputs, a
decoded detection's ``label``) follow the official MonoDETR training order,
``KITTI_CLASS_NAMES = ("Pedestrian", "Car", "Cyclist")`` (Pedestrian = 0, Car = 1, Cyclist = 2),
and are converted to and from names only by :func:`kitti_class_name` and :func:`kitti_label`.
The KITTI devkit's evaluation numbers classes its own way, Car first
(``deformdetr.eval.kitti.CLASS_NAMES``: Car = 0, Pedestrian = 1, Cyclist = 2, ...), for its
``classes`` argument only; label files and devkit annotations carry names, so only names pass
between training and evaluation.

Coordinates are KITTI's rectified camera frame: x right, y down, z forward (metres). A label's
``location`` is the bottom centre of its 3D box; ``ry`` is the rotation about the camera's y
axis in [-pi, pi]; ``alpha`` is the observation angle, ry minus the angle of the ray to the
object. ``box2d`` is (x1, y1, x2, y2) in pixels of the original image.

Label and result files are read by one reader (:func:`read_label_lines`) and written by one
writer (:func:`write_label_lines`), one :class:`KittiLabelLine` per line; files are written
atomically (a temporary file renamed over the target). Numbers are written with a given number
of decimals, or exactly: label files (:func:`write_labels`) take KITTI's 2 decimals, the
precision of the data set's own files; detection results (the evaluation's result files) are
written exactly, each number as the shortest text that parses back to the same float64 (Python's
``repr``), so that a result folder read back scores exactly what was scored in memory. (Two
decimals, the official tester's choice, move a box by up to 5 mm and a score by up to 0.005:
enough to carry an IoU across a minimum overlap or to reorder two detections.)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Optional, Union

import numpy as np

from deformdetr._files import write_atomic

__all__ = [
    "KITTI_CLASS_NAMES",
    "KITTI_CLS2ID",
    "kitti_class_name",
    "kitti_label",
    "Calibration",
    "KittiLabelLine",
    "KittiObject",
    "read_calib",
    "write_calib",
    "read_label_lines",
    "write_label_lines",
    "read_labels",
    "write_labels",
    "parse_label_line",
    "numbered_lines",
    "kitti_level",
    "wrap_angle",
    "box_corners",
    "BOX_EDGES",
    "FRONT_FACE",
]

PathLike = Union[str, os.PathLike]

#: The training label order (the official MonoDETR ``cls2id``): label i is ``KITTI_CLASS_NAMES[i]``.
KITTI_CLASS_NAMES = ("Pedestrian", "Car", "Cyclist")
KITTI_CLS2ID = {name: i for i, name in enumerate(KITTI_CLASS_NAMES)}

#: KITTI's difficulty levels by (min 2D box height px, max truncation, max occlusion).
_LEVELS = (("Easy", 1, 40.0, 0.15, 0), ("Moderate", 2, 25.0, 0.3, 1), ("Hard", 3, 25.0, 0.5, 2))


def kitti_class_name(label) -> str:
    """A training label index (an int, or a float holding one, as in decoded rows) -> its class
    name in :data:`KITTI_CLASS_NAMES`."""
    index = int(label)
    if index != label or not 0 <= index < len(KITTI_CLASS_NAMES):
        raise ValueError(f"a KITTI training label must be an integer in [0, {len(KITTI_CLASS_NAMES)}) "
                         f"({', '.join(f'{i} {n}' for i, n in enumerate(KITTI_CLASS_NAMES))}), got {label!r}")
    return KITTI_CLASS_NAMES[index]


def kitti_label(name: str) -> int:
    """A class name in :data:`KITTI_CLASS_NAMES` -> its training label index."""
    if name not in KITTI_CLS2ID:
        raise ValueError(f"KITTI training classes are {KITTI_CLASS_NAMES}, got {name!r}")
    return KITTI_CLS2ID[name]


def wrap_angle(angle: float) -> float:
    """One step of 2 pi towards [-pi, pi] (as the official code: enough for sums of two angles
    that are each in range)."""
    if angle > math.pi:
        angle -= 2 * math.pi
    if angle < -math.pi:
        angle += 2 * math.pi
    return angle


class Calibration:
    """The camera of one KITTI image: ``P2`` (3, 4) projects rectified camera coordinates to pixels
    of ``image_2``. ``R0`` (3, 3) and ``V2C`` (3, 4, velodyne to camera) are kept when read from a
    file (identity / zeros otherwise); MonoDETR uses P2 only."""

    def __init__(self, P2, R0=None, V2C=None, P3=None):
        self.P2 = np.asarray(P2, dtype=np.float32).reshape(3, 4).copy()
        self.P3 = None if P3 is None else np.asarray(P3, dtype=np.float32).reshape(3, 4).copy()
        self.R0 = np.eye(3, dtype=np.float32) if R0 is None else np.asarray(R0, dtype=np.float32).reshape(3, 3)
        self.V2C = np.zeros((3, 4), np.float32) if V2C is None else np.asarray(V2C, dtype=np.float32).reshape(3, 4)

    # intrinsics, derived from P2 (so that they follow any change of it)
    @property
    def fu(self) -> float:
        return float(self.P2[0, 0])

    @property
    def fv(self) -> float:
        return float(self.P2[1, 1])

    @property
    def cu(self) -> float:
        return float(self.P2[0, 2])

    @property
    def cv(self) -> float:
        return float(self.P2[1, 2])

    @property
    def tx(self) -> float:
        """The camera's x offset from the reference camera: P2[0, 3] = -fu * tx."""
        return float(self.P2[0, 3] / -self.P2[0, 0])

    @property
    def ty(self) -> float:
        return float(self.P2[1, 3] / -self.P2[1, 1])

    def copy(self) -> "Calibration":
        return Calibration(self.P2, self.R0, self.V2C, self.P3)

    def rect_to_img(self, pts_rect) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) points -> ((N, 2) pixels, (N,) depth in the rectified frame)."""
        pts = np.asarray(pts_rect, dtype=np.float64).reshape(-1, 3)
        hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ self.P2.T.astype(np.float64)
        # The official divides by the point's z (not the third row): they differ by P2[2, 3], a few mm.
        pixels = hom[:, 0:2] / pts[:, 2:3]
        return pixels, hom[:, 2] - float(self.P2[2, 3])

    def img_to_rect(self, u, v, depth) -> np.ndarray:
        """Pixels (u, v) at rectified depth -> (N, 3) points; the inverse of :meth:`rect_to_img`."""
        u, v, depth = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (u, v, depth))
        x = (u - self.cu) * depth / self.fu + self.tx
        y = (v - self.cv) * depth / self.fv + self.ty
        return np.stack([x, y, depth], axis=1)

    def alpha2ry(self, alpha: float, u: float) -> float:
        """Observation angle at image column ``u`` (the 2D box centre) -> rotation ry."""
        return wrap_angle(alpha + math.atan2(u - self.cu, self.fu))

    def ry2alpha(self, ry: float, u: float) -> float:
        return wrap_angle(ry - math.atan2(u - self.cu, self.fu))

    def project(self, points) -> np.ndarray:
        """(..., 3) points -> (..., 2) pixels: P2 times the point, divided by its third coordinate
        (the pinhole projection; :meth:`rect_to_img` divides by the point's z instead)."""
        points = np.asarray(points, dtype=np.float64)
        hom = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1) @ self.P2.T.astype(np.float64)
        return hom[..., 0:2] / hom[..., 2:3]

    def corners_to_img_boxes(self, corners3d) -> tuple[np.ndarray, np.ndarray]:
        """(N, 8, 3) box corners -> ((N, 4) enclosing boxes x1, y1, x2, y2, (N, 8, 2) pixels),
        by :meth:`project` (as the official ``corners3d_to_img_boxes``)."""
        pixels = self.project(np.asarray(corners3d, dtype=np.float64).reshape(-1, 8, 3))
        boxes = np.concatenate([pixels.min(axis=1), pixels.max(axis=1)], axis=1)
        return boxes, pixels

    def to_lines(self) -> list[str]:
        """The seven lines of a KITTI calib file (P0 = P1 = P2 and P3 = P2 unless given)."""
        def row(name, matrix):
            return name + ": " + " ".join(f"{float(x):.12e}" for x in np.asarray(matrix).reshape(-1))

        p3 = self.P2 if self.P3 is None else self.P3
        return [row("P0", self.P2), row("P1", self.P2), row("P2", self.P2), row("P3", p3),
                row("R0_rect", self.R0), row("Tr_velo_to_cam", self.V2C),
                row("Tr_imu_to_velo", np.zeros((3, 4)))]

    def __repr__(self) -> str:
        return f"Calibration(P2={self.P2.tolist()})"


def numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of a text file. Each line is decoded on its own, so that bytes
    that are not UTF-8 raise a ValueError naming the file and the line (decoding the whole file
    as text reports neither: it fails in a read-ahead buffer)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path!r} line {number}: not UTF-8 text ({error.reason} at byte "
                                 f"{error.start}: {raw[error.start:error.start + 1]!r})") from None


def read_calib(path: PathLike) -> Calibration:
    """A KITTI calib file -> :class:`Calibration`. Matrices are found by their names (``P2:``,
    ``R0_rect:``, ``Tr_velo_to_cam:``); a file without a 12-number P2, or with a line that is not
    numbers or not text, raises ValueError naming it (and the line)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"calibration file {path!r} not found")
    matrices = {}
    for number, line in numbered_lines(path):
        if ":" not in line:
            continue
        name, values = line.split(":", 1)
        try:
            matrices[name.strip()] = np.array(values.split(), dtype=np.float32)
        except ValueError as error:
            raise ValueError(f"{path!r} line {number}: bad numbers for {name.strip()!r} ({error})") from None
    p2 = matrices.get("P2")
    if p2 is None or p2.size != 12:
        raise ValueError(f"{path!r}: no 3x4 'P2:' matrix")

    def optional(name, size):
        value = matrices.get(name)
        return value if value is not None and value.size == size else None

    return Calibration(p2, R0=optional("R0_rect", 9), V2C=optional("Tr_velo_to_cam", 12), P3=optional("P3", 12))


def write_calib(path: PathLike, calib: Union[Calibration, np.ndarray]) -> None:
    if not isinstance(calib, Calibration):
        calib = Calibration(calib)
    _write_atomically(path, "\n".join(calib.to_lines()) + "\n")


def kitti_level(box_height: float, truncation: float, occlusion: float, height_scale: float = 1.0) -> tuple[str, int]:
    """KITTI's difficulty of an object: ("Easy", 1), ("Moderate", 2), ("Hard", 3), ("UnKnown", 4)
    (too small, truncated or occluded), or ("DontCare", 0) for truncation -1. ``box_height`` is
    y2 - y1 + 1 (as the official); the pixel thresholds 40 / 25 are multiplied by
    ``height_scale`` (1 for KITTI-sized images)."""
    if truncation == -1:
        return "DontCare", 0
    for name, level, min_height, max_trunc, max_occ in _LEVELS:
        if box_height >= min_height * height_scale and truncation <= max_trunc and occlusion <= max_occ:
            return name, level
    return "UnKnown", 4


class KittiLabelLine(NamedTuple):
    """One line of a KITTI label file (``label_2``, 15 fields) or detection result file (16: a
    score last), its numbers as written, in float64: what files are read into and written from.
    :class:`KittiObject` is the same line as the training pipeline uses it (official float32
    geometry, derived values); the evaluation turns lines into devkit annotations."""

    type: str
    truncation: float
    occlusion: float
    alpha: float
    box2d: tuple  # (x1, y1, x2, y2) pixels
    h: float
    w: float
    l: float  # noqa: E741 (KITTI's name)
    location: tuple  # (x, y, z) of the bottom centre, camera frame
    ry: float
    score: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> "KittiLabelLine":
        """The one parser of the format."""
        parts = text.split()
        if len(parts) not in (15, 16):
            raise ValueError(f"expected 15 or 16 fields in a KITTI label line, got {len(parts)}: {text.strip()!r}")
        v = [float(x) for x in parts[1:]]
        return cls(parts[0], v[0], v[1], v[2], tuple(v[3:7]), v[7], v[8], v[9], tuple(v[10:13]), v[13],
                   v[14] if len(v) == 15 else None)

    def format(self, precision: Optional[int] = None) -> str:
        """The line's text (without the newline): occlusion as an integer, the other numbers with
        ``precision`` decimals, or exactly when None (see the module docstring)."""
        if not self.type or any(c.isspace() for c in self.type):
            raise ValueError(f"a KITTI label type must be one word, got {self.type!r}")
        number = repr if precision is None else f"{{:.{precision}f}}".format
        values = [self.alpha, *self.box2d, self.h, self.w, self.l, *self.location, self.ry]
        if self.score is not None:
            values.append(self.score)
        fields = [self.type, number(float(self.truncation)), str(int(self.occlusion))]
        return " ".join(fields + [number(float(x)) for x in values])


def parse_label_line(line: str) -> tuple[str, list, Optional[float]]:
    """Deprecated: :meth:`KittiLabelLine.parse`. A label line -> (type, the 14 numbers from
    truncation to rotation_y, score or None)."""
    warnings.warn("deformdetr.data.kitti.parse_label_line is deprecated; use "
                  "deformdetr.data.kitti.KittiLabelLine.parse", DeprecationWarning, stacklevel=2)
    row = KittiLabelLine.parse(line)
    numbers = [row.truncation, row.occlusion, row.alpha, *row.box2d, row.h, row.w, row.l, *row.location, row.ry]
    return row.type, numbers, row.score


@dataclass
class KittiObject:
    """One line of a KITTI label file. ``occlusion``: 0 visible, 1 partly, 2 largely occluded, 3
    unknown; ``truncation`` in [0, 1] (-1 for DontCare); ``score`` only in detection results."""

    type: str
    truncation: float
    occlusion: float
    alpha: float
    box2d: np.ndarray  # (4,) float32 x1, y1, x2, y2
    h: float
    w: float
    l: float
    location: np.ndarray  # (3,) float32 x, y, z of the bottom centre
    ry: float
    score: Optional[float] = None

    def __post_init__(self):
        self.box2d = np.asarray(self.box2d, dtype=np.float32).reshape(4).copy()
        self.location = np.asarray(self.location, dtype=np.float32).reshape(3).copy()

    @classmethod
    def from_label_line(cls, line: KittiLabelLine) -> "KittiObject":
        return cls(**line._asdict())

    @classmethod
    def from_line(cls, line: str) -> "KittiObject":
        return cls.from_label_line(KittiLabelLine.parse(line))

    def label_line(self) -> KittiLabelLine:
        return KittiLabelLine(self.type, self.truncation, self.occlusion, self.alpha, tuple(self.box2d.tolist()),
                              self.h, self.w, self.l, tuple(self.location.tolist()), self.ry, self.score)

    def to_kitti_line(self, precision: int = 2) -> str:
        """The label line (KITTI writes 2 decimals; occlusion as an integer), with the score if set."""
        return self.label_line().format(precision)

    def copy(self) -> "KittiObject":
        return KittiObject(self.type, self.truncation, self.occlusion, self.alpha, self.box2d, self.h, self.w,
                           self.l, self.location, self.ry, self.score)

    # ---- derived -----------------------------------------------------------------------------
    @property
    def center_3d(self) -> np.ndarray:
        """The 3D box's centre (the location is its bottom centre; y points down)."""
        return self.location + np.array([0.0, -self.h / 2, 0.0], dtype=np.float32)

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.location))

    def level(self, height_scale: float = 1.0) -> tuple[str, int]:
        """KITTI difficulty (see :func:`kitti_level`) from the 2D box height."""
        return kitti_level(float(self.box2d[3]) - float(self.box2d[1]) + 1, self.truncation, self.occlusion,
                           height_scale)

    def corners3d(self) -> np.ndarray:
        """(8, 3) corners (see :func:`box_corners`)."""
        return box_corners(self.h, self.w, self.l, self.location, self.ry)


#: The corners of :func:`box_corners` on the box's front face (its heading points out of it).
FRONT_FACE = (0, 1, 5, 4)
#: The 12 edges of a box as pairs of :func:`box_corners` indices: bottom, top, uprights.
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def box_corners(h: float, w: float, l: float, location, ry: float) -> np.ndarray:  # noqa: E741 (KITTI's name)
    """(8, 3) float64 corners of a KITTI box (``location`` its bottom centre, camera frame):
    0-3 the bottom face, 4-7 the top face above them (the official order). The length runs
    along the heading (ry = 0 faces the camera's +x), so 0, 1, 5, 4 is the front face."""
    x = np.array([l, l, -l, -l, l, l, -l, -l], dtype=np.float64) / 2
    y = np.array([0, 0, 0, 0, -h, -h, -h, -h], dtype=np.float64)
    z = np.array([w, -w, -w, w, w, -w, -w, w], dtype=np.float64) / 2
    c, s = math.cos(ry), math.sin(ry)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return (rotation @ np.stack([x, y, z])).T + np.asarray(location, dtype=np.float64).reshape(3)


def read_label_lines(path: PathLike) -> list[KittiLabelLine]:
    """The lines of a KITTI label or result file (blank lines skipped): the one reader of these
    files. Errors name the file and the line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file {path!r} not found")
    lines = []
    for number, text in numbered_lines(path):
        if not text.strip():
            continue
        try:
            lines.append(KittiLabelLine.parse(text))
        except ValueError as error:
            raise ValueError(f"{path!r} line {number}: {error}") from None
    return lines


def write_label_lines(path: PathLike, lines: Iterable[KittiLabelLine], precision: Optional[int] = None) -> None:
    """Writes a KITTI label or result file atomically, the numbers with ``precision`` decimals or,
    by default, exactly (see the module docstring): the one writer of these files."""
    _write_atomically(path, "".join(line.format(precision) + "\n" for line in lines))


def read_labels(path: PathLike) -> list[KittiObject]:
    """A KITTI label file -> its objects (blank lines skipped); errors name the file and line."""
    return [KittiObject.from_label_line(line) for line in read_label_lines(path)]


def write_labels(path: PathLike, objects: Iterable[KittiObject], precision: int = 2) -> None:
    """Writes objects as a KITTI label file (atomically), with KITTI's 2 decimals by default."""
    write_label_lines(path, [obj.label_line() for obj in objects], precision)


def _write_atomically(path: PathLike, text: str) -> None:
    """Writes ``text`` as ``path`` atomically (see deformdetr._files.write_atomic)."""
    write_atomic(path, lambda handle: handle.write(text), text=True)
