"""deformdetr bench model: the FLOPs it attributes to the model's parts."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from deformdetr.bench.model import flops_by_part, inference_step
from deformdetr.models import deformable_detr


def test_each_flop_is_counted_in_one_part_at_most():
    torch.manual_seed(0)
    model = deformable_detr("box_refine", num_classes=5, num_queries=10, pretrained_backbone=False, backbone="resnet18",
                            hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64).eval()
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
