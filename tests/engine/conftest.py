import pytest

from deformdetr.data import generate_synthetic_coco

# A complete but tiny run of the demo preset: small images, few of them, a narrow model.
TINY = [
    "model.hidden_dim=64", "model.nheads=2", "model.enc_layers=1", "model.dec_layers=2",
    "model.dim_feedforward=32", "model.num_queries=6", "model.backbone=resnet18",
    "data.scales=[48]", "data.max_size=64", "data.val_size=48", "data.crop_resize=[48]",
    "data.crop_size=[32,48]", "data.num_workers=0", "train.batch_size=4", "train.epochs=2",
    "train.eval_every=1", "device=cpu",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_coco(root, num_train=8, num_val=4, image_size=48, seed=1)
    return str(root)


@pytest.fixture
def tiny_overrides(synthetic_root):
    return TINY + [f"data.root={synthetic_root}"]
