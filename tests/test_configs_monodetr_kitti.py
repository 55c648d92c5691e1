"""The monodetr_kitti preset is the official MonoDETR recipe: every key of the official
configs/monodetr.yaml, its value there, and the key and value that carry it here (or why no key
does). Where this project departs from it on purpose, another preset says so in its name."""

import os

import pytest
import torch

from deformdetr.configs import load_config

SAME = object()  # our value is the official one

# (official key, official value, our key, our value) or (official key, official value, None, why)
OFFICIAL_KEYS = [
    ("random_seed", 444, "train.seed", SAME),
    ("dataset.type", "KITTI", "data.dataset", "kitti"),
    ("dataset.root_dir", "data/KITTIDataset", "data.root", SAME),
    ("dataset.train_split", "train", "data.train_split", SAME),
    ("dataset.test_split", "val", "data.val_split", SAME),
    ("dataset.batch_size", 16, "train.batch_size", SAME),
    ("dataset.use_3d_center", True, None, "read and never used by the official code"),
    ("dataset.class_merging", False, "data.class_merging", SAME),
    ("dataset.use_dontcare", False, None, "DontCare lines (at z = -1000 m) never pass the depth filter, "
                                          "so officially either value trains the same; none become targets here"),
    ("dataset.bbox2d_type", "anno", None, "read, checked and never used: the label files' 2D boxes are the targets"),
    ("dataset.meanshape", False, "data.meanshape", SAME),
    ("dataset.writelist", ["Car"], "data.writelist", SAME),
    ("dataset.clip_2d", False, "data.clip_2d", SAME),
    ("dataset.aug_pd", True, "data.aug_pd", SAME),
    ("dataset.aug_crop", True, "data.aug_crop", SAME),
    ("dataset.random_flip", 0.5, "data.random_flip", SAME),
    ("dataset.random_crop", 0.5, "data.random_crop", SAME),
    ("dataset.scale", 0.05, "data.scale", SAME),
    ("dataset.shift", 0.05, "data.shift", SAME),
    ("dataset.depth_scale", "normal", "data.depth_scale", SAME),
    ("model_name", "monodetr", "task", "mono3d"),
    ("model.num_classes", 3, "model.num_classes", SAME),
    ("model.return_intermediate_dec", True, None, "always: every decoder layer's outputs (aux_outputs)"),
    ("model.device", "cuda", "device", "auto"),
    ("model.backbone", "resnet50", "model.backbone", SAME),
    ("model.train_backbone", True, "model.train_backbone", SAME),
    ("model.num_feature_levels", 4, "model.num_feature_levels", SAME),
    ("model.dilation", False, "model.dilation", SAME),
    ("model.position_embedding", "sine", "model.position_embedding", SAME),
    ("model.masks", False, None, "no mask head"),
    ("model.mode", "LID", None, "the depth bins are always linear-increasing (LID)"),
    ("model.num_depth_bins", 80, "model.num_depth_bins", SAME),
    ("model.depth_min", 1e-3, "model.depth_min", SAME),
    ("model.depth_max", 60.0, "model.depth_max", SAME),
    ("model.with_box_refine", True, "model.with_box_refine", SAME),
    ("model.two_stage", False, "model.two_stage", SAME),
    ("model.use_dab", False, None, "not implemented (off officially)"),
    ("model.use_dn", False, None, "not implemented (off officially)"),
    ("model.two_stage_dino", False, None, "not implemented (off officially)"),
    ("model.init_box", False, None, "MonoDETRConfig.init_box, False"),
    ("model.enc_layers", 3, "model.enc_layers", SAME),
    ("model.dec_layers", 3, "model.dec_layers", SAME),
    ("model.hidden_dim", 256, "model.hidden_dim", SAME),
    ("model.dim_feedforward", 256, "model.dim_feedforward", SAME),
    ("model.dropout", 0.1, "model.dropout", SAME),
    ("model.nheads", 8, "model.nheads", SAME),
    ("model.num_queries", 50, "model.num_queries", SAME),
    ("model.enc_n_points", 4, "model.enc_n_points", SAME),
    ("model.dec_n_points", 4, "model.dec_n_points", SAME),
    ("model.scalar", 5, None, "denoising queries (use_dn) only"),
    ("model.label_noise_scale", 0.2, None, "denoising queries (use_dn) only"),
    ("model.box_noise_scale", 0.4, None, "denoising queries (use_dn) only"),
    ("model.num_patterns", 0, None, "denoising queries (use_dn) only"),
    ("model.aux_loss", True, "model.aux_loss", SAME),
    ("model.cls_loss_coef", 2, "loss.cls_loss_coef", SAME),
    ("model.focal_alpha", 0.25, "loss.focal_alpha", SAME),
    ("model.bbox_loss_coef", 5, "loss.bbox_loss_coef", SAME),
    ("model.giou_loss_coef", 2, "loss.giou_loss_coef", SAME),
    ("model.3dcenter_loss_coef", 10, "loss.center_loss_coef", SAME),
    ("model.dim_loss_coef", 1, "loss.dim_loss_coef", SAME),
    ("model.angle_loss_coef", 1, "loss.angle_loss_coef", SAME),
    ("model.depth_loss_coef", 1, "loss.depth_loss_coef", SAME),
    ("model.depth_map_loss_coef", 1, "loss.depth_map_loss_coef", SAME),
    ("model.set_cost_class", 2, "loss.set_cost_class", SAME),
    ("model.set_cost_bbox", 5, "loss.set_cost_bbox", SAME),
    ("model.set_cost_giou", 2, "loss.set_cost_giou", SAME),
    ("model.set_cost_3dcenter", 10, "loss.set_cost_3dcenter", SAME),
    ("optimizer.type", "adamw", None, "the task's optimizer is AdamW (Mono3DTask.build_optimizer)"),
    ("optimizer.lr", 0.0002, "train.lr", SAME),
    ("optimizer.weight_decay", 0.0001, "train.weight_decay", SAME),
    ("lr_scheduler.type", "step", None, "the task's schedule is the step decay (Mono3DTask.build_scheduler)"),
    ("lr_scheduler.warmup", False, None, "no warm-up"),
    ("lr_scheduler.decay_rate", 0.1, "train.decay_rate", SAME),
    ("lr_scheduler.decay_list", [125, 165], "train.decay_list", SAME),
    ("trainer.max_epoch", 195, "train.epochs", SAME),
    ("trainer.gpu_ids", "1", None, "the device setting, or torchrun for several"),
    ("trainer.save_frequency", 1, None, "a checkpoint after every epoch"),
    ("trainer.save_path", "outputs/", "output_dir", "outputs/monodetr_kitti"),
    ("trainer.save_all", False, None, "the last and the best checkpoints are kept"),
    ("trainer.use_dn", False, None, "not implemented (off officially)"),
    ("trainer.scalar", 5, None, "denoising queries (use_dn) only"),
    ("trainer.label_noise_scale", 0.2, None, "denoising queries (use_dn) only"),
    ("trainer.box_noise_scale", 0.4, None, "denoising queries (use_dn) only"),
    ("trainer.num_patterns", 0, None, "denoising queries (use_dn) only"),
    ("tester.type", "KITTI", "data.dataset", "kitti"),
    ("tester.mode", "single", None, "`deformdetr eval` evaluates the one checkpoint it is given"),
    ("tester.checkpoint", 195, None, "`deformdetr eval --checkpoint`"),
    ("tester.threshold", 0.2, "test.threshold", SAME),
    ("tester.topk", 50, "test.topk", SAME),
]


