"""The tasks the engine runs, one per detector family, by name: a config's ``task`` picks one.

A task (:class:`~deformdetr.engine.tasks.base.Task`) declares its config schema and builds the
model, criterion, data sets, optimizer and schedule; it predicts, scores and formats its metrics.
The trainer, the CLI and the configs reach tasks only through this registry."""

from __future__ import annotations

from deformdetr.engine.tasks.base import Task

__all__ = ["Task", "register_task", "get_task", "task_class", "task_names", "task_for_family", "DEFAULT_TASK",
           "add_predict_options", "predict_option_values"]

#: The task of a config that names none.
DEFAULT_TASK = "detection"

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: makes ``cls`` the task of configs whose ``task`` is ``cls.name``."""
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_class(name) -> type[Task]:
    """The task registered under ``name``; a ConfigError naming the registered ones otherwise."""
    if name not in _TASKS:
        from deformdetr.configs import ConfigError

        raise ConfigError(f"unknown task {name!r}; the tasks are: {', '.join(task_names())}")
    return _TASKS[name]


def get_task(cfg: dict) -> Task:
    """The task of a config, built on it."""
    return task_class(cfg["task"])(cfg)


def task_for_family(family: str) -> type[Task]:
    """The task whose models are of the model family ``family`` (deformdetr.models.checkpoint)."""
    for cls in _TASKS.values():
        if cls.family == family:
            return cls
    raise ValueError(f"no task uses {family} models")


def add_predict_options(parser) -> None:
    """Every task's ``predict_options`` on ``parser`` (``deformdetr predict``), a group per task."""
    for name in task_names():
        cls = _TASKS[name]
        if cls.predict_options:
            group = parser.add_argument_group(f"for {cls.title} models")
            for flag, settings in cls.predict_options:
                group.add_argument(flag, default=None, **settings)


def predict_option_values(task: Task, args, checkpoint: str) -> dict:
    """The ``predict_options`` values given in ``args`` (parsed by a parser that
    :func:`add_predict_options` set up), by dest, for ``task``'s model; an option of another task's
    models is a ValueError naming it."""
    values = {}
    for name in task_names():
        for flag, _ in _TASKS[name].predict_options:
            dest = flag.lstrip("-").replace("-", "_")
            if getattr(args, dest, None) is None:
                continue
            if name != task.name:
                raise ValueError(f"{flag} is for {_TASKS[name].title} models; {checkpoint} holds a {task.title} model")
            values[dest] = getattr(args, dest)
    return values


# The tasks register themselves when their modules load.
from deformdetr.engine.tasks import detection, mono3d  # noqa: E402,F401
