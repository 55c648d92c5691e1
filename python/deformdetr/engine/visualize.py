"""Pictures of results: detections drawn on images, training curves from the JSON-lines log."""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from PIL import Image, ImageDraw

__all__ = ["draw_detections", "log_figure", "plot_log", "class_colour", "enlarged", "draw_caption"]

_MIN_SIDE = 256
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def class_colour(label) -> tuple[int, int, int]:
    """The RGB colour that marks a class in drawings."""
    return _PALETTE[int(label) % len(_PALETTE)]


def enlarged(image: Image.Image) -> tuple[Image.Image, int]:
    """(an RGB copy of ``image``, the whole-pixel factor it was enlarged by): images under 256 px
    are enlarged (nearest) so that captions and lines stay legible."""
    scale = max(1, -(-_MIN_SIDE // max(1, min(image.size))))
    return image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST), scale


def draw_detections(image: Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[int],
                    scores: Sequence[float], class_names: Optional[Mapping[int, str]] = None) -> Image.Image:
    """A copy of ``image`` with each (x0, y0, x1, y1) box outlined and captioned "name score".
    Images under 256 px are enlarged first (whole pixels, nearest) so that captions stay legible."""
    canvas, scale = enlarged(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 150))
    for box, label, score in zip(boxes, labels, scores):
        color = class_colour(label)
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        name = (class_names or {}).get(int(label), str(int(label)))
        draw_caption(draw, x0, y0, f"{name} {float(score):.2f}", color)
    return canvas


def draw_caption(draw: ImageDraw.ImageDraw, x0: float, y0: float, caption: str, color, font=None) -> None:
    """``caption`` in black on a ``color`` label whose lower left corner is (x0, y0), moved down
    where it would leave the top of the picture."""
    text_box = draw.textbbox((x0, y0), caption, font=font)
    top = max(0.0, y0 - (text_box[3] - text_box[1]) - 2)
    draw.rectangle([x0, top, x0 + text_box[2] - text_box[0] + 2, top + text_box[3] - text_box[1] + 2], fill=color)
    draw.text((x0 + 1, top - (text_box[1] - y0)), caption, fill=(0, 0, 0), font=font)


def plot_log(log_path: str, png_path: str, panel: Optional[tuple] = None) -> Optional[str]:
    """Training loss and the validation metrics per epoch from the trainer's log, as a PNG (see
    :func:`log_figure`); None when there is no log or it is empty."""
    if not os.path.exists(log_path):
        return None
    records = [json.loads(line) for line in open(log_path) if line.strip()]
    if not records:
        return None
    figure = log_figure(records, panel)  # first: it selects the file-only backend before pyplot loads
    import matplotlib.pyplot as plt

    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


def log_figure(records: list[dict], panel: Optional[tuple] = None):
    """A matplotlib figure of the log records: the training loss (left) and the validation
    metrics (right). ``panel`` (a task's ``plot_panel``: ((log key, legend), ...), axis label,
    axis range) says which; None: no validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in records]
    loss_axis.plot(epochs, [r.get("train_loss") for r in records], marker="o")
    loss_axis.set(title="training loss", xlabel="epoch", ylabel="weighted loss")
    if panel is None or not any(key in r for r in records for key, _ in panel[0]):
        metric_axis.set(title="validation", xlabel="epoch")
        metric_axis.text(0.5, 0.5, "no evaluation in the log", ha="center", va="center",
                         transform=metric_axis.transAxes)
    else:
        curves, label, limits = panel
        for key, legend in curves:
            evaluated = [r for r in records if key in r]
            metric_axis.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=legend)
        metric_axis.set(title="validation", xlabel="epoch", ylabel=label, ylim=limits)
        metric_axis.legend()
    for axis in (loss_axis, metric_axis):
        _epochs_on(axis, epochs)
    figure.tight_layout()
    return figure


def _epochs_on(axis, epochs: list) -> None:
    """The log's epochs on the x axis, the same range on both panels, with whole-number ticks
    (matplotlib would span a single point with fractional ones such as 0.945..1.05)."""
    from matplotlib.ticker import MaxNLocator

    low, high = min(epochs), max(epochs)
    margin = max(0.5, 0.05 * (high - low))
    axis.set_xlim(low - margin, high + margin)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
