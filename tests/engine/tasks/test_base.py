"""engine/tasks/base.py: the fused AdamW the tasks build, and resuming its state."""

import copy

import torch

from deformdetr.engine.tasks.base import adamw, place_steps_for_fused


def _parameters():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((7, 5), (5,), (3, 4, 2))]


def _steps(optimizer, params, steps=4):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_adamw_is_fused_on_the_cpu_and_updates_as_the_loop_does():
    fused_params, loop_params = _parameters(), _parameters()
    fused = adamw([{"params": fused_params, "weight_decay": 0.0}, {"params": []}], lr=1e-2, weight_decay=1e-4)
    loop = torch.optim.AdamW([{"params": loop_params, "weight_decay": 0.0}, {"params": []}], lr=1e-2,
                             weight_decay=1e-4)
    assert fused.param_groups[0]["fused"] and not loop.param_groups[0]["fused"]
    for a, b in zip(_steps(fused, fused_params), _steps(loop, loop_params)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_loop_optimizers_state_resumes_in_a_fused_one():
    params = _parameters()
    loop = torch.optim.AdamW([{"params": params}], lr=1e-2)
    _steps(loop, params, steps=2)
    saved = copy.deepcopy(loop.state_dict())  # as a checkpoint holds it (state_dict shares the tensors)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = adamw([{"params": resumed_params}], lr=1e-2)
    fused.load_state_dict(saved)
    fused.param_groups[0]["fused"] = True  # the config's settings, as the trainer restores them
    place_steps_for_fused(fused)
    continued = _steps(loop, params)
    for a, b in zip(_steps(fused, resumed_params), continued):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_steps_are_placed_as_a_fused_optimizer_keeps_them():
    params = _parameters()
    optimizer = adamw([{"params": params}], lr=1e-2)
    _steps(optimizer, params, steps=1)
    optimizer.state[params[0]]["step"] = torch.tensor(1.0, dtype=torch.float64)  # as another optimizer kept it
    place_steps_for_fused(optimizer)
    assert all(optimizer.state[p]["step"].dtype == torch.float32 and optimizer.state[p]["step"].device == p.device
               for p in params)
