"""Training checkpoints: atomic writes, RNG state round trips."""

import os
import random

import numpy as np
import pytest
import torch

from deformdetr.engine import checkpoint as ckpt
from deformdetr.models.checkpoint import read_checkpoint


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_atomic({"epoch": 1}, str(path))

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert read_checkpoint(str(path))["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    state = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(2), random.random())
    ckpt.save_atomic({"rng": state}, str(tmp_path / "rng.pth"))
    ckpt.restore_rng_state(read_checkpoint(str(tmp_path / "rng.pth"))["rng"])
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_preserved_rng_undoes_randomness_used_inside():
    before = ckpt.rng_state()
    with ckpt.preserved_rng():
        torch.rand(5), np.random.rand(), random.random()
    after = ckpt.rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
