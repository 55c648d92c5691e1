"""deformdetr bench training: the preset's loop, part by part, on its own data."""

import pytest

from deformdetr.bench.training import PARTS, WARMUP_STEPS, main

# A tiny demo: 12 images of 48 px, a narrow model, batches of 2.
TINY = ["model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=1", "model.dim_feedforward=32",
        "model.num_queries=5", "data.scales=[48]", "data.max_size=48", "data.val_size=48", "data.crop_resize=[48]",
        "data.crop_size=[32,48]", "data.synthetic.num_train=16", "data.synthetic.num_val=2",
        "data.synthetic.image_size=48", "train.batch_size=2", "device=cpu"]


def test_each_part_of_the_loop_is_timed(tmp_path, capsys):
    main(["--steps", "2", *TINY, f"data.root={tmp_path}"])
    out = capsys.readouterr().out
    assert "demo_synthetic: batch 2, 0 loader processes" in out and "2 steps on cpu" in out
    assert all(f"{part} " in out for part in PARTS) and "images/s" in out


def test_too_few_batches_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=f"16 training samples make fewer than {WARMUP_STEPS + 20} batches of 2"):
        main(["--steps", "20", *TINY, f"data.root={tmp_path}"])
