"""The printable summary of a KITTI evaluation, laid out as the devkit prints it: per class and
overlap setting a header with the minimum overlaps, then one line per metric."""

from __future__ import annotations

import io

from deformdetr.eval.kitti.rules import DIFFICULTIES, METRICS, MIN_OVERLAPS

__all__ = ["summary_text"]

_LABELS = {"bbox": "bbox", "bev": "bev ", "3d": "3d  ", "aos": "aos "}


def summary_text(result, metrics) -> str:
    """The summary of a :class:`~deformdetr.eval.kitti.api.KittiEvalResult` that evaluated
    ``metrics`` (those not evaluated show "-" for their minimum overlap)."""
    out = io.StringIO()
    label = "AP_R40" if result.recall_positions == 40 else "AP"
    shown = [m for m in ("bbox", "bev", "3d", "aos") if m in result.precision["strict"]]
    for cls in result.classes:
        for setting, table in (("strict", result.ap), ("loose", result.ap_loose)):
            overlaps = ", ".join(
                f"{MIN_OVERLAPS[setting][m][cls]:.2f}" if m in metrics else "-" for m in METRICS
            )
            print(f"{cls} {label}@{overlaps}:", file=out)
            for metric in shown:
                values = table[cls][metric]
                digits = 2 if metric == "aos" else 4
                text = ", ".join(f"{values[d]:.{digits}f}" for d in DIFFICULTIES)
                print(f"{_LABELS[metric]} AP:{text}", file=out)
    return out.getvalue()
