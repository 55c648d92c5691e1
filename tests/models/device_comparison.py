"""A model's results on CUDA held against the same model's on the CPU (the `cuda` tests)."""

import contextlib

import torch


@contextlib.contextmanager
def exact_float32():
    """cuDNN's convolutions and cuBLAS's matmuls in full float32 (TF32 rounds to 10 bits)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _tensors(tree, prefix=""):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}[{index}]")


def assert_close_to_cpu(cpu, cuda, rtol=1e-3):
    """Every tensor of ``cuda`` (outputs, losses, gradients: any nesting of dicts and lists) equals
    its CPU counterpart within ``rtol`` of the CPU tensor's largest magnitude; float32 sums in
    another order (and the backward's atomic adds) differ by rounding, nothing more."""
    expected, actual = dict(_tensors(cpu)), dict(_tensors(cuda))
    assert expected.keys() == actual.keys()
    assert expected, "nothing to compare"
    for name, want in expected.items():
        got = actual[name].cpu()
        assert got.shape == want.shape, name
        if not want.is_floating_point():
            assert torch.equal(got, want), name
            continue
        bound = rtol * want.abs().max().item() + 1e-6
        assert (got - want).abs().max().item() <= bound, name
