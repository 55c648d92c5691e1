"""Batching images of different sizes: zero padding plus a mask that is True at the padding."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["pad_images", "as_padded_batch", "check_images", "resize_mask"]


def check_images(images: Tensor, model_dtype: Optional[torch.dtype] = None) -> None:
    """A (B, 3, H, W) batch a model can take, or an error that says what to change: torch's own
    errors from deep inside the first convolution name neither the input nor the fix."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be torch tensors, got {type(images).__name__} (for a numpy "
                        f"HWC uint8 image: torch.from_numpy(a).permute(2, 0, 1).float() / 255)")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) batch (RGB, channels first), got shape "
                         f"{tuple(images.shape)}; a grayscale image can be repeated: x.expand(3, H, W)")
    if min(images.shape[0], images.shape[2], images.shape[3]) < 1:
        raise ValueError(f"images must hold at least one image of at least 1x1 pixels, got shape "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (normalised as in training), got "
                        f"{images.dtype}; e.g. x.float() / 255, then the ImageNet mean and std")
    if model_dtype is not None and images.dtype != model_dtype and not torch.is_autocast_enabled(
            images.device.type):
        raise TypeError(f"images are {images.dtype} but the model's weights {model_dtype}: convert "
                        f"one of them (images.to({model_dtype}) or model.to({images.dtype}))")


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stacks (C, H_i, W_i) images into (B, C, max H, max W), padded at the bottom and right;
    returns (batch, mask) with mask (B, max H, max W) True where there is padding."""
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise TypeError(f"images[{index}] must be a (3, H, W) torch tensor, got "
                            f"{type(image).__name__} (for a numpy HWC uint8 image: "
                            f"torch.from_numpy(a).permute(2, 0, 1).float() / 255)")
    channels = images[0].shape[0]
    for index, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(
                f"images[{index}] must have shape ({channels}, H, W) like images[0], "
                f"got {tuple(image.shape)}"
            )
    height = max(int(image.shape[1]) for image in images)
    width = max(int(image.shape[2]) for image in images)
    first = images[0]
    batch = first.new_zeros((len(images), channels, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]].copy_(image)
        mask[index, : image.shape[1], : image.shape[2]] = False
    return batch, mask


def as_padded_batch(
    images: Union[Tensor, Sequence[Tensor]], mask: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """The model input as (batch, mask): a list of images is padded; a (B, 3, H, W) tensor comes
    with the given mask or none (no padding)."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"images must be a (B, 3, H, W) tensor or a list of (3, H, W) tensors, "
                f"got a tensor of shape {tuple(images.shape)}"
            )
        if mask is None:
            mask = torch.zeros(
                (images.shape[0], images.shape[2], images.shape[3]),
                dtype=torch.bool,
                device=images.device,
            )
        elif tuple(mask.shape) != (images.shape[0], images.shape[2], images.shape[3]):
            raise ValueError(
                f"mask must have shape {(images.shape[0], images.shape[2], images.shape[3])} "
                f"(B, H, W), got {tuple(mask.shape)}"
            )
        elif mask.dtype != torch.bool:
            # A float mask would turn every non-zero value into padding; say so instead.
            raise TypeError(f"mask must be bool (True at padding), got {mask.dtype}")
        return images, mask
    if mask is not None:
        raise ValueError("pass mask only with a batched (B, 3, H, W) tensor; lists are padded here")
    return pad_images(list(images))


def resize_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """The padding mask (B, H, W) at a feature map's size: nearest neighbour, as the official
    code's F.interpolate, bit for bit. The source rows and columns are computed as torch computes
    them (below), not left to an exporter: ONNX's Resize rounds otherwise (from 224 columns to 4 it
    takes column 111 where torch takes 112), and a padding mask is all or nothing."""
    rows = _nearest_sources(mask.shape[-2], size[0], mask.device)
    columns = _nearest_sources(mask.shape[-1], size[1], mask.device)
    return mask[:, rows][:, :, columns]


def _nearest_sources(source: int, target: int, device) -> Tensor:
    """torch's nearest-neighbour source index of each of ``target`` positions: floor(index *
    (source / target)), the ratio and the product in float32, at most source - 1."""
    ratio = torch.scalar_tensor(source, dtype=torch.float32, device=device) / target
    index = torch.arange(target, dtype=torch.float32, device=device) * ratio
    return index.floor().long().clamp(max=source - 1)
