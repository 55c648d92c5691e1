"""engine.schedule and train.fit_to_budget: a time budget's epochs, the decays moved with them."""

import json
import types

import pytest
import torch

from deformdetr.configs import load_config
from deformdetr.engine import trainer as trainer_module
from deformdetr.engine.schedule import decay_epochs, epochs_within_budget, fitted_decays, set_decays
from deformdetr.models.checkpoint import read_checkpoint


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _step(scheduler):
    scheduler.optimizer.step()
    scheduler.step()


def _fit(scheduler, epochs, fitted):
    set_decays(scheduler, fitted_decays(scheduler, epochs, fitted))


def test_epochs_within_budget():
    assert epochs_within_budget(600, elapsed_seconds=120, epoch_seconds=50, done=2, epochs=40) == 11
    assert epochs_within_budget(600, 120, 50, 2, epochs=5) == 5          # never more than the schedule
    assert epochs_within_budget(600, 590, 50, 2, epochs=40) == 2         # the budget is spent
    assert epochs_within_budget(600, 700, 50, 2, epochs=40) == 2


def test_step_decay_moves_to_the_same_fraction():
    scheduler = torch.optim.lr_scheduler.StepLR(_optimizer(), step_size=30)
    _fit(scheduler, epochs=40, fitted=8)
    assert scheduler.step_size == 6 and decay_epochs(scheduler, 8) == [6]
    lrs = []
    for _ in range(8):
        lrs.append(scheduler.get_last_lr()[0])
        _step(scheduler)
    assert lrs == pytest.approx([1.0] * 6 + [0.1] * 2)


def test_multi_step_decays_move_and_never_into_the_past():
    scheduler = torch.optim.lr_scheduler.MultiStepLR(_optimizer(), milestones=[9, 11], gamma=0.1)
    _fit(scheduler, epochs=13, fitted=9)
    assert decay_epochs(scheduler, 9) == [6, 8]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(_optimizer(), milestones=[2, 9])
    _step(scheduler)
    _step(scheduler)
    _fit(scheduler, epochs=13, fitted=6)   # 2 -> 1 lies behind: the next epoch instead
    assert decay_epochs(scheduler, 6) == [3, 4]


def test_other_schedules_are_refused():
    scheduler = torch.optim.lr_scheduler.ExponentialLR(_optimizer(), gamma=0.9)
    with pytest.raises(TypeError, match="StepLR or MultiStepLR"):
        fitted_decays(scheduler, 10, 5)


def _fake_clock_run(monkeypatch, cfg, stop_at=None, progress=True):
    """``train(cfg)`` with each epoch taking 20 s on a fake clock (and an interruption before
    epoch ``stop_at``)."""
    now = [0.0]
    real_epoch = trainer_module.Trainer.train_epoch

    def twenty_seconds(self, epoch):
        if epoch == stop_at:
            raise KeyboardInterrupt
        now[0] += 20.0
        return real_epoch(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: now[0]))
        patch.setattr(trainer_module.Trainer, "train_epoch", twenty_seconds)
        return trainer_module.train(cfg, progress=progress)


def _budget_config(tiny_overrides, output_dir):
    # 3 minutes hold 9 epochs of 20 s; the drop (epoch 8 of 10) moves to epoch 7 of 9.
    return load_config("demo_synthetic", tiny_overrides + [
        f"output_dir={output_dir}", "train.epochs=10", "train.lr_drop=8", "train.max_minutes=3",
        "train.fit_to_budget=true", "train.eval_every=100", "train.lr=1e-4"])


def _learning_rates(output_dir):
    return [json.loads(line)["lr"] for line in open(output_dir / "log.jsonl")]


def test_a_run_fitted_to_its_budget_and_resumed(tmp_path, tiny_overrides, monkeypatch, capsys):
    whole = tmp_path / "whole"
    result = _fake_clock_run(monkeypatch, _budget_config(tiny_overrides, whole))
    assert "20 s an epoch, so 9 of 10 epochs fit in 3 min; the learning rate decays at epoch 7" in capsys.readouterr().out
    assert _learning_rates(whole) == pytest.approx([1e-4] * 6 + [1e-5] * 3)  # the rate after each epoch
    assert "AP50" in result["eval"]                                             # the last epoch evaluated
    checkpoint = read_checkpoint(str(whole / "checkpoint.pth"))
    assert checkpoint["epoch"] == 8 and checkpoint["fitted_schedule"] == {"epochs": 9, "decays": [7]}

    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        _fake_clock_run(monkeypatch, _budget_config(tiny_overrides, split), stop_at=4, progress=False)
    # Resumed on the real clock, the run keeps the fitted epochs and decay.
    trainer_module.train(_budget_config(tiny_overrides, split), resume=str(split / "checkpoint.pth"), progress=False)
    assert _learning_rates(split) == pytest.approx(_learning_rates(whole))
    assert read_checkpoint(str(split / "checkpoint.pth"))["epoch"] == 8
    capsys.readouterr()
    trainer_module.train(_budget_config(tiny_overrides, split), resume=str(split / "checkpoint.pth"), progress=False)
    assert ("finished epoch 9 of 9; resume with train.fit_to_budget=false and a larger train.epochs"
            in capsys.readouterr().err)

    # Resumed with fit_to_budget off, the config's schedule holds: epochs up to 10, the drop at 8.
    again = _budget_config(tiny_overrides, split)
    again["train"]["fit_to_budget"] = False
    trainer_module.train(again, resume=str(split / "checkpoint.pth"), progress=False)
    assert _learning_rates(split)[9:] == pytest.approx([1e-5])


def test_without_a_budget_the_schedule_is_untouched(tmp_path, tiny_overrides):
    cfg = load_config("demo_synthetic", tiny_overrides + [f"output_dir={tmp_path}", "train.epochs=3",
                                                          "train.fit_to_budget=true", "train.eval_every=100"])
    trainer_module.train(cfg, progress=False)
    assert len(open(tmp_path / "log.jsonl").readlines()) == 3
