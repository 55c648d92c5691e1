"""YAML presets and their overrides.

A config has four sections, ``model`` (the settings of
:class:`~deformdetr.models.deformable_detr.DeformableDETRConfig` plus ``variant`` and
``pretrained_backbone``), ``data``, ``train`` and ``loss``, plus ``output_dir`` and ``device``.
Names follow the official ``main.py`` arguments. A preset may name a ``base`` preset whose values
it overrides. Overrides on the command line are ``section.key=value`` with YAML values.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from typing import Any, Iterable, Mapping, Optional

import yaml

__all__ = ["PRESETS", "ConfigError", "load_config", "apply_overrides", "preset_names"]


class ConfigError(ValueError):
    """A config file, preset name or override that cannot be used as it is."""


def preset_names() -> list[str]:
    return sorted(
        name[: -len(".yaml")]
        for name in (entry.name for entry in resources.files(__package__).iterdir())
        if name.endswith(".yaml") and not name.startswith("_")
    )


PRESETS = preset_names()

# The schema: every key a config may hold, with its default. Presets only change values.
_SCHEMA = yaml.safe_load(resources.files(__package__).joinpath("_defaults.yaml").read_text())


def _read_yaml(name_or_path: str) -> dict:
    if os.path.isfile(name_or_path):
        with open(name_or_path) as handle:
            data = yaml.safe_load(handle) or {}
        origin = name_or_path
    elif name_or_path in PRESETS:
        data = yaml.safe_load(resources.files(__package__).joinpath(f"{name_or_path}.yaml").read_text()) or {}
        origin = f"preset {name_or_path!r}"
    else:
        raise ConfigError(
            f"{name_or_path!r} is neither a config file nor a preset; presets: {', '.join(PRESETS)}"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, update: Mapping, origin: str, path: str = "") -> dict:
    """Returns base with update's values; any key that base (the schema) lacks is an error."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in merged:
            valid = ", ".join(sorted(merged))
            raise ConfigError(f"{origin}: unknown config key {where!r}; valid keys here: {valid}")
        if isinstance(merged[key], dict) and merged[key] and not isinstance(value, dict):
            raise ConfigError(f"{origin}: {where!r} is a section, got the value {value!r}")
        if isinstance(merged[key], dict) and merged[key]:
            merged[key] = _merge(merged[key], value, origin, where + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(name_or_path: str, seen: tuple = ()) -> dict:
    if name_or_path in seen:
        raise ConfigError(f"config bases form a cycle: {' -> '.join(seen + (name_or_path,))}")
    data = _read_yaml(name_or_path)
    base_name = data.pop("base", None)
    base = _resolve(base_name, seen + (name_or_path,)) if base_name else copy.deepcopy(_SCHEMA)
    return _merge(base, data, name_or_path)


def apply_overrides(config: dict, overrides: Iterable[str]) -> dict:
    """``section.key=value`` strings, values parsed as YAML (``train.lr=1e-3``, ``model.two_stage=true``)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        dotted, raw = override.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        update: Any = value
        for part in reversed(dotted.split(".")):
            update = {part: update}
        config = _merge(config, update, f"override {override!r}")
    return config


def load_config(name_or_path: str, overrides: Optional[Iterable[str]] = None) -> dict:
    """A preset name (see ``PRESETS``) or a YAML file, with overrides applied and checked."""
    config = apply_overrides(_resolve(name_or_path), overrides or [])
    _check(config)
    return config


def _check(config: dict) -> None:
    from deformdetr.models.deformable_detr import VARIANTS

    if config["model"]["variant"] not in VARIANTS:
        raise ConfigError(f"model.variant must be one of {list(VARIANTS)}, got {config['model']['variant']!r}")
    if config["data"]["dataset"] not in ("coco", "synthetic"):
        raise ConfigError(f"data.dataset must be 'coco' or 'synthetic', got {config['data']['dataset']!r}")
    if config["train"]["amp"] not in ("off", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be off, bf16 or fp16, got {config['train']['amp']!r}")
    for key in ("batch_size", "epochs"):
        if not isinstance(config["train"][key], int) or config["train"][key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {config['train'][key]!r}")
