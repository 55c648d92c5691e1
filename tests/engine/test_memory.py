"""Memory knobs: gradient accumulation gives the gradients of the larger batch, and activation
checkpointing the gradients of the plain backward, for both detector families."""

import pytest
import torch

from deformdetr.configs import load_config
from deformdetr.engine.tasks import get_task
from deformdetr.engine.trainer import accumulate_gradients

MONO_TINY = ["data.synthetic.image_size=[32,96]", "data.synthetic.num_train=4", "data.synthetic.num_val=4",
             "data.resolution=[96,32]", "data.num_workers=0", "device=cpu", "model.hidden_dim=32", "model.nheads=2",
             "model.enc_layers=1", "model.dec_layers=2", "model.num_queries=5", "model.group_num=2",
             "model.dim_feedforward=32", "model.backbone=resnet18", "model.pretrained_backbone=false"]


# The official frozen batch norm: trained batch norm (backbone_from_scratch, not official) normalises
# by the statistics of what runs together, so no split of a batch gives the whole's gradients.
FROZEN_BN = "model.backbone_from_scratch=false"


def detection_task(synthetic_root, tiny_overrides, *extra):
    return get_task(load_config("demo_synthetic", tiny_overrides + ["model.dropout=0.0", FROZEN_BN, *extra]))


def mono_task(root, *extra):
    return get_task(load_config("monodetr_synthetic", MONO_TINY + [f"data.root={root}", "model.dropout=0.0", FROZEN_BN,
                                                                   *extra]))


def gradients(task, batches, seed=0):
    """The parameter gradients of ``batches`` taken together, computed a part at a time."""
    torch.manual_seed(seed)
    model, criterion = task.build_model(load_pretrained=False)
    model.train()
    criterion.train()
    accumulate_gradients(task, model, criterion, batches, torch.device("cpu"))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def same_size_samples(dataset, count):
    """``count`` samples of the (deterministic) validation transform, all of one size, so that
    batching them pads nothing."""
    samples = [dataset[i] for i in range(len(dataset))]
    size = samples[0][0].shape
    chosen = [s for s in samples if s[0].shape == size][:count]
    assert len(chosen) == count
    return chosen


def assert_close(a: dict, b: dict):
    """Equal up to float32 rounding (the parts sum in another order): every gradient tensor
    within 1e-4 of its largest entry, or 1e-6 of the model's largest (gradients that are zero
    by design, such as a softmax key's bias or a bias before a norm, are rounding noise)."""
    assert a.keys() == b.keys() and len(a) > 50
    scale = max(float(g.abs().max()) for g in a.values())
    for name in a:
        assert (a[name] - b[name]).abs().max() <= 1e-4 * a[name].abs().max() + 1e-6 * scale, name


def test_accumulated_parts_give_the_gradients_of_the_whole_detection_batch(synthetic_root, tiny_overrides):
    task = detection_task(synthetic_root, tiny_overrides)
    _, val = task.build_datasets()
    samples = same_size_samples(val, 4)
    whole = gradients(task, [task.collate_fn(samples)])
    parts = gradients(task, [task.collate_fn(samples[:2]), task.collate_fn(samples[2:3]), task.collate_fn(samples[3:])])
    assert_close(whole, parts)


def test_accumulated_parts_give_the_gradients_of_the_whole_mono3d_batch(tmp_path):
    # loss_dim rescales by a batch statistic (no gradient through it): that term is the one that
    # differs between parts and the whole, so it is left out here (see MonoSetCriterion).
    task = mono_task(tmp_path / "kitti", "loss.dim_loss_coef=0", "data.random_flip=0", "data.random_crop=0")
    train, _ = task.build_datasets()
    samples = [train[i] for i in range(4)]
    whole = gradients(task, [task.collate_fn(samples)])
    parts = gradients(task, [task.collate_fn(samples[:2]), task.collate_fn(samples[2:])])
    assert_close(whole, parts)


@pytest.mark.parametrize("family", ["detection", "mono3d"])
def test_activation_checkpointing_gives_the_same_gradients(family, synthetic_root, tiny_overrides, tmp_path):
    def task_with(enabled):
        option = f"model.checkpoint_activations={str(enabled).lower()}"
        if family == "detection":
            return detection_task(synthetic_root, tiny_overrides, "model.dropout=0.1", option)
        return mono_task(tmp_path / "kitti", "model.dropout=0.1", "data.random_flip=0", "data.random_crop=0", option)

    plain, recomputed = task_with(False), task_with(True)
    train, _ = plain.build_datasets()
    batch = plain.collate_fn([train[0], train[1]])
    expected = gradients(plain, [batch], seed=3)
    model, _ = recomputed.build_model(load_pretrained=False)
    assert model.state_dict().keys() == plain.build_model(load_pretrained=False)[0].state_dict().keys()
    actual = gradients(recomputed, [batch], seed=3)
    assert_close(expected, actual)
