"""Prediction on image files: the model of a checkpoint with the task it belongs to, the image
files named (and those in folders named), images run in batches of one input size with unreadable
ones skipped (:func:`run_in_batches`), the records written as predictions.json
(:func:`write_predictions`); and 2D detections, with a PNG per image with the boxes drawn. (3D
detections: engine/predict_3d.py.)"""

from __future__ import annotations

import glob
import json
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from deformdetr.engine.visualize import draw_detections
from deformdetr.models.postprocess import PostProcess

__all__ = ["Predictions", "drawing_names", "output_names", "predict_images", "run_in_batches", "write_predictions",
           "image_files", "load_for_prediction", "recorded_categories", "category_fields"]

PREDICTIONS_NAME = "predictions.json"
SKIPPED_NAME = "skipped.json"


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def load_for_prediction(checkpoint_path: str):
    """(task, model, categories) of a checkpoint (any source models.checkpoint.read_weights reads):
    ours carry their config and categories, Hugging Face folders their id2label; an official one
    gets its task's default config and categories (COCO's for 91 classes)."""
    from deformdetr.configs import complete
    from deformdetr.engine.tasks import get_task, task_for_family
    from deformdetr.models.checkpoint import family_of, model_from_checkpoint, model_state_of, read_weights

    checkpoint = read_weights(checkpoint_path)
    saved = checkpoint.get("config")
    if isinstance(saved, dict) and "task" in saved:
        cfg = complete(saved)
    else:
        family = family_of(model_state_of(checkpoint, checkpoint_path), checkpoint_path).name
        cfg = complete({"task": task_for_family(family).name})
    model = model_from_checkpoint(checkpoint, checkpoint_path)
    task = get_task(cfg)
    num_classes = model.config.num_classes
    return task, model, recorded_categories(checkpoint, num_classes) or task.default_categories(num_classes)


def recorded_categories(checkpoint: dict, num_classes):
    """The categories a checkpoint of ours records ({"label", "id", "name"} entries; earlier
    versions recorded {label: name}); None for one that records none (an official one)."""
    from deformdetr.data.categories import Categories

    count = num_classes if isinstance(num_classes, int) else None
    if checkpoint.get("categories"):
        return Categories.from_list(checkpoint["categories"], count)
    if checkpoint.get("class_names"):
        return Categories.from_label_names(checkpoint["class_names"], count)
    return None


def image_files(inputs: Sequence[str]) -> list[str]:
    """The image files named, and those in the folders named, without the drawings an earlier
    predict wrote into such a folder (listed in its predictions.json)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            drawn = _earlier_drawings(item)
            paths += sorted(p for p in glob.glob(os.path.join(item, "*"))
                            if p.lower().endswith(IMAGE_SUFFIXES) and os.path.abspath(p) not in drawn)
        else:
            paths.append(item)
    if not paths:
        raise ValueError(f"no images given (files, or folders of {'/'.join(IMAGE_SUFFIXES)})")
    return paths


def _earlier_drawings(folder: str) -> set:
    try:
        with open(os.path.join(folder, PREDICTIONS_NAME)) as handle:
            records = json.load(handle)
        return {os.path.abspath(r["png"]) for r in records if isinstance(r, dict) and "png" in r}
    except (OSError, ValueError, TypeError):
        return set()


class Predictions(list):
    """The JSON records of the images that were read, in input order; ``skipped`` lists the
    images that could not be read, as ``{"image": path, "error": message}``."""

    def __init__(self, records=(), skipped=()):
        super().__init__(records)
        self.skipped = list(skipped)


def _same_file_key(path: str) -> str:
    """Two spellings of one file (relative, via a symlink, other case on Windows) get one key."""
    return os.path.normcase(os.path.realpath(path))


def output_names(image_paths: Sequence[str], folder: str, extension: str) -> list[str]:
    """The file name in ``folder`` of each input's output: ``<stem><extension>``, or
    ``<stem>_1<extension>``, ``<stem>_2<extension>``... (the first free one, in input order) when
    that name is already given to an earlier input (a/x.png and b/x.png, x.jpg and x.png) or is
    one of the input images itself (``folder`` holding the inputs), so that no output overwrites
    an input image or another output."""
    taken = {_same_file_key(path) for path in image_paths}
    names = []
    for path in image_paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, suffix = f"{stem}{extension}", 0
        while _same_file_key(os.path.join(folder, name)) in taken:
            suffix += 1
            name = f"{stem}_{suffix}{extension}"
        taken.add(_same_file_key(os.path.join(folder, name)))
        names.append(name)
    return names


def drawing_names(image_paths: Sequence[str], output_dir: str) -> list[str]:
    """The PNG file name in ``output_dir`` of each input's drawing (see :func:`output_names`)."""
    return output_names(image_paths, output_dir, ".png")


def _detections(result: dict, threshold: float, categories) -> tuple:
    """(boxes, labels, scores, JSON detections) of one post-processed result, above ``threshold``."""
    keep = result["scores"] >= threshold
    boxes = result["boxes"][keep].cpu().tolist()
    labels = result["labels"][keep].cpu().tolist()
    scores = result["scores"][keep].cpu().tolist()
    detections = [{**category_fields(categories, l), "score": float(s), "box_xyxy": [float(v) for v in b]}
                  for b, l, s in zip(boxes, labels, scores)]
    return boxes, labels, scores, detections


