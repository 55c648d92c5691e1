"""The training and evaluation loops, and everything they are built from a config."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from deformdetr.configs import complete, parse_device
from deformdetr.engine import distributed as dist
from deformdetr.engine.checkpoint import copy_atomic, preserved_rng, restore_rng_state, rng_state, save_atomic
from deformdetr.engine.predict import compiled, recorded_categories
from deformdetr.engine.schedule import FIT_AFTER_EPOCHS, decay_epochs, epochs_within_budget, fitted_decays, set_decays
from deformdetr.engine.tasks import DEFAULT_TASK, get_task
from deformdetr.engine.tasks.base import place_steps_for_fused
from deformdetr.engine.outputs import as_float32
from deformdetr.models.checkpoint import WeightReport, family_of, load_weights, model_state_of, read_checkpoint, read_weights
from deformdetr.models.criterion import is_layer_copy

__all__ = ["resolve_device", "train", "Trainer", "train_one_epoch", "accumulate_gradients", "data_loader",
           "evaluate_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pth"
BEST_NAME = "checkpoint_best.pth"
WEIGHTS_REPORT_NAME = "weights.json"
_SAME_CONFIG = "Use the config (preset and model.* settings) the checkpoint was trained with."
LOG_NAME = "log.jsonl"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device "
                         f"(CUDA build of torch: {torch.version.cuda is not None})")
    return device


def data_loader(dataset, collate_fn, batch_size: int, train: bool, num_workers: int, seed: int,
                epoch: int) -> DataLoader:
    # Shuffling and worker seeds derive from (seed, epoch) only, so a resumed run sees exactly
    # the batches an uninterrupted run would.
    generator = torch.Generator().manual_seed(seed + epoch)
    if dist.is_distributed():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                      collate_fn=collate_fn, num_workers=num_workers, generator=generator,
                      persistent_workers=False)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_one_epoch(task, model, criterion, loader, optimizer, device, epoch: int, clip_max_norm: float,
                    amp: str = "off", scaler=None, accumulate_steps: int = 1) -> dict:
    """One pass over ``loader``; the optimizer steps once per ``accumulate_steps`` batches, on
    the gradients of their union (see :func:`accumulate_gradients`)."""
    model.train()
    criterion.train()
    totals: dict[str, float] = {}
    count = 0
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}", disable=not dist.is_main_process(), leave=False,
               dynamic_ncols=True, file=sys.stderr)
    for batches in _groups(loader, accumulate_steps):
        optimizer.zero_grad(set_to_none=True)
        loss, losses = accumulate_gradients(task, model, criterion, batches, device, amp, scaler, epoch)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        count += 1
        totals["loss"] = totals.get("loss", 0.0) + loss
        for key, value in losses.items():
            if not is_layer_copy(key):  # loss_ce_0, loss_ce_enc: the final layer's suffice
                totals[key] = totals.get(key, 0.0) + value
        bar.update(len(batches))
        bar.set_postfix(loss=f"{totals['loss'] / count:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
    bar.close()
    return {k: v / max(count, 1) for k, v in totals.items()}


def _groups(loader, size: int):
    """The loader's batches in lists of ``size`` (the last one maybe shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def accumulate_gradients(task, model, criterion, batches: list, device, amp: str = "off", scaler=None,
                         epoch: int = 0) -> tuple[float, dict]:
    """Backward of the loss of ``batches`` taken as one batch, a part at a time: each part's
    losses are normalised by the whole's target boxes (and its share of the images, for losses
    that are batch means), so their gradients add up to the whole's. Returns the whole's loss and
    its terms (detached), summed over the parts."""
    parts = [task.split_batch(batch, device) for batch in batches]
    every_target = [t for _, targets in parts for t in targets]
    num_boxes = criterion.num_boxes(every_target, device, multiplier=criterion.matches_per_target())
    total_images = len(every_target)
    loss_sum, terms = 0.0, {}
    for index, (inputs, targets) in enumerate(parts):
        # Distributed: gradients are averaged across processes once, after the last part.
        sync = nullcontext() if index == len(parts) - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with _autocast(device, amp):
                outputs = model(*inputs)
            losses = criterion(as_float32(outputs), targets, num_boxes=num_boxes, share=len(targets) / total_images)
            loss = criterion.total(losses)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}: training diverged "
                                         f"(losses: { {k: float(v) for k, v in losses.items()} })")
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.item()
        for key, value in losses.items():
            terms[key] = terms.get(key, 0.0) + float(value.detach())
    return loss_sum, terms


