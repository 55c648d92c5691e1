"""The task: everything particular to a kind of detector that the engine trains, evaluates and
predicts with. The trainer, the CLI and the configs deal only with this interface; each detector
family brings one subclass (see docs/design.md, "Adding a detector")."""

from __future__ import annotations

import sys
from typing import Callable, ClassVar, Optional

import torch
from tqdm import tqdm

from deformdetr.engine import distributed as dist

__all__ = ["Task", "adamw", "place_steps_for_fused", "to_device"]


def to_device(targets, device):
    """Per-image target dicts with their tensors on ``device``."""
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


#: Devices on which torch has a fused AdamW (one kernel for all parameters).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(groups, **settings) -> torch.optim.AdamW:
    """torch's AdamW over parameter ``groups``, fused where torch has a fused kernel for the
    parameters' device: the same update as the per-parameter loop (to float rounding), about 5x
    faster on the CPU (bench/RESULTS.md), which is a tenth of the demo's training step."""
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= set(FUSED_ADAMW_DEVICES) and len(devices) == 1
    return torch.optim.AdamW(groups, fused=fused or None, **settings)


def place_steps_for_fused(optimizer) -> None:
    """A fused optimizer keeps each parameter's step count as float32 on the parameter's device;
    one saved by an unfused optimizer (an older checkpoint) has it as a CPU scalar."""
    for group in optimizer.param_groups:
        if not group.get("fused"):
            continue
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if torch.is_tensor(step):
                optimizer.state[param]["step"] = step.to(param.device, torch.float32)


class Task:
    """A task is built on a config (``self.cfg``) whose schema it declares.

    Subclasses set the class attributes and implement the methods that raise NotImplementedError;
    :meth:`evaluate` is shared: it runs :meth:`predict_batch` over a loader, gathers the
    per-image predictions of every rank and hands them to :meth:`score` on the main process."""

    #: the config's ``task`` value
    name: ClassVar[str]
    #: the YAML file in deformdetr/configs holding every key of this task's configs, at its defaults
    schema: ClassVar[str]
    #: the model family (deformdetr.models.checkpoint) whose checkpoints this task uses
    family: ClassVar[str]
    #: the values ``data.dataset`` may take
    datasets: ClassVar[tuple]
    #: the metric that ranks checkpoints (higher is better)
    headline: ClassVar[str]
    #: curves.png's validation panel: ((log key, legend), ...), axis label, axis range
    plot_panel: ClassVar[tuple]
    #: what its models do, in a few words for messages ("2D (Deformable DETR)")
    title: ClassVar[str]
    #: options of ``deformdetr predict`` for this task's models: ((flag, argparse settings), ...);
    #: given values reach :meth:`predict_images` as keyword arguments named as the options' dests
    predict_options: ClassVar[tuple] = ()
    #: the preset ``deformdetr demo --task <name>`` trains, and its training budget in minutes
    demo_preset: ClassVar[Optional[str]] = None
    demo_minutes: ClassVar[float] = 12.0
    #: the score from which the demo draws detections (None: predict's default)
    demo_threshold: ClassVar[Optional[float]] = None

    def __init__(self, cfg: dict):
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Checks particular to the task (raise configs.ConfigError); the common ones are the
        config loader's."""

    # ---- building ---------------------------------------------------------------------------

    def build_model(self, load_pretrained: bool = True):
        """(model, criterion) as the config says; ``load_pretrained``: the backbone's ImageNet
        weights, when configured (not when weights come from a checkpoint)."""
        raise NotImplementedError

    def build_datasets(self, categories=None):
        """(train set, val set), checked against the model's settings; ``categories`` (a
        data.categories.Categories, e.g. a checkpoint's) numbers the classes instead of the data."""
        raise NotImplementedError

    def build_eval_dataset(self, categories=None):
        """The validation set (``deformdetr eval``); subclasses may spare building the training set."""
        return self.build_datasets(categories)[1]

    def build_optimizer(self, model) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_scheduler(self, optimizer):
        """Stepped once per epoch."""
        raise NotImplementedError

    def collate_fn(self, samples):
        raise NotImplementedError

    def split_batch(self, batch, device) -> tuple:
        """(the model's positional inputs, the targets) of a collated training batch, on ``device``."""
        raise NotImplementedError

    # ---- evaluation -------------------------------------------------------------------------

    def predict_batch(self, model, batch, device, autocast: Callable) -> dict:
        """{image id: the image's predictions, in the form :meth:`score` takes} of one batch."""
        raise NotImplementedError

    def score(self, predictions: dict, dataset, results_dir: Optional[str] = None) -> dict:
        """The metrics of all images' predictions ({metric: value}, :attr:`headline` among them);
        with ``results_dir``, the predictions are also written there in the benchmark's format."""
        raise NotImplementedError

    def format_metrics(self, metrics: dict) -> str:
        """One line of the metrics a person reads first."""
        raise NotImplementedError

    def categories(self, dataset):
        """The classes the model predicts (data.categories.Categories), as ``dataset`` numbers them."""
        raise NotImplementedError

    def default_categories(self, num_classes: int):
        """The classes of a checkpoint that records none (an official one)."""
        from deformdetr.data.categories import Categories

        return Categories.from_label_names({}, num_classes)

    def predict_images(self, model, image_paths, output_dir: str, device, threshold: Optional[float], categories,
                       batch_size: int = 1, compile: bool = False, **options):
        """Predictions on image files, written into ``output_dir`` (``deformdetr predict``), as
        engine.predict.Predictions records; ``threshold`` None: the task's default; ``compile``:
        through torch.compile; ``options``: values of :attr:`predict_options`."""
        raise ValueError(f"`deformdetr predict` does not handle {self.name} models yet")

    def validation_images(self) -> tuple[list[str], dict]:
        """(the image files of the config's validation split, the :attr:`predict_options` values
        they need): what the demo draws."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device, autocast: Callable, results_dir: Optional[str] = None) -> dict:
        """The task's metrics on ``dataset`` (on the main process; {} on the others)."""
        model.eval()
        per_image: dict = {}
        for batch in tqdm(loader, desc="eval", disable=not dist.is_main_process(), leave=False,
                          dynamic_ncols=True, file=sys.stderr):
            per_image.update(self.predict_batch(model, batch, device, autocast))
        # A DistributedSampler pads the split with repeated images; keying by image id drops them.
        merged: dict = {}
        for part in dist.all_gather_objects(per_image):
            merged.update(part)
        if not dist.is_main_process():
            return {}
        return self.score(merged, dataset, results_dir)

    # ---- helpers for subclasses -------------------------------------------------------------

    def generate_synthetic_once(self, marker: str, generate: Callable) -> None:
        """The configured synthetic set in data.root, made on the main process while the others
        wait (see data.synthetic_cache)."""
        from deformdetr.data.synthetic_cache import generate_unless_current

        if dist.is_main_process():
            generate_unless_current(self.cfg["data"], marker, generate)
        # Every process waits here, also when nothing was generated: a process that skipped the
        # barrier (having seen the marker early) would leave the others waiting for it.
        dist.barrier()
