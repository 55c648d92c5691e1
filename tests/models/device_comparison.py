"""A model's results on CUDA held against the same model's on the CPU (the `cuda` tests)."""

import torch


def _tensors(tree, prefix=""):
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}[{index}]")


def in_float64(tree):
    """``tree`` (tensors in any nesting of dicts and lists) with its float tensors in float64."""
    if torch.is_tensor(tree):
        return tree.double() if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {key: in_float64(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(in_float64(value) for value in tree)
    return tree


def assert_close_to_cpu(cpu, cuda, rtol=1e-6):
    """Every tensor of ``cuda`` (outputs, losses, gradients: any nesting of dicts and lists) equals
    its CPU counterpart within ``rtol`` of the CPU tensor's largest magnitude. The models run in
    float64 on both devices, where TF32 cannot enter, but their sine position embeddings are
    computed in float32, as official (a float32 sine differs by an ulp between devices): on the
    H200 the largest difference was 6e-8 of the largest magnitude. A wrong kernel is off by 1e-2."""
    expected, actual = dict(_tensors(cpu)), dict(_tensors(cuda))
    assert expected.keys() == actual.keys()
    assert expected, "nothing to compare"
    for name, want in expected.items():
        got = actual[name].cpu()
        assert got.shape == want.shape, name
        if not want.is_floating_point():
            assert torch.equal(got, want), name
            continue
        bound = rtol * want.abs().max().item() + 1e-12
        difference = (got - want).abs().max().item()
        assert difference <= bound, f"{name}: differs by {difference:.3g} (bound {bound:.3g})"
