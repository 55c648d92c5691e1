"""YAML presets and their overrides.

A config has a ``task`` (a registered task of deformdetr.engine.tasks, e.g. "detection" for
Deformable DETR on COCO-format data), whose schema file (``configs/_defaults*.yaml``) lists every
key the config may hold with its default: sections such as ``model``, ``data``, ``train`` and
``loss``, plus ``output_dir`` and ``device``. Names follow the official code's arguments. A preset
may name a ``base`` preset whose values it overrides. Overrides on the command line are
``section.key=value`` with YAML values.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from typing import Any, Iterable, Mapping, Optional

import yaml

__all__ = ["PRESETS", "ConfigError", "load_config", "apply_overrides", "complete", "parse_device", "preset_names"]


class ConfigError(ValueError):
    """A config file, preset name or override that cannot be used as it is."""


def preset_names() -> list[str]:
    return sorted(
        name[: -len(".yaml")]
        for name in (entry.name for entry in resources.files(__package__).iterdir())
        if name.endswith(".yaml") and not name.startswith("_")
    )


PRESETS = preset_names()

# Every task has a schema: every key a config may hold, with its default. Presets only change
# values. A preset picks its schema with its top-level ``task`` key (default: the registry's).


def _default_task() -> str:
    from deformdetr.engine.tasks import DEFAULT_TASK

    return DEFAULT_TASK


def _task_class(name: Any):
    from deformdetr.engine.tasks import task_class

    return task_class(name)


def _schema(task: str) -> dict:
    return yaml.safe_load(resources.files(__package__).joinpath(_task_class(task).schema).read_text())


def _read_yaml(name_or_path: str) -> dict:
    if os.path.isfile(name_or_path):
        with open(name_or_path) as handle:
            try:
                data = yaml.safe_load(handle) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{name_or_path} is not valid YAML: {error}") from None
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
            merged[key] = _coerce(merged[key], copy.deepcopy(value), origin, where)
    return merged


def _coerce(default: Any, value: Any, origin: str, where: str) -> Any:
    """``value`` in the type of the schema's ``default``. YAML reads ``1e-4`` as a string (it wants
    ``1.0e-4``): numbers written either way are accepted; a word where a number belongs is an error."""
    if default is None:
        default = _NULLABLE.get(where)
    if isinstance(default, bool) or default is None or value is None:
        strict = isinstance(default, bool) and where not in _BOOL_OR_TEXT
        if strict and value is not None and not isinstance(value, bool):
            raise ConfigError(f"{origin}: {where!r} must be true or false, got {value!r}")
        return value
    if where in _INT_OR_AUTO and value == "auto":
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{origin}: {where!r} must be text, got {value!r}")
    if isinstance(default, (int, float)) and isinstance(value, bool):
        raise ConfigError(f"{origin}: {where!r} must be a number, got {value!r}")
    if isinstance(default, (int, float)) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{origin}: {where!r} must be a number, got {value!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{origin}: {where!r} must be a whole number, got {value!r}")
        return int(value)
    return value


# Keys whose schema default is null ("as the variant says", "no limit"): the type a value must
# have when one is given.
_NULLABLE = {
    "model.dilation": False,
    "model.num_feature_levels": 0,
    "model.with_box_refine": False,
    "model.two_stage": False,
    "train.max_minutes": 0.0,
    "data.train_images": "",
    "data.train_annotations": "",
    "data.val_images": "",
    "data.val_annotations": "",
}
# Switches that also take a text: the backbone weights, true for ImageNet or a path/URL.
_BOOL_OR_TEXT = {"model.pretrained_backbone"}
# Numbers that may also be "auto" (taken from the data).
_INT_OR_AUTO = {"model.num_classes"}


def _chain(name_or_path: str, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The preset and its bases, base first."""
    if name_or_path in seen:
        raise ConfigError(f"config bases form a cycle: {' -> '.join(seen + (name_or_path,))}")
    data = _read_yaml(name_or_path)
    base_name = data.pop("base", None)
    if base_name and os.path.isfile(name_or_path):
        base_name = _beside(name_or_path, str(base_name))
    return (_chain(base_name, seen + (name_or_path,)) if base_name else []) + [(name_or_path, data)]


def _beside(config_file: str, base: str) -> str:
    """A file's ``base``: a preset name, or a path relative to that file's folder (then to the
    working folder, as before)."""
    if base in PRESETS or os.path.isabs(base):
        return base
    nearby = os.path.join(os.path.dirname(os.path.abspath(config_file)), base)
    return nearby if os.path.isfile(nearby) else base


def _resolve(name_or_path: str) -> dict:
    chain = _chain(name_or_path)
    task = next((data["task"] for _, data in reversed(chain) if "task" in data), _default_task())
    config = _schema(task)
    for origin, data in chain:
        config = _merge(config, data, origin)
    return config


def _lookup(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def apply_overrides(config: dict, overrides: Iterable[str]) -> dict:
    """``section.key=value`` strings, values parsed as YAML (``train.lr=1e-3``, ``model.two_stage=true``)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        dotted, raw = override.split("=", 1)
        # Where the schema holds a word, take the text as written (YAML would turn off/no into False).
        value = raw if isinstance(_lookup(config, dotted), str) else _parse_value(raw, override)
        update: Any = value
        for part in reversed(dotted.split(".")):
            update = {part: update}
        config = _merge(config, update, f"override {override!r}")
    return config


def _parse_value(raw: str, override: str) -> Any:
    if raw == "":
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {override!r}: {raw!r} is not a YAML value") from None


def load_config(name_or_path: str, overrides: Optional[Iterable[str]] = None) -> dict:
    """A preset name (see ``PRESETS``) or a YAML file, with overrides applied and checked."""
    resolved = _resolve(name_or_path)
    config = apply_overrides(resolved, overrides or [])
    if config["task"] != resolved["task"]:
        _task_class(config["task"])  # an unknown one is named as such
        raise ConfigError(f"task={config['task']} cannot be set by an override: the task decides which "
                          f"keys a config has; use a {config['task']} preset or YAML file instead")
    _check(config)
    return config


def complete(saved: dict) -> dict:
    """A config saved with a checkpoint, on its task's current schema: keys added since it was
    saved take their defaults, keys since removed are dropped."""
    config = _schema(saved.get("task", _default_task()))
    return _merge_known(config, saved)


def _merge_known(base: dict, update: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if key not in merged:
            continue
        if isinstance(merged[key], dict) and merged[key] and isinstance(value, Mapping):
            merged[key] = _merge_known(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check(config: dict) -> None:
    task = _task_class(config["task"])
    datasets = task.datasets
    if config["data"]["dataset"] not in datasets:
        raise ConfigError(f"data.dataset must be one of {datasets}, got {config['data']['dataset']!r}")
    if config["train"]["amp"] not in ("off", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be off, bf16 or fp16, got {config['train']['amp']!r}")
    for key in ("batch_size", "epochs", "eval_every", "accumulate_steps"):
        if not isinstance(config["train"][key], int) or config["train"][key] < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {config['train'][key]!r}")
    workers = config["data"]["num_workers"]
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"data.num_workers must be 0 (load in the main process) or more, got {workers!r}")
    minutes = config["train"]["max_minutes"]
    if minutes is not None and minutes < 0:
        raise ConfigError(f"train.max_minutes must be 0 or more (0: stop after one epoch; null: no "
                          f"limit), got {minutes!r}")
    if config["device"] != "auto":
        parse_device(config["device"])
    task.check_config(config)


def parse_device(spec: Any):
    """A device setting (cpu, cuda, cuda:N) as a torch.device, or a ConfigError."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return device
