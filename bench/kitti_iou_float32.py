"""How far the KITTI devkit's float32 BEV and 3D IoUs are from ours (float64, native core).

The devkit's python evaluation casts the boxes to float32 and computes the rotated BEV overlap
in float32 (``rotate_iou_gpu_eval``); its 3D IoU multiplies that float32 intersection area by the
height overlap in float64 and stores the result in a float32 array (``d3_box_overlap``). Here
the same steps run in numpy float32, not the devkit itself: the devkit's polygon method
(``rotated_rect_intersection_area_reference(..., dtype=np.float32)``: corners inside the other
box, edge crossings, shoelace), with the edge crossings computed as the devkit computes them
(:func:`devkit_edge_crossings`), on pairs of overlapping boxes: a box and a jittered copy of it,
IoUs spread over (0, 1). The column "corners only" computes the crossings stably instead, to
show where the error comes from: float32 keeps coordinates near 64 m to about 4e-6 m, but the
crossing formula multiplies coordinates (x * z ~ 1e3 m^2) and loses ~1e-4 m to cancellation. The
column "> 1e-2" counts gross failures: when a corner lies within float32 rounding of the other
box's edge, or two edges are nearly parallel, float32 clipping drops or misplaces a vertex of the
intersection (the devkit's known wrong IoUs for nearly coincident boxes, e.g. OpenPCDet issues
#972, #1425).

    python bench/kitti_iou_float32.py [--pairs 200000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from deformdetr.ops.rotated_iou import bev_box_iou, box3d_iou, rotated_rect_intersection_area_reference

BEV = [0, 2, 3, 5, 6]  # (x, z, l, w, ry) of a 3D box (x, y, z, l, h, w, ry)


def box_pairs(rng, count: int, depth: tuple, size: str):
    """(count, 7) boxes (x, y, z, l, h, w, ry) and jittered copies, overlapping."""
    if size == "pedestrian":
        dims = np.c_[rng.uniform(0.5, 1.0, count), rng.uniform(1.5, 1.9, count), rng.uniform(0.4, 0.8, count)]
    else:
        dims = np.c_[rng.uniform(3.5, 4.5, count), rng.uniform(1.4, 1.7, count), rng.uniform(1.5, 1.8, count)]
    z = rng.uniform(*depth, count)
    boxes = np.c_[rng.uniform(-0.4, 0.4, count) * z, rng.uniform(1.4, 1.8, count), z, dims,
                  rng.uniform(-np.pi, np.pi, count)]
    scale = dims.mean(1, keepdims=True)
    jitter = np.c_[rng.normal(0, 0.15, (count, 3)) * scale, rng.normal(0, 0.08, (count, 3)) * dims,
                   rng.normal(0, 0.15, count)]
    other = boxes + jitter
    other[:, 3:6] = np.abs(other[:, 3:6])
    return boxes, other


def paired(kernel, a: np.ndarray, b: np.ndarray, block: int = 512) -> np.ndarray:
    """kernel(a[i], b[i]) for every i (the native kernels are pairwise: take block diagonals)."""
    out = np.empty(len(a))
    for start in range(0, len(a), block):
        stop = min(start + block, len(a))
        out[start:stop] = np.diagonal(kernel(a[start:stop], b[start:stop]))
    return out


def devkit_edge_crossings(c1: np.ndarray, c2: np.ndarray):
    """The crossings of every edge AB of c1 (P, 4, 2) with every edge CD of c2, as the devkit's
    kernel finds them: the segments cross when C and D lie on opposite sides of AB and A and B on
    opposite sides of CD, at the lines' intersection by the determinant formula on absolute
    coordinates, ((A x B)(C - D) - (A - B)(C x D)) / ((A - B) x (C - D)) with p x q the 2D cross
    product. (P, 16, 2) points and their mask, in the corners' dtype."""
    a, b = c1[:, :, None, :], np.roll(c1, -1, axis=1)[:, :, None, :]
    c, d = c2[:, None, :, :], np.roll(c2, -1, axis=1)[:, None, :, :]

    def cross(p, q):
        return p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]

    ok = (np.sign(cross(b - a, c - a)) != np.sign(cross(b - a, d - a))) & (
        np.sign(cross(d - c, a - c)) != np.sign(cross(d - c, b - c)))
    with np.errstate(divide="ignore", invalid="ignore"):
        points = (cross(a, b)[..., None] * (c - d) - (a - b) * cross(c, d)[..., None]) / cross(a - b, c - d)[..., None]
    points = np.where(ok[..., None], points, 0)
    return points.reshape(len(c1), 16, 2), ok.reshape(len(c1), 16)


def bev_intersection(a: np.ndarray, b: np.ndarray, devkit_crossings: bool) -> np.ndarray:
    """float32 intersection areas of paired (x, z, l, w, ry) boxes."""
    crossings = devkit_edge_crossings if devkit_crossings else None
    return rotated_rect_intersection_area_reference(a.astype(np.float32), b.astype(np.float32), dtype=np.float32,
                                                    edge_crossings=crossings)


def devkit_bev_iou(a: np.ndarray, b: np.ndarray, devkit_crossings: bool = True) -> np.ndarray:
    inter = bev_intersection(a[:, BEV], b[:, BEV], devkit_crossings)
    a, b = a[:, BEV].astype(np.float32), b[:, BEV].astype(np.float32)
    return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)


def devkit_3d_iou(a: np.ndarray, b: np.ndarray, devkit_crossings: bool = True) -> np.ndarray:
    inter_bev = bev_intersection(a[:, BEV], b[:, BEV], devkit_crossings)
    height = np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 1] - a[:, 4], b[:, 1] - b[:, 4])
    inter = height * inter_bev  # float64 x float32, as the devkit's numba kernel
    union = a[:, 3] * a[:, 4] * a[:, 5] + b[:, 3] * b[:, 4] * b[:, 5] - inter
    return np.where((height > 0) & (inter_bev > 0), inter / union, 0.0).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200_000, help="box pairs per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{args.pairs} pairs per row (those with IoU > 0.1): |float32 IoU as the devkit - our float64 IoU|")
    print("                          max       99.9%     median    > 1e-2  | corners only: max")
    for size, depth in (("pedestrian", (5, 15)), ("pedestrian", (40, 80)), ("car", (40, 80))):
        a, b = box_pairs(rng, args.pairs, depth, size)
        for name, kernel, ours in (("BEV", devkit_bev_iou, paired(bev_box_iou, a[:, BEV], b[:, BEV])),
                                   ("3D", devkit_3d_iou, paired(box3d_iou, a, b))):
            overlapping = ours > 0.1
            diff = np.abs(kernel(a, b).astype(np.float64) - ours)[overlapping]
            corners_only = np.abs(kernel(a, b, devkit_crossings=False).astype(np.float64) - ours)[overlapping]
            print(f"{size:10s} {depth[0]:2d}-{depth[1]:2d} m {name:3s}:  {diff.max():.2e}  "
                  f"{np.quantile(diff, 0.999):.2e}  {np.median(diff):.2e}  {(diff > 1e-2).sum():6d}  "
                  f"| {corners_only.max():.2e}")


if __name__ == "__main__":
    main()