def _write_log(output_dir: str, record: dict) -> None:
    with open(os.path.join(output_dir, LOG_NAME), "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _check_output_dir(output_dir: str, resume: Optional[str], overwrite: bool) -> None:
    """A fresh run does not silently replace another run's checkpoint and log."""
    previous = os.path.join(output_dir, CHECKPOINT_NAME)
    if resume or overwrite or not os.path.exists(previous):
        return
    raise FileExistsError(
        f"{output_dir} already holds a run ({CHECKPOINT_NAME}); continue it with --resume {previous}, "
        f"start over with --overwrite, or pick another --output-dir"
    )


def _start_log(output_dir: str, resumed: bool) -> None:
    """A fresh run starts its own log; a resumed one appends to the run's log."""
    if not resumed and os.path.exists(os.path.join(output_dir, LOG_NAME)):
        os.remove(os.path.join(output_dir, LOG_NAME))


_RESUME_KEYS = ("model", "optimizer", "epoch", "rng")


def _check_resumable(checkpoint: dict, path: str) -> None:
    missing = [k for k in _RESUME_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(
            f"{path!r} is not a training checkpoint of deformdetr (it lacks {', '.join(missing)}): "
            "--resume continues a run that `deformdetr train` saved. To start from an official "
            "checkpoint's weights, evaluate or predict with it, or load it with "
            "deformdetr.models.load_checkpoint."
        )


def _restore_optimization(optimizer, scheduler, checkpoint: dict, path: str, start_epoch: int) -> None:
    """The optimizer's per-parameter state (moments) comes from the checkpoint; its
    hyperparameters and the learning-rate schedule come from the config, replayed over the epochs
    done. With an unchanged config that is exactly the saved state; a changed train.lr or
    train.lr_drop takes effect as if the run had been configured so from the start."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except ValueError as error:
        raise ValueError(f"the optimizer state in {path!r} does not fit this config's parameter "
                         f"groups (did train.lr_backbone or the model change?): {error}") from None
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)
    place_steps_for_fused(optimizer)
    with warnings.catch_warnings():  # stepping a scheduler with no optimizer step in between
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_epoch):
            scheduler.step()


def train(cfg: dict, resume: Optional[str] = None, progress: bool = True, overwrite: bool = False,
          weights: Optional[str] = None) -> dict:
    """Trains as the config says, evaluating and checkpointing each epoch; the checkpoint that
    scores best on the task's headline metric is kept beside the last one. ``resume``: a
    checkpoint to continue from (model, optimizer state, epoch and RNG state; the schedule follows
    the config). ``weights``: a new run that starts from a checkpoint's weights (ours or official;
    those of another shape, e.g. a head for other classes, keep their initialisation).
    ``overwrite``: start afresh even where the output folder holds a previous run. Returns
    {"eval": the last metrics, "minutes", "output_dir", "best": the best epoch's record}."""
    return Trainer(cfg, resume=resume, weights=weights, overwrite=overwrite, progress=progress).run()


class Trainer:
    """One training run, built from a config in the order that reports errors soonest (output
    folder, checkpoint, data, model), then run epoch by epoch. Its parts are methods a subclass
    may override: :meth:`build_loader`, :meth:`train_epoch`, :meth:`evaluate_epoch`, :meth:`save`."""

    def __init__(self, cfg: dict, resume: Optional[str] = None, weights: Optional[str] = None,
                 overwrite: bool = False, progress: bool = True):
        if resume and weights:
            raise ValueError("--weights starts a new run from a checkpoint's weights and --resume continues "
                             "a run: give one of them")
        self.cfg = cfg = copy.deepcopy(cfg)  # the task completes it (num_classes: auto) for what is saved
        self.progress = progress
        self.device = self._join_processes(resolve_device(cfg["device"]))
        self.output_dir = cfg["output_dir"]
        _check_output_dir(self.output_dir, resume, overwrite)
        self.train_cfg = cfg["train"]
        _seed_everything(self.train_cfg["seed"] + dist.rank())
        self.task = get_task(cfg)
        checkpoint = read_checkpoint(resume) if resume else None
        if checkpoint is not None:
            _check_resumable(checkpoint, resume)
        # Data first, so that its errors come before any model is built or weights are downloaded.
        # (Building the datasets draws no random numbers; preserved_rng keeps it that way.)
        with preserved_rng():
            recorded = recorded_categories(checkpoint, cfg["model"]["num_classes"]) if checkpoint else None
            self.train_set, self.val_set = self.task.build_datasets(recorded)
        self._check_enough_data()
        self.model, self.criterion = self.task.build_model(load_pretrained=checkpoint is None and weights is None)
        report = _load_start_weights(self.model, weights, self.task) if weights else None
        self.model.to(self.device)
        self.optimizer = self.task.build_optimizer(self.model)
        self.scheduler = self.task.build_scheduler(self.optimizer)
        self.start_epoch = 0
        # train.fit_to_budget's epochs and decays once fitted: a resumed run keeps them, unless
        # resumed with train.fit_to_budget=false (then the config's schedule holds).
        self.fitted_schedule = None
        if checkpoint is not None and checkpoint.get("fitted_schedule") and self.train_cfg["fit_to_budget"]:
            self.fitted_schedule = checkpoint["fitted_schedule"]
            self._apply_fitted_schedule()
        if checkpoint is not None:
            load_weights(self.model, checkpoint["model"], resume, hint=_SAME_CONFIG)
            self.start_epoch = checkpoint["epoch"] + 1
            _restore_optimization(self.optimizer, self.scheduler, checkpoint, resume, self.start_epoch)
        self._start_outputs(resumed=checkpoint is not None, weights=weights, report=report)
        self.model_ddp = self._distributed(self.model)
        if self.train_cfg["compile"]:
            # The module trained and evaluated; checkpoints take the plain model's weights.
            self.model_ddp = compiled(self.model_ddp, "the first training step and evaluation (and each new image "
                                      "size)", say=dist.is_main_process())
        fp16 = self.device.type == "cuda" and self.train_cfg["amp"] == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.categories = self.task.categories(self.train_set)
        self.best = _Best(self.task.headline, checkpoint.get("best") if checkpoint is not None else None)
        if checkpoint is not None:
            # Everything that consumed randomness while building is done: continue the saved streams.
            restore_rng_state(checkpoint["rng"])

    # ---- setting up ----------------------------------------------------------------------------

    @staticmethod
    def _join_processes(device: torch.device) -> torch.device:
        dist.init_distributed(device)
        if dist.is_distributed() and device.type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def _check_enough_data(self) -> None:
        batch_size, processes = self.train_cfg["batch_size"], dist.world_size()
        if len(self.train_set) < batch_size * processes:
            raise ValueError(f"the training split has {len(self.train_set)} samples, fewer than one batch "
                             f"(train.batch_size={batch_size} x {processes} processes): no step would be taken")

    def _start_outputs(self, resumed: bool, weights: Optional[str], report) -> None:
        if not dist.is_main_process():
            return
        os.makedirs(self.output_dir, exist_ok=True)
        _start_log(self.output_dir, resumed)
        with open(os.path.join(self.output_dir, "config.json"), "w") as handle:
            json.dump(self.cfg, handle, indent=2)
        if report is not None:
            _write_weights_report(self.output_dir, weights, report)

    def _distributed(self, model):
        if not dist.is_distributed():
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _autocast(self):
        return _autocast(self.device, self.train_cfg["amp"])

    # ---- the parts of an epoch -----------------------------------------------------------------

    def build_loader(self, dataset, train: bool, epoch: int) -> DataLoader:
        return data_loader(dataset, self.task.collate_fn, self.train_cfg["batch_size"], train,
                           self.cfg["data"]["num_workers"], self.train_cfg["seed"], epoch)

    def train_epoch(self, epoch: int) -> dict:
        return train_one_epoch(self.task, self.model_ddp, self.criterion, self.build_loader(self.train_set, True, epoch),
                               self.optimizer, self.device, epoch, self.train_cfg["clip_max_norm"],
                               self.train_cfg["amp"], self.scaler, self.train_cfg["accumulate_steps"])

    def evaluate_epoch(self, epoch: int) -> dict:
        with preserved_rng():
            loader = self.build_loader(self.val_set, False, epoch)
            return self.task.evaluate(self.model_ddp, loader, self.val_set, self.device, self._autocast)

    def save(self, epoch: int, improved: bool) -> None:
        """The checkpoint of ``epoch`` (and, when it ``improved`` on the best, its copy)."""
        # Saved after all of the epoch's randomness: a resume restores what the next epoch starts from.
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch, "rng": rng_state(),
                 "config": self.cfg, "args": dict(vars(self.model.config)),
                 "categories": self.categories.to_list(), "best": self.best.record,
                 "fitted_schedule": self.fitted_schedule}
        last = os.path.join(self.output_dir, CHECKPOINT_NAME)
        save_atomic(state, last)
        if improved:
            copy_atomic(last, os.path.join(self.output_dir, BEST_NAME))

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.time()
        last_eval: dict = {}
        if self.start_epoch >= self.train_cfg["epochs"] and dist.is_main_process():
            how = ("resume with train.fit_to_budget=false and a larger train.epochs" if self.fitted_schedule
                   else "raise train.epochs")
            print(f"nothing to train: the checkpoint has finished epoch {self.start_epoch} of "
                  f"{self.train_cfg['epochs']}; {how} to continue", file=sys.stderr)
        epoch = self.start_epoch
        while epoch < self.train_cfg["epochs"]:  # train.fit_to_budget may lower it after an epoch
            epoch_start = time.time()
            stats = self.train_epoch(epoch)
            self.scheduler.step()
            max_minutes = self.train_cfg["max_minutes"]
            out_of_time = max_minutes is not None and (time.time() - started) / 60 >= max_minutes
            if (epoch == FIT_AFTER_EPOCHS - 1 and self.start_epoch == 0 and self.train_cfg["fit_to_budget"]
                    and max_minutes is not None and not out_of_time):
                self.fit_to_budget(time.time() - started, time.time() - epoch_start)
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
                      "epoch_seconds": time.time() - epoch_start, **{f"train_{k}": v for k, v in stats.items()}}
            evaluated = ((epoch + 1) % self.train_cfg["eval_every"] == 0 or epoch == self.train_cfg["epochs"] - 1
                         or out_of_time)
            improved = False
            if evaluated:
                last_eval = self.evaluate_epoch(epoch)
                record.update({f"test_{k}": v for k, v in last_eval.items()})
                improved = self.best.update(last_eval, epoch)
            if dist.is_main_process():
                self.save(epoch, improved)
                if improved:
                    record["best_epoch"] = epoch
                _write_log(self.output_dir, record)
                if self.progress:
                    print(self._epoch_line(epoch, stats, last_eval if evaluated else {}, improved), flush=True)
            if out_of_time:
                break
            epoch += 1
        if dist.is_main_process():
            from deformdetr.engine.visualize import plot_log

            plot_log(os.path.join(self.output_dir, LOG_NAME), os.path.join(self.output_dir, "curves.png"),
                     self.task.plot_panel)
        dist.barrier()
        return {"eval": last_eval, "minutes": (time.time() - started) / 60, "output_dir": self.output_dir,
                "best": self.best.record}

    def fit_to_budget(self, elapsed_seconds: float, epoch_seconds: float) -> None:
        """Lowers train.epochs to those that fit in ``train.max_minutes`` at this epoch's pace (the
        slowest process's), with the schedule's decays moved to the same fractions of them
        (engine/schedule.py); checkpoints record the fit."""
        timings = dist.all_gather_objects((elapsed_seconds, epoch_seconds))
        elapsed, pace = max(t[0] for t in timings), max(t[1] for t in timings)
        minutes, epochs = self.train_cfg["max_minutes"], self.train_cfg["epochs"]
        fitted = epochs_within_budget(minutes * 60, elapsed, pace, FIT_AFTER_EPOCHS, epochs)
        self.fitted_schedule = {"epochs": fitted, "decays": fitted_decays(self.scheduler, epochs, fitted)}
        self._apply_fitted_schedule()
        if dist.is_main_process() and self.progress:
            decays = decay_epochs(self.scheduler, fitted)
            when = f"at epoch {', '.join(map(str, decays))}" if decays else "after them"
            print(f"train.fit_to_budget: {pace:.0f} s an epoch, so {fitted} of {epochs} epochs fit in {minutes:g} min; "
                  f"the learning rate decays {when}", flush=True)

    def _apply_fitted_schedule(self) -> None:
        set_decays(self.scheduler, self.fitted_schedule["decays"])
        self.train_cfg["epochs"] = self.fitted_schedule["epochs"]

    def _epoch_line(self, epoch: int, stats: dict, metrics: dict, improved: bool) -> str:
        line = f"epoch {epoch}: loss {stats.get('loss', float('nan')):.4f}"
        if metrics:  # tasks list their headline metrics first
            line += ", " + ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:2])
        if improved:
            line += f"; best {self.task.headline} so far -> {BEST_NAME}"
        return line


