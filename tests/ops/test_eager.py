import pytest
import torch

from deformdetr.ops.eager import eager_on_cpu, inference_on_cpu


def test_a_cpu_tensor_outside_a_graph_is_eager_and_its_inference_is_without_autograd():
    x = torch.zeros(2)
    assert eager_on_cpu(x)
    assert not inference_on_cpu(x)
    with torch.no_grad():
        assert inference_on_cpu(x)
    with torch.inference_mode():
        assert inference_on_cpu(x)


@pytest.mark.parametrize("tracing", ["is_compiling", "is_exporting"])
def test_a_graph_being_compiled_or_exported_takes_no_cpu_shortcut(monkeypatch, tracing):
    monkeypatch.setattr(torch.compiler, tracing, lambda: True)
    x = torch.zeros(2)
    assert not eager_on_cpu(x)
    with torch.no_grad():
        assert not inference_on_cpu(x)


def test_a_tensor_on_another_device_takes_no_cpu_shortcut():
    x = torch.zeros(2, device="meta")
    assert not eager_on_cpu(x)
    with torch.no_grad():
        assert not inference_on_cpu(x)
