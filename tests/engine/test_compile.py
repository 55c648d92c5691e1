"""torch.compile of the whole model: no graph breaks in our code (both families, training and
evaluation), and compiled outputs and gradients equal to eager ones."""

import pytest
import torch
import torch._dynamo as dynamo

from deformdetr.models import deformable_detr, monodetr

SMALL = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64)


def detector(variant="box_refine"):
    torch.manual_seed(0)
    return deformable_detr(variant, num_classes=5, num_queries=12, dropout=0.0, **SMALL)


def mono():
    torch.manual_seed(0)
    return monodetr(num_classes=3, num_queries=6, group_num=2, depth_encoder_nheads=4, dropout=0.0, **SMALL)


def detector_inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 100:] = True  # a padded image
    return images, mask


def small_detector_inputs():
    """64x64 images: the ResNet's last stage is 2x2, where models.conv takes the weight gradient
    as a matmul (a custom autograd function inside the graph)."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return images, torch.zeros(2, 64, 64, dtype=torch.bool)


def mono_inputs():
    g = torch.Generator().manual_seed(1)
    calibs = torch.tensor([[700.0, 0, 160, 40], [0, 700, 48, 0], [0, 0, 1, 0.003]]).expand(2, 3, 4)
    return torch.randn(2, 3, 96, 320, generator=g), calibs, torch.tensor([[320, 96]]).expand(2, 2)


@pytest.mark.parametrize("make, inputs", [(lambda: detector("box_refine"), detector_inputs),
                                          (lambda: detector("two_stage"), detector_inputs),
                                          (lambda: detector("multi_scale"), small_detector_inputs),
                                          (mono, mono_inputs)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_models_compile_as_one_graph(make, inputs, mode):
    model = getattr(make(), mode)()
    dynamo.reset()
    explained = dynamo.explain(model)(*inputs())
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow
def test_compiled_outputs_and_gradients_equal_eager_ones():
    torch.set_num_threads(1)
    model = detector("box_refine").train()
    images, mask = detector_inputs()
    eager = model(images, mask)
    loss = eager["pred_logits"].sigmoid().sum() + eager["pred_boxes"].sum()
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    dynamo.reset()
    compiled = torch.compile(model)(images, mask)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.allclose(compiled[key], eager[key], atol=1e-4), key
    (compiled["pred_logits"].sigmoid().sum() + compiled["pred_boxes"].sum()).backward()
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, grad in expected.items():
        assert (model.get_parameter(name).grad - grad).abs().max() <= 1e-3 * scale, name