class _Best:
    """The best value of the headline metric so far, and its epoch ({"metric", "value", "epoch"},
    saved in checkpoints so that a resumed run keeps comparing against it)."""

    def __init__(self, metric: str, record: Optional[dict]):
        self.metric = metric
        self.record = record if record and record.get("metric") == metric else None

    def update(self, metrics: dict, epoch: int) -> bool:
        """Whether ``metrics`` (of ``epoch``) beat the best so far; they become the best if so."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return False
        if self.record is not None and value <= self.record["value"]:
            return False
        self.record = {"metric": self.metric, "value": float(value), "epoch": epoch}
        return True


def _load_start_weights(model, source: str, task) -> WeightReport:
    """A checkpoint's weights into a new model, those that fit; the rest keep their
    initialisation. Said in one line; the full report goes to the output folder."""
    state = _weights_for(task, read_weights(source), source)
    report = load_weights(model, state, source, strict=False, warn=False)
    if dist.is_main_process():
        print(f"weights from {source}: {report.summary()} (all listed in {WEIGHTS_REPORT_NAME})", file=sys.stderr)
    return report


def _weights_for(task, checkpoint: dict, path: str) -> dict:
    """The model weights of a checkpoint, which must be of the task's model family."""
    state = model_state_of(checkpoint, path)
    family = family_of(state, path).name
    if family != task.family:
        raise ValueError(f"{path!r} holds a {family} model; a {task.name} config uses {task.family} models")
    return state


