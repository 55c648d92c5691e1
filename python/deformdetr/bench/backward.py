"""The backward pass of a training step, part by part. Each autograd node belongs to the part of
the model whose forward created it (a parameter's gradient accumulation, to the parameter's
part); the seconds and FLOPs of a part's backward are those of its nodes. On the CPU the engine
runs one node after another in the calling thread (each node's ops on torch's threads), so a
node's wall time is its own.

Why not FlopCounterMode's own module attribution: it places a module's backward between the
module's backward hooks, which fire when the gradients of its inputs are ready; the backbone's
input (the image) needs none, so its backward FLOPs land in the part that ran before it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from deformdetr.bench.model import part_modules

#: Nodes created outside every part, in the model's own forward (masks, position embeddings).
OTHER = "other"


class PartTracker:
    """Which part is running: module hooks on each part's modules keep a stack of part names,
    and ``within(name)`` names a stretch outside the model (the loss)."""

    def __init__(self, model: nn.Module, parts: Iterable[tuple[str, str]]):
        self._stack: list[str] = []
        self._handles = []
        for part, member in part_modules(model, parts):
            self._handles += [member.register_forward_pre_hook(self._enter(part)),
                              member.register_forward_hook(self._leave)]

    def _enter(self, part: str):
        def hook(_module, _inputs):
            self._stack.append(part)

        return hook

    def _leave(self, _module, _inputs, _output):
        self._stack.pop()  # a forward hook returning something would replace the output

    def current(self) -> str:
        return self._stack[-1] if self._stack else OTHER

    @contextlib.contextmanager
    def within(self, part: str):
        self._stack.append(part)
        try:
            yield
        finally:
            self._stack.pop()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class _NodeOwners(TorchFunctionMode):
    """Notes, for each autograd node a torch function creates, the part that was running."""

    def __init__(self, current_part: Callable[[], str]):
        super().__init__()
        self.current_part = current_part
        self.owner: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            node = leaf.grad_fn if isinstance(leaf, torch.Tensor) else None
            if node is not None:
                self.owner.setdefault(node, self.current_part())
        return out


def graph_nodes(root) -> list:
    """Every autograd node reachable from ``root`` (a loss's grad_fn)."""
    seen, order, stack = set(), [], [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        order.append(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return order


def backward_by_part(model: nn.Module, parts: Iterable[tuple[str, str]], forward: Callable,
                     loss_of: Callable[..., torch.Tensor], count_flops: bool = False) -> dict[str, dict[str, float]]:
    """Runs ``loss_of(forward())`` (the model's forward, then the loss, which counts as the part
    "loss") and its backward; returns per part ``{"seconds": ..., "flops": ...}`` of its backward
    nodes (FLOPs of matmuls and convolutions, counted only with ``count_flops``: counting slows
    every op, so time and count in separate calls). A node no forward owned (one made inside an
    autograd function's backward) goes to the part of the node that ran just before it."""
    parts = list(parts)
    tracker = PartTracker(model, parts)
    owners = _NodeOwners(tracker.current)
    try:
        with owners:
            outputs = forward()
            with tracker.within("loss"):
                loss = loss_of(outputs)
    finally:
        tracker.remove()
    parameter_part = {id(p): _part_of_name(name, parts) for name, p in model.named_parameters()}
    counter = FlopCounterMode(display=False) if count_flops else None
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "flops": 0.0})
    state = {"part": "loss"}

    def flops_so_far() -> float:
        return float(counter.get_total_flops()) if counter is not None else 0.0

    def part_of(node) -> str:
        if node in owners.owner:
            return owners.owner[node]
        variable = getattr(node, "variable", None)  # AccumulateGrad: the parameter it fills
        if variable is not None and id(variable) in parameter_part:
            return parameter_part[id(variable)]
        return state["part"]

    handles = []
    for node in graph_nodes(loss.grad_fn):
        def before(_grad_outputs, node=node):
            state["part"] = part_of(node)
            state["started"], state["flops"] = time.perf_counter(), flops_so_far()

        def after(_grad_inputs, _grad_outputs):
            entry = totals[state["part"]]
            entry["seconds"] += time.perf_counter() - state["started"]
            entry["flops"] += flops_so_far() - state["flops"]

        handles += [node.register_prehook(before), node.register_hook(after)]
    try:
        with counter if counter is not None else contextlib.nullcontext():
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return {part: dict(values) for part, values in totals.items()}


def _part_of_name(name: str, parts: list[tuple[str, str]]) -> str:
    for part, prefix in parts:
        if name == prefix or name.startswith(prefix + "."):
            return part
    return OTHER
