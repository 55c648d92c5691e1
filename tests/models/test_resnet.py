"""ResNet with frozen batch norm: torchvision-compatible names and the frozen statistics."""

import pytest
import torch
from torch import nn

from deformdetr.models.backbone import Backbone, load_backbone_weights
from deformdetr.models.resnet import FrozenBatchNorm2d, resnet18, resnet50


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
