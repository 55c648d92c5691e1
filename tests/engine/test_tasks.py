"""The tasks' data sets: synthetic sets are generated on first use and follow their settings."""

import pytest

from deformdetr.configs import load_config
from deformdetr.data import generate_synthetic_coco
from deformdetr.engine.tasks import get_task

# preset, a small image size, the folder of the training images, their names for n images
KINDS = {
    "coco": ("demo_synthetic", "data.synthetic.image_size=32", "train2017",
             lambda n: [f"{i:012d}.jpg" for i in range(1, n + 1)]),
    # KITTI keeps the training and the 2 validation images in one folder
    "kitti": ("monodetr_synthetic", "data.synthetic.image_size=[16,48]", "training/image_2",
              lambda n: [f"{i:06d}.png" for i in range(n + 2)]),
}


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def build_synthetic(kind, root, *overrides):
    preset, size, _, _ = KINDS[kind]
    cfg = load_config(preset, [f"data.root={root}", size, "data.synthetic.num_val=2", *overrides])
    return get_task(cfg).build_datasets()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_changed_synthetic_settings_regenerate_the_set(tmp_path, capsys, kind):
    _, _, images, names = KINDS[kind]
    root = tmp_path / "data"
    train, val = build_synthetic(kind, root, "data.synthetic.num_train=8")
    assert (len(train), len(val)) == (8, 2)
    first = all_files(root)
    capsys.readouterr()
    build_synthetic(kind, root, "data.synthetic.num_train=8")  # same settings: left as it is
    assert all_files(root) == first and capsys.readouterr().err == ""

    train, val = build_synthetic(kind, root, "data.synthetic.num_train=4", "data.synthetic.seed=1")
    assert (len(train), len(val)) == (4, 2)
    err = capsys.readouterr().err
    assert str(root) in err and "num_train 8 -> 4" in err and "seed 0 -> 1" in err
    # the old set's files are replaced: none of the larger set's extra images is left behind
    assert sorted(p.name for p in (root / images).iterdir()) == names(4)
    train, _ = build_synthetic(kind, root, "data.synthetic.num_train=16", "data.synthetic.seed=1")
    assert len(train) == 16


def test_a_set_without_a_record_of_its_settings_is_used_as_it_is(tmp_path, capsys):
    root = tmp_path / "data"
    generate_synthetic_coco(root, num_train=3, num_val=2, image_size=32, seed=0)
    train, _ = build_synthetic("coco", root, "data.synthetic.num_train=8")
    assert len(train) == 3 and "as it is" in capsys.readouterr().err


def test_the_registry_names_its_tasks_and_refuses_others():
    from deformdetr.configs import ConfigError
    from deformdetr.engine.tasks import task_class, task_for_family, task_names
    from deformdetr.engine.tasks.base import Task

    assert task_names() == ["detection", "mono3d"]
    for name in task_names():
        cls = task_class(name)
        assert issubclass(cls, Task) and cls.name == name and task_for_family(cls.family) is cls
    with pytest.raises(ConfigError, match="unknown task 'segmentation'; the tasks are: detection, mono3d"):
        task_class("segmentation")


def test_mono3d_test_keys_choose_what_is_evaluated(tmp_path):
    """test.threshold and test.topk decide which decoded detections are scored and written."""
    import torch

    from deformdetr.engine.trainer import data_loader

    root = tmp_path / "kitti"
    overrides = [f"data.root={root}", "data.synthetic.image_size=[32,96]", "data.synthetic.num_train=2",
                 "data.synthetic.num_val=2", "data.resolution=[96,32]", "data.num_workers=0", "device=cpu",
                 "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=1",
                 "model.num_queries=5", "model.group_num=1", "model.dim_feedforward=32"]

    def written_lines(*test_keys):
        cfg = load_config("monodetr_synthetic", overrides + list(test_keys))
        task = get_task(cfg)
        torch.manual_seed(0)
        model, _ = task.build_model(load_pretrained=False)
        _, val = task.build_datasets()
        results = tmp_path / "_".join(test_keys)
        task.evaluate(model, data_loader(val, task.collate_fn, 2, False, 0, 0, 0), val, torch.device("cpu"),
                      torch.no_grad, str(results))
        return sum(len(p.read_text().splitlines()) for p in results.iterdir())

    assert written_lines("test.threshold=0", "test.topk=4") == 2 * 4  # every one of the top 4 per image
    assert written_lines("test.threshold=0", "test.topk=2") == 2 * 2
    assert written_lines("test.threshold=1") == 0  # an untrained model scores nothing that high


@pytest.mark.parametrize("preset", ["monodetr_kitti", "monodetr_kitti_3class", "monodetr_synthetic"])
def test_mono3d_labels_keep_the_official_numbering_whatever_is_trained(preset):
    """Car is label 1 whether trained alone (the official writelist) or with the others: the
    checkpoint's categories, predictions, drawings and the evaluation's names agree."""
    from deformdetr.eval.kitti import kitti_detections
    from deformdetr.models.mono.decode import Detection3D

    task = get_task(load_config(preset))
    assert task.categories(None).names() == {0: "Pedestrian", 1: "Car", 2: "Cyclist"}
    row = Detection3D(1, 0.0, 0, 0, 10, 10, 1.5, 1.6, 3.9, 0.0, 1.6, 10.0, 0.0, 0.9)
    assert list(kitti_detections([row])["name"]) == ["Car"]