def category_fields(categories, label) -> dict:
    """A detection's class in predictions.json: the model's ``label``, the data set's
    ``category_id`` and ``name`` (from ``categories``; None: the label for both)."""
    label = int(label)
    if categories is None:
        return {"label": label, "category_id": label, "name": str(label)}
    return {"label": label, "category_id": categories.id_of(label), "name": categories.name_of(label)}


def _write_json(path: str, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=1)


def compiled(model, waits: str, say: bool = True):
    """``torch.compile(model)``; with ``say``, says on stderr that ``waits`` (the first image of
    each size, the first step...) waits for the compilation: up to a few minutes on a CPU (80-100
    s for a full-size model here, less when torch's compile cache holds it), with nothing else to
    show for it."""
    if say:
        print(f"deformdetr: compiling the model with torch.compile; {waits} waits for it (up to a few "
              f"minutes on a CPU)", file=sys.stderr, flush=True)
    return torch.compile(model)


@torch.no_grad()
def predict_images(model, image_paths: Sequence[str], output_dir: str, transform, device,
                   threshold: float = 0.5, categories=None, draw: bool = True, batch_size: int = 1,
                   compile: bool = False) -> Predictions:
    """Runs ``model`` on each image (after ``transform``, the evaluation transform); keeps
    detections scoring at least ``threshold``; writes output_dir/predictions.json and, with
    ``draw``, one PNG per image named by :func:`drawing_names` (``<stem>.png``, suffixed ``_1``,
    ``_2``... where names collide or would overwrite an input image). Returns the JSON records,
    in input order: each detection with the model's ``label``, the data set's ``category_id`` and
    ``name`` (from ``categories``, a data.categories.Categories; None: labels only).

    ``batch_size`` images of one size (after the transform) run together, so that no image is
    padded: the results are those of one image at a time. ``compile``: through torch.compile
    (worth it for many images: the first ones of each size wait for compilation).

    An image that cannot be read is skipped with a warning naming it; the skipped images are
    listed in output_dir/skipped.json (written only when there are some) and in the result's
    ``skipped``. Only when none of the images can be read is that an error (ValueError)."""
    os.makedirs(output_dir, exist_ok=True)
    model.eval().to(device)
    runner = compiled(model, "the first image of each size") if compile else model
    postprocess = PostProcess()
    names = drawing_names(image_paths, output_dir)
    records: dict[int, dict] = {}

    def run(group: list) -> None:
        outputs = runner(torch.stack([tensor for _, _, tensor in group]).to(device))
        sizes = torch.tensor([[image.height, image.width] for _, image, _ in group], device=device)
        for (index, image, _), result in zip(group, postprocess(outputs, sizes)):
            records[index] = _record(image_paths[index], image, result, threshold, categories,
                                     os.path.join(output_dir, names[index]) if draw else None)

    skipped = run_in_batches(image_paths, lambda index, image: transform(image, None)[0], run, batch_size)
    return write_predictions(output_dir, image_paths, records, skipped)


def run_in_batches(image_paths: Sequence[str], prepare: Callable, run: Callable, batch_size: int) -> list[dict]:
    """Reads each image and calls ``run(group)`` on groups of up to ``batch_size`` images whose
    network inputs ``prepare(index, image)`` have one shape, so that no image is padded: a group is
    [(index in image_paths, PIL image, input tensor), ...] in input order. An image that cannot be
    read is skipped with a warning naming it; returns the skipped ones as {"image", "error"}."""
    from deformdetr.data.coco import ImageLoadError, load_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    skipped = []
    pending: dict[tuple, list] = {}  # input shape -> [(index, image, tensor)]
    for index, path in enumerate(tqdm(image_paths, desc="predict", leave=False)):
        try:
            image = load_image(path)
        except ImageLoadError as error:
            warnings.warn(f"predict: skipping {error}", RuntimeWarning)
            skipped.append({"image": os.path.abspath(path), "error": str(error)})
            continue
        tensor = prepare(index, image)
        group = pending.setdefault(tuple(tensor.shape), [])
        group.append((index, image, tensor))
        if len(group) == batch_size:
            run(pending.pop(tuple(tensor.shape)))
    for group in pending.values():
        run(group)
    return skipped


def write_predictions(output_dir: str, image_paths: Sequence[str], records: dict, skipped: list) -> Predictions:
    """The records ({index in image_paths: record}) in input order, written to predictions.json,
    and the skipped images to skipped.json (an earlier run's list removed when there are none);
    a ValueError when no image could be read."""
    predictions = Predictions((records[i] for i in sorted(records)), skipped)
    if image_paths and not predictions:
        reasons = "; ".join(s["error"] for s in predictions.skipped[:3])
        raise ValueError(f"none of the {len(image_paths)} images could be read ({reasons}"
                         f"{'; ...' if len(predictions.skipped) > 3 else ''})")
    _write_json(os.path.join(output_dir, PREDICTIONS_NAME), list(predictions))
    skipped_file = os.path.join(output_dir, SKIPPED_NAME)
    if predictions.skipped:
        _write_json(skipped_file, predictions.skipped)
    elif os.path.exists(skipped_file):
        os.remove(skipped_file)  # an earlier run's list would describe images this run read
    return predictions


def _record(path: str, image, result: dict, threshold: float, categories, png: Optional[str]) -> dict:
    """One image's JSON record; its drawing saved to ``png`` (when given)."""
    boxes, labels, scores, detections = _detections(result, threshold, categories)
    record = {"image": os.path.abspath(path), "width": image.width, "height": image.height,
              "detections": detections}
    if png is not None:
        draw_detections(image, boxes, labels, scores, None if categories is None else categories.names()).save(png)
        record["png"] = png
    return record