def _write_weights_report(output_dir: str, source: str, report: WeightReport) -> None:
    with open(os.path.join(output_dir, WEIGHTS_REPORT_NAME), "w") as handle:
        json.dump({"source": os.path.abspath(source), "loaded": report.loaded, "reinitialised": report.reinitialised,
                   "resized": report.resized, "unused": report.unused}, handle, indent=1)


def evaluate_checkpoint(cfg: dict, checkpoint_path: str, results_dir: Optional[str] = None) -> dict:
    """The task's metrics of a checkpoint (ours, official, or a Hugging Face model: see
    models.checkpoint.read_weights) on the config's validation split;
    ``results_dir`` also receives the predictions in the benchmark's format (the task's)."""
    device = resolve_device(cfg["device"])
    dist.init_distributed(device)
    state = read_weights(checkpoint_path)
    cfg = _with_model_of_checkpoint(cfg, state, checkpoint_path)
    task = get_task(cfg)
    weights = _weights_for(task, state, checkpoint_path)
    val_set = task.build_eval_dataset(recorded_categories(state, cfg["model"]["num_classes"]))
    model, _ = task.build_model(load_pretrained=False)
    load_weights(model, weights, checkpoint_path, hint=_SAME_CONFIG)
    model.to(device)
    loader = data_loader(val_set, task.collate_fn, cfg["train"]["batch_size"], False, cfg["data"]["num_workers"], 0, 0)
    return task.evaluate(model, loader, val_set, device, lambda: _autocast(device, cfg["train"]["amp"]), results_dir)


def _with_model_of_checkpoint(cfg: dict, state: dict, path: str) -> dict:
    """A checkpoint of ours carries the config it was trained with: its weights fit that model,
    whatever preset evaluates it. (Official checkpoints carry no config: the given one is used.)"""
    saved = state.get("config")
    if not isinstance(saved, dict) or "model" not in saved:
        return cfg
    if saved.get("task", DEFAULT_TASK) != cfg["task"]:
        raise ValueError(f"{path!r} is a {saved.get('task')} checkpoint; evaluate it with a "
                         f"{saved.get('task')} config, not a {cfg['task']} one")
    if saved["model"] != cfg["model"] and dist.is_main_process():
        print(f"using the model settings saved in {path}", file=sys.stderr)
    return {**cfg, "model": complete(saved)["model"]}
