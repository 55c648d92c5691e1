"""A training schedule fitted to a time budget (``train.fit_to_budget`` with ``train.max_minutes``).

A budget alone stops a run after whichever epoch crosses it, so a slower machine trains fewer
epochs of the same schedule and may never reach its learning-rate decay, where detectors gain the
most. Fitted, the run measures its second epoch, takes as many epochs as the budget holds at that
pace, and moves each decay to the same fraction of those epochs: a slower machine trains fewer epochs, but the
whole schedule.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

__all__ = ["FIT_AFTER_EPOCHS", "epochs_within_budget", "fitted_decays", "set_decays", "decay_epochs"]

#: Epochs trained before the fit: the first pays for warm-up (each new input shape's kernels are
#: prepared once), so the second sets the pace.
FIT_AFTER_EPOCHS = 2


def epochs_within_budget(budget_seconds: float, elapsed_seconds: float, epoch_seconds: float, done: int,
                         epochs: int) -> int:
    """The epochs a run that has trained ``done`` of them in ``elapsed_seconds`` reaches within
    the budget at ``epoch_seconds`` an epoch (from ``done`` to ``epochs``)."""
    if epoch_seconds <= 0:
        return epochs
    more = math.floor((budget_seconds - elapsed_seconds) / epoch_seconds)
    return max(done, min(epochs, done + more))


def _decays(scheduler) -> list[int]:
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        return [scheduler.step_size]
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
        return sorted(scheduler.milestones.elements())
    raise TypeError(f"train.fit_to_budget moves the decays of a StepLR or MultiStepLR schedule, "
                    f"not of a {type(scheduler).__name__}")


def fitted_decays(scheduler, epochs: int, fitted: int) -> list[int]:
    """``scheduler``'s decay epochs (a StepLR's step, a MultiStepLR's milestones) moved from a
    schedule of ``epochs`` to the same fractions of ``fitted`` epochs, each after the epochs the
    scheduler has stepped through."""
    earliest = scheduler.last_epoch + 1
    return [max(earliest, round(epoch * fitted / epochs)) for epoch in _decays(scheduler)]


def set_decays(scheduler, decays: list[int]) -> None:
    """Gives ``scheduler`` the decay epochs of :func:`fitted_decays` (a resumed run sets them again)."""
    _decays(scheduler)  # refuses other schedules
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        scheduler.step_size = decays[0]
    else:
        scheduler.milestones = Counter(decays)


def decay_epochs(scheduler, epochs: int) -> list[int]:
    """The epochs (counted from 0) that start at a decayed learning rate, within ``epochs``."""
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        return list(range(scheduler.step_size, epochs, scheduler.step_size))
    return sorted(m for m in scheduler.milestones if m < epochs)
