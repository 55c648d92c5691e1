"""Model checkpoints: reading a file in any of the layouts in use (ours, the official Deformable
DETR's and MonoDETR's, a bare state dict), telling which detector family its weights belong to,
the settings its saved args or its state dict give, and loading the weights with a report of what
fitted.

A family (Deformable DETR, MonoDETR) registers a :class:`Family`: how to recognise its state
dicts, its config class, what its state dict tells of the settings and what it cannot tell. All
else (one reader, one weight loader, one ``load_checkpoint``) is shared.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Sequence

import torch
from torch import nn

__all__ = [
    "Family",
    "register_family",
    "family_of",
    "read_checkpoint",
    "read_weights",
    "model_state_of",
    "settings_from_args",
    "state_dict_mismatches",
    "WeightReport",
    "load_weights",
    "load_checkpoint",
    "model_from_checkpoint",
    "CheckpointError",
]


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint, or weights that do not fit the model."""


# ---- Reading files.


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint file as a dict, loaded without arbitrary unpickling: tensors, plain values and
    the argparse.Namespace that official checkpoints store next to their weights."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        except PermissionError as error:
            raise PermissionError(f"cannot read checkpoint {path!r}: {error.strerror}") from None
        except pickle.UnpicklingError as error:
            raise CheckpointError(_unpickling_message(path, error)) from None
        except Exception:  # torch reports damaged files in many ways (zip, pickle, unicode, key errors)
            raise CheckpointError(_NOT_A_CHECKPOINT.format(path=path)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint


def read_weights(source: str, map_location="cpu") -> dict:
    """A checkpoint from any source: a file (:func:`read_checkpoint`), or a Hugging Face
    transformers model, as a folder written by ``save_pretrained`` or a hub id
    (:func:`deformdetr.models.hf.read_hf`, which gives it in our layout)."""
    from deformdetr.models import hf

    if os.path.isdir(source) or hf.looks_like_hub_id(source):
        return hf.read_hf(source)
    return read_checkpoint(source, map_location)


def _unpickling_message(path: str, error: Exception) -> str:
    """torch's refusal, in one line: which object the file would have made us run, never the
    advice to load it unsafely."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return (f"checkpoint {path!r} holds a Python object ({found.group(1)}) besides weights and plain "
                f"values; deformdetr reads checkpoints without running code from them, so it does not "
                f"load this file (save only the state dict: torch.save({{'model': model.state_dict()}}, ...))")
    return _NOT_A_CHECKPOINT.format(path=path)


_NOT_A_CHECKPOINT = ("could not read checkpoint {path!r}: it is not a file written by torch.save "
                     "(truncated, damaged, or of another kind?)")


def model_state_of(checkpoint: dict, path: str) -> dict:
    """The model weights of a checkpoint in any of the layouts in use: ours and the official
    Deformable DETR's ("model"), the official MonoDETR's ("model_state"), or a bare state dict."""
    for key in ("model", "model_state"):
        if key in checkpoint:
            return checkpoint[key]
    if checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    raise CheckpointError(f"checkpoint {path!r} holds no model weights: no 'model' or 'model_state' entry "
                          f"and not a bare state dict (its keys: {', '.join(list(map(str, checkpoint))[:8])})")


def settings_from_args(args, config_class, exclude: Sequence[str] = ()) -> dict:
    """The model settings among a checkpoint's saved args (an argparse.Namespace, as officially,
    or a dict, as the trainer saves them): those that are fields of ``config_class``."""
    if args is None:
        return {}
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    known = {f.name for f in fields(config_class)} - set(exclude)
    return {k: v for k, v in values.items() if k in known}


# ---- Loading weights into a model.


def state_dict_mismatches(model: nn.Module, state: dict) -> tuple[list, list, list]:
    """The keys of ``state`` that do not fit the model: (missing from it, unknown to the model,
    of another shape than the model's). Batch norm's ``num_batches_tracked`` counters are not
    weights: formats with frozen batch norm (the official, Hugging Face's) have none, and with a
    set momentum they change nothing, so a file that lacks or has them fits either way."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _is_counter(k)]
    unexpected = [k for k in state if k not in own and not _is_counter(k)]
    resized = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, resized


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


@dataclass
class WeightReport:
    """What became of each weight: ``loaded`` from the file; ``reinitialised`` (missing from the
    file, or of another shape there: they keep the model's initialisation); ``unused`` entries of
    the file the model has no place for; ``resized`` the reinitialised ones that the file has in
    another shape (``key: file shape -> model shape``)."""

    loaded: list = field(default_factory=list)
    reinitialised: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    resized: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.reinitialised and not self.unused

    def summary(self) -> str:
        text = f"{len(self.loaded)} weights loaded, {len(self.reinitialised)} re-initialised"
        if self.reinitialised:
            text += f" (e.g. {', '.join(self.reinitialised[:4])})"
        text += f", {len(self.unused)} unused"
        if self.unused:
            text += f" (e.g. {', '.join(self.unused[:4])})"
        return text


def load_weights(model: nn.Module, state: dict, path: str, strict: bool = True,
                 hint: str = "", warn: bool = True) -> WeightReport:
    """Loads ``state`` into ``model``. ``strict``: every weight must fit, else a CheckpointError
    names a few of each kind of mismatch (not torch's hundreds of lines) and ``hint`` says what to
    do. Otherwise weights that are missing or of another shape (a head for other classes) keep
    their initialisation, with a warning naming them (``warn``). Returns the :class:`WeightReport`."""
    missing, unexpected, resized = state_dict_mismatches(model, state)
    own = model.state_dict()
    report = WeightReport(
        loaded=[k for k in own if k in state and k not in resized],
        reinitialised=[k for k in own if k in resized or k in missing],
        unused=unexpected,
        resized=[f"{k}: {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in resized],
    )
    if strict and not report.complete:
        parts = [f"{len(found)} {kind} (e.g. {', '.join(found[:3])})"
                 for kind, found in (("missing", missing), ("unexpected", unexpected),
                                     ("of another shape, file -> model", report.resized)) if found]
        raise CheckpointError(f"the weights in {path!r} do not fit the model: {'; '.join(parts)}"
                              + (f". {hint}" if hint else ""))
    model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)
    if warn and not report.complete:
        warnings.warn(f"{path}: {len(report.reinitialised)} weights keep their initialisation (missing or "
                      f"of another shape, e.g. {', '.join(report.reinitialised[:4])}); "
                      f"{len(report.unused)} entries of the file are unused", stacklevel=2)
    return report


# ---- Families and the one loader.


@dataclass(frozen=True)
class Family:
    """What the shared loader needs to know of a detector family.

    ``marker``: a state-dict key that only this family's models have. ``infer(state, given)``:
    the settings the state dict determines (``given``: what args or the caller already say; they
    win and need not be read). ``assumed(checkpoint, given)``: the settings that the file cannot
    tell and that nobody gave, each as ``"name=value (why)"``, for the warning.
    ``build(**settings)``: the model; ``config_class``: the dataclass of its settings (the fields
    read from saved args). ``exclude_from_args``: saved args that must not be taken as settings.
    ``official_layout(model)``: the model as its official code saves a checkpoint."""

    name: str
    marker: str
    config_class: type
    infer: Callable[[dict, dict], dict]
    assumed: Callable[[dict, dict], list]
    build: Callable[..., nn.Module]
    official_layout: Callable[[nn.Module], dict]
    exclude_from_args: tuple = ()


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def _registered() -> dict[str, Family]:
    import deformdetr.models  # noqa: F401  (each family registers itself on import)

    return _FAMILIES


def family_of(state: dict, path: str = "the state dict") -> Family:
    """The family whose marker key the state dict holds."""
    for family in _registered().values():
        if family.marker in state:
            return family
    markers = ", ".join(f"{f.name}: {f.marker!r}" for f in _registered().values())
    raise CheckpointError(f"{path}: the weights belong to no detector deformdetr knows (looked for {markers})")


def load_checkpoint(path: str, map_location="cpu", strict: bool = True, family: Optional[str] = None,
                    **overrides) -> nn.Module:
    """Builds the model a checkpoint was saved from, and loads its weights.

    Works for deformdetr's training checkpoints, the official Deformable DETR and MonoDETR ones
    (and bare state dicts), and Hugging Face transformers' Deformable DETR (a folder written by
    ``save_pretrained``, or a hub id; see :func:`read_weights`); the family comes from the
    weights (or ``family=``). Settings come from the checkpoint's saved ``args`` (or config.json)
    where it has them, else from the state dict's keys and shapes; ``overrides`` settle what neither tells (e.g. ``nheads``: assumed at the official
    default, with a warning) and replace what they can (``num_classes=7`` for fine-tuning, with
    ``strict=False``: weights missing from the file or of another shape keep their
    initialisation, with a warning naming them)."""
    return model_from_checkpoint(read_weights(path, map_location), path, strict, family, **overrides)


def model_from_checkpoint(checkpoint: dict, path: str, strict: bool = True, family: Optional[str] = None,
                          **overrides) -> nn.Module:
    """:func:`load_checkpoint` of a checkpoint already read (``path`` names it in messages)."""
    state = model_state_of(checkpoint, path)
    chosen = _registered()[family] if family is not None else family_of(state, path)
    if family is not None and chosen.marker not in state:
        raise CheckpointError(f"not a {chosen.name} state dict: {path!r} has no {chosen.marker!r}")
    given = {**settings_from_args(checkpoint.get("args"), chosen.config_class, chosen.exclude_from_args),
             **overrides}
    # Said before inferring: a wrong assumption is what makes inference fail.
    _warn_assumed(path, chosen.assumed(checkpoint, given))
    model = chosen.build(**{**chosen.infer(state, given), **given})
    load_weights(model, state, path, strict)
    return model


def _warn_assumed(path: str, assumed: Sequence[str]) -> None:
    if assumed:
        warnings.warn(f"{path}: the checkpoint records no args, so these settings are assumed at "
                      f"the official defaults: {'; '.join(assumed)}. Pass the real ones to load_checkpoint "
                      f"if the model was trained otherwise.", stacklevel=4)


# ---- Reading settings off state dicts (shared by the families).


def count_indices(state: dict, prefix: str) -> int:
    """How many numbered children ``prefix`` has (``...layers.0``, ``...layers.1``: 2)."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def rows_of(state: dict, key: str, setting: str) -> int:
    if key not in state:
        raise CheckpointError(f"the state dict has no {key!r} to tell {setting}: pass {setting}=...")
    return int(state[key].shape[0])


_RESNETS = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50", (23, True): "resnet101"}


def backbone_settings(state: dict) -> dict:
    """The backbone settings a state dict tells: the ResNet (by its layer3 blocks and whether they
    are bottlenecks), the position embedding, and whether batch norm was trained (from scratch)."""
    layer3_blocks = count_indices(state, "backbone.0.body.layer3.")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    if (layer3_blocks, bottleneck) not in _RESNETS:
        raise CheckpointError(f"unrecognised ResNet backbone: layer3 has {layer3_blocks} blocks")
    return dict(
        backbone=_RESNETS[(layer3_blocks, bottleneck)],
        position_embedding="learned" if "backbone.1.row_embed.weight" in state else "sine",
        backbone_from_scratch="backbone.0.body.bn1.num_batches_tracked" in state,
    )


def transformer_settings(state: dict, prefix: str, nheads: int) -> dict:
    """The sizes of a deformable transformer under ``prefix`` (``transformer``,
    ``depthaware_transformer``). Heads and points per head multiply into one weight shape, so
    the points follow from ``nheads``."""
    levels, hidden_dim = state[f"{prefix}.level_embed"].shape
    return dict(
        hidden_dim=int(hidden_dim),
        num_feature_levels=int(levels),
        enc_layers=count_indices(state, f"{prefix}.encoder.layers."),
        dec_layers=count_indices(state, f"{prefix}.decoder.layers."),
        dim_feedforward=state[f"{prefix}.encoder.layers.0.linear1.weight"].shape[0],
        enc_n_points=_points_per_head(state, f"{prefix}.encoder.layers.0.self_attn", nheads, int(levels)),
        dec_n_points=_points_per_head(state, f"{prefix}.decoder.layers.0.cross_attn", nheads, int(levels)),
    )


def _points_per_head(state: dict, attention: str, nheads: int, levels: int) -> int:
    key = f"{attention}.attention_weights.weight"
    if key not in state:
        return 4
    total = state[key].shape[0]
    if total % (nheads * levels) != 0:
        raise CheckpointError(
            f"{key} has {total} outputs, not a multiple of nheads x levels = {nheads} x {levels}: "
            "pass the checkpoint's nheads to load_checkpoint(..., nheads=...)"
        )
    return total // (nheads * levels)
