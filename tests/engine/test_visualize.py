"""Pictures: detections drawn legibly, curves plotted from the log."""

import json

from PIL import Image

from deformdetr.engine.visualize import draw_detections, plot_log


def test_small_images_are_enlarged_and_boxes_follow():
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    drawn = draw_detections(image, [[10, 10, 30, 20]], [1], [0.9], {1: "circle"})
    assert drawn.size == (64 * 6, 48 * 6)  # 256 / 48 rounded up
    # The box outline sits at the scaled coordinates.
    assert drawn.getpixel((10 * 6 + 40, 20 * 6)) != (0, 0, 0)
    assert drawn.getpixel((5, 47 * 6)) == (0, 0, 0)


def test_large_images_keep_their_size():
    image = Image.new("RGB", (640, 480))
    assert draw_detections(image, [], [], []).size == (640, 480)


def test_plot_log_writes_a_png(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"epoch": e, "train_loss": 5 - e, "test_AP": 0.1 * e,
                                          "test_AP50": 0.2 * e, "test_AP75": 0.05 * e}) for e in range(3)))
    out = plot_log(str(log), str(tmp_path / "curves.png"))
    assert Image.open(out).size[0] > 100
