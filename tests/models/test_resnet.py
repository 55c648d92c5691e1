"""ResNet with frozen batch norm: torchvision-compatible names and the frozen statistics."""

import pytest
import torch
from torch import nn

from deformdetr.models.backbone import Backbone, load_backbone_weights
from deformdetr.models.conv import Conv2d
from deformdetr.models.resnet import FrozenBatchNorm2d, conv_norm, resnet18, resnet50


def test_frozen_batch_norm_equals_batch_norm_in_eval_mode():
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(bn.state_dict())  # drops num_batches_tracked
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))
    assert list(frozen.parameters()) == []


def _random_frozen_norm(channels: int) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(channels)
    for buffer in (norm.weight, norm.running_var):
        buffer.uniform_(0.5, 2)
    for buffer in (norm.bias, norm.running_mean):
        buffer.normal_()
    return norm


@pytest.mark.parametrize("size", [12, 3])  # the second: the matmul weight gradient's path (conv.py)
def test_a_frozen_norm_folded_into_the_convolution_gives_its_values_and_gradients(size):
    torch.manual_seed(0)
    conv, norm = Conv2d(8, 16, 3, padding=1, bias=False).double(), _random_frozen_norm(16).double()
    x = torch.randn(4, 8, size, size, dtype=torch.float64, requires_grad=True)
    folded = conv_norm(conv, norm, x)
    separate = norm(conv(x))
    torch.testing.assert_close(folded, separate, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(folded)
    folded_grads = torch.autograd.grad(folded, (x, conv.weight), grad)
    separate_grads = torch.autograd.grad(separate, (x, conv.weight), grad)
    for a, b in zip(folded_grads, separate_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_folded_norm_makes_no_pass_over_the_output():
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpsOnOutputs(TorchDispatchMode):
        def __init__(self, numel):
            super().__init__()
            self.numel, self.ops = numel, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == self.numel:
                self.ops.append(func.overloadpacket.__name__)
            return out

    conv, norm = Conv2d(8, 16, 3, padding=1, bias=False).eval(), _random_frozen_norm(16)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad(), OpsOnOutputs(16 * 10 * 10) as mode:
        conv_norm(conv, norm, x)
    assert mode.ops == ["convolution"]


def test_other_norms_are_not_folded():
    conv, norm = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4).train()
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(0)
    assert torch.equal(conv_norm(conv, norm, x), nn.BatchNorm2d(4).train()(conv(x)))


@pytest.mark.parametrize("norm_layer", [None, nn.BatchNorm2d])
def test_inference_on_the_cpu_runs_channels_last_with_the_values_of_the_default_layout(norm_layer, monkeypatch):
    import deformdetr.models.resnet as resnet

    torch.manual_seed(0)
    model = resnet18(with_head=False, norm_layer=norm_layer).eval()
    x = torch.randn(1, 3, 256, 264)  # over resnet.CHANNELS_LAST_MIN_PIXELS
    with torch.no_grad():
        fast = model.forward_stages(x, ["layer2", "layer4"])
        monkeypatch.setattr(resnet, "inference_layout", lambda images: images)
        default = model.forward_stages(x, ["layer2", "layer4"])
    for name in fast:
        assert fast[name].is_contiguous(memory_format=torch.channels_last)
        assert default[name].is_contiguous()
        # Float rounding only: within 1e-5 of the stage's largest value (features reach ~20 here).
        assert (fast[name] - default[name]).abs().max() <= 1e-5 * default[name].abs().max()


def test_inference_on_small_images_keeps_the_default_layout():
    model = resnet18(with_head=False).eval()
    with torch.no_grad():  # 2 x 128 x 160 pixels: below resnet.CHANNELS_LAST_MIN_PIXELS, where it was slower
        out = model.forward_stages(torch.randn(2, 3, 128, 160), ["layer2"])["layer2"]
    assert out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)


def test_training_keeps_the_default_layout():
    model = resnet18(with_head=False, norm_layer=nn.BatchNorm2d).train()
    out = model.forward_stages(torch.randn(2, 3, 32, 32), ["layer3"])["layer3"]
    assert out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)


def test_resnet50_has_torchvision_state_dict_layout():
    keys = resnet50().state_dict().keys()
    # 53 convolutions (+4 downsample), each with a frozen BN of 4 buffers, plus the fc layer.
    assert len(keys) == 53 * 5 + 2
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.weight", "layer4.2.conv3.weight", "layer4.2.bn3.bias",
                "fc.weight", "fc.bias"):
        assert key in keys


def test_dc5_keeps_stride_16_and_output_channels():
    model = resnet50(dilate_last=True, with_head=False)
    out = model.forward_stages(torch.randn(1, 3, 64, 64), ["layer2", "layer4"])
    assert out["layer2"].shape == (1, 512, 8, 8)
    assert out["layer4"].shape == (1, 2048, 4, 4)


def test_backbone_weights_load_from_a_torchvision_style_file(tmp_path):
    source = resnet18()
    with torch.no_grad():
        source.conv1.weight.normal_()
    path = tmp_path / "resnet18.pth"
    state = source.state_dict()
    state["bn1.num_batches_tracked"] = torch.tensor(3)  # as torchvision's BatchNorm2d saves it
    torch.save(state, path)
    backbone = Backbone("resnet18")
    load_backbone_weights(backbone, str(path))
    assert torch.equal(backbone.body.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="do not fit"):
        load_backbone_weights(Backbone("resnet50"), str(path))
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(backbone, str(tmp_path / "missing.pth"))
