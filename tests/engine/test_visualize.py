"""Pictures: detections drawn legibly, curves plotted from the log (COCO AP for detection, KITTI AP
for mono3d)."""

import json

import pytest
from PIL import Image

from deformdetr.engine.tasks.detection import DetectionTask
from deformdetr.engine.tasks.mono3d import Mono3DTask
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
    out = plot_log(str(log), str(tmp_path / "curves.png"), DetectionTask.plot_panel)
    assert Image.open(out).size[0] > 100


def right_panel(records, panel):
    import matplotlib.pyplot as plt

    from deformdetr.engine.visualize import log_figure

    figure = log_figure(records, panel)
    axis = figure.axes[1]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}
    label, limits = axis.get_ylabel(), axis.get_ylim()
    plt.close(figure)
    return label, limits, curves


def test_detection_log_plots_coco_ap():
    records = [{"epoch": e, "train_loss": 5 - e, "test_AP": 0.1 * e, "test_AP50": 0.2 * e, "test_AP75": 0.05 * e}
               for e in range(3)]
    label, limits, curves = right_panel(records, DetectionTask.plot_panel)
    assert label == "COCO box AP" and limits == (0, 1)
    assert sorted(curves) == ["AP", "AP50", "AP75"] and curves["AP50"] == ([0, 1, 2], [0.0, 0.2, 0.4])


def test_mono3d_log_plots_kitti_headline_metrics():
    # the trainer writes the mono3d evaluation as test_<class>_<metric>_<difficulty>_R40 (in %)
    records = [{"epoch": 0, "train_loss": 9.0},  # not evaluated this epoch
               {"epoch": 1, "train_loss": 8.0, "test_Car_3d_moderate_R40": 12.5, "test_Car_bev_moderate_R40": 20.0,
                "test_Pedestrian_3d_moderate_R40": 3.0, "test_AP_unrelated": 1}]
    label, limits, curves = right_panel(records, Mono3DTask.plot_panel)
    assert "KITTI" in label and "R40" in label and "moderate" in label and limits == (0, 100)
    assert curves == {"Car 3D": ([1], [12.5]), "Car BEV": ([1], [20.0])}


def test_log_without_evaluation_says_so():
    import matplotlib.pyplot as plt

    from deformdetr.engine.visualize import log_figure

    figure = log_figure([{"epoch": 0, "train_loss": 1.0}])
    assert [t.get_text() for t in figure.axes[1].texts] == ["no evaluation in the log"]
    plt.close(figure)


@pytest.mark.parametrize("records", [
    [{"epoch": 0, "train_loss": 1.0, "test_AP50": 0.015}],
    [{"epoch": 0, "train_loss": 2.0}, {"epoch": 1, "train_loss": 1.0, "test_AP50": 0.1}],  # one evaluation
])
def test_both_panels_show_the_logs_epochs_as_whole_numbers(records):
    import matplotlib.pyplot as plt

    from deformdetr.engine.visualize import log_figure

    figure = log_figure(records, DetectionTask.plot_panel)
    figure.canvas.draw()
    epochs = [r["epoch"] for r in records]
    assert figure.axes[0].get_xlim() == figure.axes[1].get_xlim()
    for axis in figure.axes:
        low, high = axis.get_xlim()
        assert low < min(epochs) and high > max(epochs)
        ticks = [t for t in axis.get_xticks() if low <= t <= high]
        assert sorted(ticks) == list(range(min(epochs), max(epochs) + 1))
    plt.close(figure)
