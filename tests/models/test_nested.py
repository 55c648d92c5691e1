"""Padded batches and their masks: resize_mask is torch's nearest-neighbour interpolation, bit for
bit, computed so that exporters reproduce it."""

import random

import pytest
import torch
import torch.nn.functional as F

from deformdetr.models.nested import resize_mask


@pytest.mark.parametrize("seed", range(3))
def test_resize_mask_equals_nearest_interpolation(seed):
    rng = random.Random(seed)
    for _ in range(100):
        height, width = rng.randint(1, 1400), rng.randint(1, 1400)
        size = (rng.randint(1, height), rng.randint(1, width)) if rng.random() < 0.8 else \
            (rng.randint(1, 2 * height), rng.randint(1, 2 * width))
        mask = torch.rand(2, height, width) < 0.5
        assert torch.equal(resize_mask(mask, size), F.interpolate(mask[None].float(), size=size).bool()[0])


def test_the_size_onnx_rounds_otherwise():
    """224 columns to 4: torch takes column 112 for the third (ONNX Resize computes 111.99...)."""
    mask = torch.zeros(1, 96, 224, dtype=torch.bool)
    mask[:, :, 112:] = True
    assert resize_mask(mask, (2, 4))[0, 0].tolist() == [False, False, True, True]
