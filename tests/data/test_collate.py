"""collate_fn: zero padding at the bottom/right, a mask True exactly at the padding, targets
kept."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from deformdetr.data import collate_fn


def test_pads_images_and_masks_the_padding():
    a, b = torch.rand(3, 4, 6) + 1, torch.rand(3, 5, 3) + 1  # strictly positive pixels
    targets = [{"labels": torch.tensor([1])}, {"labels": torch.tensor([2, 3])}]
    images, mask, out_targets = collate_fn([(a, targets[0]), (b, targets[1])])
    assert images.shape == (2, 3, 5, 6) and images.dtype == torch.float32
    assert mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    assert torch.equal(images[0, :, :4, :6], a) and torch.equal(images[1, :, :5, :3], b)
    # The mask is True exactly where the padded batch is zero padding.
    assert torch.equal(mask, (images == 0).all(dim=1))
    assert mask[0, 4:].all() and not mask[0, :4].any()
    assert mask[1, :, 3:].all() and not mask[1, :, :3].any()
    assert isinstance(out_targets, list) and out_targets[1] is targets[1]


def test_same_size_images_have_no_padding():
    images, mask, _ = collate_fn([(torch.ones(3, 2, 2), {}), (torch.ones(3, 2, 2), {})])
    assert images.shape == (2, 3, 2, 2) and not mask.any()


def test_works_as_a_dataloader_collate_fn():
    samples = [(torch.ones(3, 4 + i, 5), {"image_id": torch.tensor([i])}) for i in range(3)]
    batches = list(DataLoader(samples, batch_size=2, collate_fn=collate_fn))
    images, mask, targets = batches[0]
    assert images.shape == (2, 3, 5, 5) and mask[0, 4].all() and not mask[1].any()
    assert [t["image_id"].item() for t in targets] == [0, 1]
    assert batches[1][0].shape == (1, 3, 6, 5)


def test_empty_batch_raises():
    with pytest.raises(ValueError):
        collate_fn([])
