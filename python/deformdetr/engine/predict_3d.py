"""3D prediction on image files (``deformdetr predict`` with a MonoDETR checkpoint): each image
with its camera goes through evaluation's input transform, model call and decoding; per image,
a KITTI result file, a record in predictions.json and a picture of the 3D boxes beside a
bird's-eye view. The result files are also zipped, as the KITTI test server takes them."""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Sequence

import numpy as np
import torch

from deformdetr._files import write_atomic
from deformdetr.data.camera import ModelView, model_view
from deformdetr.data.kitti import Calibration
from deformdetr.data.kitti_dataset import eval_input
from deformdetr.engine.outputs import as_float32
from deformdetr.engine.predict import (
    Predictions,
    category_fields,
    compiled,
    drawing_names,
    output_names,
    run_in_batches,
    write_predictions,
)
from deformdetr.eval.kitti import kitti_detections, write_kitti_result_file
from deformdetr.models.mono.decode import Detection3D, decode

__all__ = ["predict_images_3d", "detection_record", "RESULTS_NAME", "RESULTS_ZIP_NAME"]

#: The folder of KITTI result files (one ``<image stem>.txt`` per image) in the output folder.
RESULTS_NAME = "kitti_results"
#: The same files in a zip, at its root: what the KITTI test server takes.
RESULTS_ZIP_NAME = "kitti_results.zip"


def detection_record(row: Detection3D, categories) -> dict:
    """One decoded detection as predictions.json holds it: the class (label, category_id, name),
    the score and the result file's other fields by name (alpha, the 2D box, h w l, the bottom
    centre x y z in the camera frame, ry)."""
    return {**category_fields(categories, row.label), "score": float(row.score), "alpha": float(row.alpha),
            "box_xyxy": [float(row.x1), float(row.y1), float(row.x2), float(row.y2)],
            "h": float(row.h), "w": float(row.w), "l": float(row.l),
            "location": [float(row.x), float(row.y), float(row.z)], "ry": float(row.ry)}


@torch.no_grad()
def predict_images_3d(model, image_paths: Sequence[str], output_dir: str, device, cameras: Sequence[Calibration],
                      resolution: Sequence[int], decode_settings: dict, categories=None, batch_size: int = 1,
                      draw: bool = True, compile: bool = False) -> Predictions:
    """Runs a MonoDETR ``model`` on each image with its camera (``cameras``, one per image), as
    evaluation does: the image scaled to ``resolution`` (W, H) about its centre, the model and the
    decoding (``decode_settings``: topk, threshold, cls_mean_size) given the camera and size of
    the part of the image the network sees (``data.camera.model_view``: the whole image when it
    has the input's aspect ratio, as KITTI's have).

    Writes into ``output_dir``: ``kitti_results/<stem>.txt`` per image (every one, also with no
    detections; KITTI's label format with the score; stems suffixed ``_1``... where two inputs
    share one), ``kitti_results.zip`` with those files at its root, predictions.json (per image
    the camera used and each detection by field name, see :func:`detection_record`) and, with
    ``draw``, ``<stem>.png``: the boxes on the image beside a bird's-eye view. Result files of an
    earlier run in ``kitti_results/`` are removed. ``batch_size`` images run together (all inputs
    share the resolution); results equal those of one image at a time. ``compile``: the model
    through torch.compile. Unreadable images are skipped as by
    ``engine.predict.predict_images``."""
    os.makedirs(output_dir, exist_ok=True)
    results_dir = os.path.join(output_dir, RESULTS_NAME)
    os.makedirs(results_dir, exist_ok=True)
    model.eval().to(device)
    runner = compiled(model, "the first batch") if compile else model
    pictures = drawing_names(image_paths, output_dir)
    result_files = output_names(image_paths, results_dir, ".txt")
    views: dict[int, ModelView] = {}
    records: dict[int, dict] = {}

    def prepare(index: int, image) -> torch.Tensor:
        views[index] = model_view(cameras[index], image.size, resolution)
        return eval_input(image, resolution)

    def run(group: list) -> None:
        indices = [index for index, _, _ in group]
        calibs = torch.from_numpy(np.stack([views[i].P2 for i in indices])).float()
        sizes = torch.tensor([views[i].size for i in indices], dtype=torch.int64)
        images = torch.stack([tensor for _, _, tensor in group])
        outputs = runner(images.to(device), calibs.to(device), sizes.to(device))
        for (index, image, _), rows in zip(group, decode(as_float32(outputs), calibs, sizes, **decode_settings)):
            rows = [_in_image_rows(row, views[index].top) for row in rows]
            records[index] = _image_record(index, image, rows)

    def _image_record(index: int, image, rows: list) -> dict:
        result_file = os.path.join(results_dir, result_files[index])
        write_kitti_result_file(result_file, kitti_detections(rows))
        record = {"image": os.path.abspath(image_paths[index]), "width": image.width, "height": image.height,
                  "P2": cameras[index].P2.tolist(), "result_file": result_file,
                  "detections": [detection_record(row, categories) for row in rows]}
        if draw:
            from deformdetr.engine.visualize_3d import draw_boxes_3d

            png = os.path.join(output_dir, pictures[index])
            names = None if categories is None else categories.names()
            draw_boxes_3d(image, cameras[index], rows, names).save(png)
            record["png"] = png
        return record

    skipped = run_in_batches(image_paths, prepare, run, batch_size)
    _warn_about_cut_images(image_paths, views, resolution)
    predictions = write_predictions(output_dir, image_paths, records, skipped)
    written = [result_files[i] for i in sorted(records)]
    _remove_other_results(results_dir, written)
    _zip_atomically(os.path.join(output_dir, RESULTS_ZIP_NAME), results_dir, written)
    return predictions


def _in_image_rows(row: Detection3D, top: float) -> Detection3D:
    """A detection decoded in the rows the network saw, with its 2D box in the image's rows."""
    return row if top == 0 else row._replace(y1=row.y1 + top, y2=row.y2 + top)


def _warn_about_cut_images(image_paths: Sequence[str], views: dict, resolution: Sequence[int]) -> None:
    """One line about the images the network sees only a band of (another aspect ratio)."""
    cut = [i for i in sorted(views) if not views[i].whole_image]
    if not cut:
        return
    first = views[cut[0]]
    rows = f"rows {first.top:.0f}..{first.top + first.size[1]:.0f}"
    warnings.warn(f"{len(cut)} of {len(views)} images are not of the model's input shape ({resolution[0]}x"
                  f"{resolution[1]}): it sees them scaled to its width, a band of rows about the middle "
                  f"(e.g. {rows} of {os.path.basename(image_paths[cut[0]])}), and finds nothing above or "
                  f"below it; the boxes are placed in the whole image", RuntimeWarning)


def _remove_other_results(results_dir: str, written: Sequence[str]) -> None:
    """The folder holds this run's result files only: a submission zipped from it by hand must
    not carry an earlier run's images."""
    keep = set(written)
    for name in os.listdir(results_dir):
        if name.endswith(".txt") and name not in keep:
            os.remove(os.path.join(results_dir, name))


def _zip_atomically(path: str, folder: str, names: Sequence[str]) -> None:
    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                archive.write(os.path.join(folder, name), arcname=name)

    write_atomic(path, write)
