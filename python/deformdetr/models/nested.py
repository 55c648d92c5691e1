"""Batching images of different sizes: zero padding plus a mask that is True at the padding."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_images", "as_padded_batch", "resize_mask"]


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stacks (C, H_i, W_i) images into (B, C, max H, max W), padded at the bottom and right;
    returns (batch, mask) with mask (B, max H, max W) True where there is padding."""
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
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
        return images, mask.to(torch.bool)
    if mask is not None:
        raise ValueError("pass mask only with a batched (B, 3, H, W) tensor; lists are padded here")
    return pad_images(list(images))


def resize_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """The padding mask at a feature map's size (nearest neighbour, as the official code)."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]
