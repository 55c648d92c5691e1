"""deformdetr bench model: the FLOPs and times it attributes to the model's parts."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from deformdetr.bench.backward import backward_by_part
from deformdetr.bench.model import PARTS, flops_by_part, inference_step, random_targets
from deformdetr.models import build_criterion, deformable_detr


def small_model():
    torch.manual_seed(0)
    return deformable_detr("box_refine", num_classes=5, num_queries=10, pretrained_backbone=False, backbone="resnet18",
                           hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64)


def test_each_flop_is_counted_in_one_part_at_most():
    model = small_model().eval()
    images, mask = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    parts = flops_by_part(inference_step(model, images, mask, grad=True))
    total = FlopCounterMode(display=False)
    with total, torch.enable_grad():
        model(images, mask)
    with FlopCounterMode(display=False) as backbone:
        model.backbone[0](images, mask)  # the ResNet alone (the joiner adds the position embedding)
    assert parts["backbone"] == backbone.get_total_flops()
    assert all(parts[name] > 0 for name in ("input projections", "encoder", "decoder", "heads"))
    assert sum(parts.values()) <= total.get_total_flops()


def test_each_backward_flop_is_counted_once_in_the_part_whose_forward_made_it():
    model = small_model().train()
    criterion = build_criterion(num_classes=5, dec_layers=2)
    images, mask = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    targets = random_targets(1, torch.Generator().manual_seed(0), num_classes=5, boxes=3)

    def loss_of(outputs):
        return criterion.total(criterion(outputs, targets))

    parts = backward_by_part(model, PARTS, lambda: model(images, mask), loss_of, count_flops=True)
    model.zero_grad()
    total = FlopCounterMode(display=False)
    loss = loss_of(model(images, mask))
    with total:
        loss.backward()
    assert sum(entry["flops"] for entry in parts.values()) == total.get_total_flops()
    # The ResNet's backward alone: the image needs no gradient, which is what trips FlopCounterMode's
    # own attribution (bench/backward.py); here it is the backbone's, whole.
    model.zero_grad()
    stages = model.backbone[0](images, mask)
    with FlopCounterMode(display=False) as backbone:
        sum(feature.sum() for feature, _ in stages).backward()
    assert parts["backbone"]["flops"] == backbone.get_total_flops() > 0
    assert all(parts[name]["flops"] > 0 and parts[name]["seconds"] > 0
               for name in ("input projections", "encoder", "decoder", "heads"))
