"""Detections on image files: a JSON file of boxes and, per image, a PNG with the boxes drawn."""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import torch
from tqdm import tqdm

from deformdetr.engine.visualize import draw_detections
from deformdetr.models.postprocess import PostProcess

__all__ = ["predict_images"]


@torch.no_grad()
def predict_images(model, image_paths: Sequence[str], output_dir: str, transform, device,
                   threshold: float = 0.5, class_names: Optional[Mapping[int, str]] = None,
                   draw: bool = True) -> list[dict]:
    """Runs ``model`` on each image (after ``transform``, the evaluation transform); keeps
    detections scoring at least ``threshold``; writes output_dir/predictions.json and, with
    ``draw``, output_dir/<image name>.png. Returns the JSON records."""
    from deformdetr.data.coco import load_image

    os.makedirs(output_dir, exist_ok=True)
    model.eval().to(device)
    postprocess = PostProcess()
    records = []
    for path in tqdm(image_paths, desc="predict", leave=False):
        image = load_image(path)
        tensor, _ = transform(image, None)
        outputs = model(tensor.unsqueeze(0).to(device))
        size = torch.tensor([[image.height, image.width]], device=device)
        result = postprocess(outputs, size)[0]
        keep = result["scores"] >= threshold
        boxes = result["boxes"][keep].cpu().tolist()
        labels = result["labels"][keep].cpu().tolist()
        scores = result["scores"][keep].cpu().tolist()
        detections = [
            {"label": int(l), "name": (class_names or {}).get(int(l), str(int(l))), "score": float(s),
             "box_xyxy": [float(v) for v in b]}
            for b, l, s in zip(boxes, labels, scores)
        ]
        record = {"image": os.path.abspath(path), "width": image.width, "height": image.height,
                  "detections": detections}
        if draw:
            stem = os.path.splitext(os.path.basename(path))[0]
            png = os.path.join(output_dir, f"{stem}.png")
            draw_detections(image, boxes, labels, scores, class_names).save(png)
            record["png"] = png
        records.append(record)
    with open(os.path.join(output_dir, "predictions.json"), "w") as handle:
        json.dump(records, handle, indent=1)
    return records