def _value(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("official_key, official, ours, value", [row for row in OFFICIAL_KEYS if row[2]],
                         ids=[row[0] for row in OFFICIAL_KEYS if row[2]])
def test_monodetr_kitti_has_each_official_setting(official_key, official, ours, value):
    assert _value(load_config("monodetr_kitti"), ours) == (official if value is SAME else value)


def test_the_table_is_the_official_config_when_its_checkout_is_at_hand():
    """Checked against the official file where DEFORMDETR_OFFICIAL_MONODETR points at a checkout
    (the table above is its transcription)."""
    checkout = os.environ.get("DEFORMDETR_OFFICIAL_MONODETR", "")
    path = os.path.join(checkout, "configs", "monodetr.yaml")
    if not os.path.isfile(path):
        pytest.skip("no checkout of the official MonoDETR (set DEFORMDETR_OFFICIAL_MONODETR)")
    import yaml

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    official = dict(flat(yaml.safe_load(open(path))))
    official["model.depth_min"] = float(official["model.depth_min"])  # YAML reads 1e-3 as text
    assert {row[0]: row[1] for row in OFFICIAL_KEYS} == official


def test_the_official_schedule_divides_the_learning_rate_by_ten_at_125_and_165():
    from deformdetr.engine.tasks import get_task

    task = get_task(load_config("monodetr_kitti"))
    optimizer = task.build_optimizer(torch.nn.Linear(2, 2))
    scheduler = task.build_scheduler(optimizer)
    rates = []
    for _ in range(195):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[124] == pytest.approx(2e-4) and rates[125] == pytest.approx(2e-5)
    assert rates[164] == pytest.approx(2e-5) and rates[165] == pytest.approx(2e-6) and rates[194] == rates[165]


def test_the_three_class_preset_departs_from_the_official_only_in_its_classes():
    official, three = load_config("monodetr_kitti"), load_config("monodetr_kitti_3class")
    assert three["data"]["writelist"] == ["Car", "Pedestrian", "Cyclist"]
    three["data"]["writelist"], three["output_dir"] = official["data"]["writelist"], official["output_dir"]
    assert three == official


@pytest.mark.parametrize("override, match", [
    ("data.writelist=[Truck]", "data.writelist must list some of Pedestrian, Car, Cyclist"),
    ("data.writelist=Car", "data.writelist must list"),
    ("data.writelist=[]", "data.writelist must list"),
    ("model.num_classes=2", r"model.num_classes=2 has no label for Cyclist"),
    ("data.depth_scale=log", "data.depth_scale must be one of normal, inverse, none"),
])
def test_bad_class_settings_are_config_errors(override, match):
    from deformdetr.configs import ConfigError

    overrides = ["data.writelist=[Car,Cyclist]"] if "num_classes" in override else []
    with pytest.raises(ConfigError, match=match):
        load_config("monodetr_kitti", overrides + [override])
