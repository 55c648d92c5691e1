"""ResNet-50/101 with frozen batch norm, written here so that torchvision is not a dependency.

Module names equal torchvision's (conv1, bn1, layer1..layer4, downsample, fc), so torchvision's
ImageNet state dicts, and the backbone part of official Deformable DETR checkpoints, load as-is.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from deformdetr.models.conv import Conv2d
from deformdetr.ops.eager import inference_on_cpu

__all__ = ["FrozenBatchNorm2d", "conv_norm", "ConvNorm", "BasicBlock", "Bottleneck", "ResNet", "inference_layout",
           "CHANNELS_LAST_MIN_PIXELS", "resnet18", "resnet34", "resnet50", "resnet101", "RESNETS", "RESNET_URLS"]

# torchvision's ImageNet weights (the "V1" weights Deformable DETR was trained from).
RESNET_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-5c106cde.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-333f7ec4.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all buffers (never trained).

    Detection batches are too small for batch statistics; DETR freezes them at their ImageNet values.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision's BatchNorm2d state dicts carry a counter this module has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """Per channel: the norm is ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``. A frozen batch norm after a bias-free convolution is folded into it: its
    scale into the weight, its shift as the bias. The same values to float rounding, and the norm's
    two passes over the output (and, in training, its backward's) are gone: a ResNet-50 at 800x1066
    takes 7% less time at inference, 6% less forward and backward (``python bench/eager_tweaks.py``)."""
    if isinstance(norm, FrozenBatchNorm2d) and isinstance(conv, Conv2d) and conv.bias is None:
        scale, shift = norm.scale_and_shift()
        return conv.convolve(x, conv.weight * scale.reshape(-1, 1, 1, 1), shift)
    return norm(conv(x))


#: Pixels in a batch (images x height x width) from which CPU inference runs in channels-last:
#: slower below (1 image of 128x160, 20480 pixels: 1.16-1.24x the time), as fast or faster from a
#: batch of 16 at 64x64 (65536: 0.91-1.03x) and 1 image of 256x320 (0.95-1.01x), faster from
#: 480x640 up (``python bench/eager_tweaks.py``; the ranges are of runs on different days).
CHANNELS_LAST_MIN_PIXELS = 256 * 256


def inference_layout(x: Tensor) -> Tensor:
    """The images in the layout the ResNet runs fastest in. At inference on the CPU, for batches of
    at least :data:`CHANNELS_LAST_MIN_PIXELS`, that is channels-last, oneDNN's own: a ResNet-50
    takes 14% less time at 800x1066, 9% at 384x1280, 7% at 480x640 (``python
    bench/eager_tweaks.py``), and its max pool, which in torch's default layout is a slow loop, 8 ms
    instead of 76 ms at 800x1066. In training the convolutions' backward measured slower in
    channels-last, so training keeps torch's default layout. A graph being compiled or exported
    keeps it too: a test of its sizes would guard (narrow) the sizes an exported model accepts,
    and the compiler lays out its convolutions itself."""
    if inference_on_cpu(x) and x.shape[0] * x.shape[-2] * x.shape[-1] >= CHANNELS_LAST_MIN_PIXELS:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ConvNorm(nn.Sequential):
    """``self[0]`` a convolution, ``self[1]`` its norm (a ResNet's downsample: torchvision's
    ``downsample.0`` / ``downsample.1`` keys), run as :func:`conv_norm`."""

    def forward(self, x: Tensor) -> Tensor:
        return conv_norm(self[0], self[1], x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34). Not an official Deformable DETR backbone; small and fast
    enough to train from scratch on a CPU (the synthetic demo)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, dilation: int = 1, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or FrozenBatchNorm2d
        self.conv1 = Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        return self.relu(conv_norm(self.conv2, self.bn2, out) + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        dilation: int = 1,
        norm_layer=None,
    ):
        super().__init__()
        norm_layer = norm_layer or FrozenBatchNorm2d
        width = planes
        self.conv1 = Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = Conv2d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = norm_layer(width)
        self.conv3 = Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        return self.relu(conv_norm(self.conv3, self.bn3, out) + identity)


class ResNet(nn.Module):
    """The torchvision ResNet layout. ``dilate_last=True`` replaces layer4's stride with dilation
    (the "DC5" backbone: stride 16 instead of 32). ``with_head=False`` leaves out avgpool/fc.
    ``norm_layer`` is frozen batch norm, as DETR uses it; nn.BatchNorm2d trains from scratch."""

    def __init__(self, layers: Sequence[int], dilate_last: bool = False, with_head: bool = True,
                 block: type = None, norm_layer=None):
        super().__init__()
        self.block = block or Bottleneck
        self.norm_layer = norm_layer or FrozenBatchNorm2d
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self.norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate_last)
        if with_head:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * self.block.expansion, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        block = self.block
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = ConvNorm(
                Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self.norm_layer(planes * block.expansion),
            )
        # The first block keeps the previous dilation, as torchvision does.
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation, self.norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation, norm_layer=self.norm_layer)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, x)))

    def forward_stages(self, x: Tensor, stages: Sequence[str]) -> dict[str, Tensor]:
        """Runs up to the last requested stage ("layer1".."layer4"); returns those outputs (in
        channels-last memory at inference on the CPU: :func:`inference_layout`)."""
        x = self.stem(inference_layout(x))
        out = {}
        last = max(int(s[-1]) for s in stages)
        for index in range(1, last + 1):
            name = f"layer{index}"
            x = getattr(self, name)(x)
            if name in stages:
                out[name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_stages(x, ["layer4"])["layer4"]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ResNet:
    return ResNet([2, 2, 2, 2], block=BasicBlock, **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet([3, 4, 6, 3], block=BasicBlock, **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet([3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    return ResNet([3, 4, 23, 3], **kwargs)


RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
