"""Pictures of results: detections drawn on images, training curves from the JSON-lines log."""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from PIL import Image, ImageDraw

__all__ = ["draw_detections", "plot_log"]

_MIN_SIDE = 256
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_detections(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[int],
                    scores: Sequence[float], class_names: Optional[Mapping[int, str]] = None) -> Image.Image:
    """A copy of ``image`` with each (x0, y0, x1, y1) box outlined and captioned "name score".
    Images under 256 px are enlarged first (whole pixels, nearest) so that captions stay legible."""
    scale = max(1, -(-_MIN_SIDE // max(1, min(image.size))))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 150))
    for box, label, score in zip(boxes, labels, scores):
        color = _PALETTE[int(label) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = (class_names or {}).get(int(label), str(int(label)))
        caption = f"{name} {float(score):.2f}"
        text_box = draw.textbbox((x0, y0), caption)
        top = max(0.0, y0 - (text_box[3] - text_box[1]) - 2)
        draw.rectangle([x0, top, x0 + text_box[2] - text_box[0] + 2, top + text_box[3] - text_box[1] + 2], fill=color)
        draw.text((x0 + 1, top), caption, fill=(0, 0, 0))
    return canvas


def plot_log(log_path: str, png_path: str) -> Optional[str]:
    """Training loss and validation AP per epoch from the trainer's log, as a PNG."""
    if not os.path.exists(log_path):
        return None
    records = [json.loads(line) for line in open(log_path) if line.strip()]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    loss_axis.plot(epochs, [r.get("train_loss") for r in records], marker="o")
    loss_axis.set(title="training loss", xlabel="epoch", ylabel="weighted loss")
    evaluated = [r for r in records if "test_AP" in r]
    for key in ("test_AP", "test_AP50", "test_AP75"):
        ap_axis.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=key[5:])
    ap_axis.set(title="validation", xlabel="epoch", ylabel="COCO box AP", ylim=(0, 1))
    ap_axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path
