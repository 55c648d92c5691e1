"""Export: torch.export keeps our custom op (an ExportedProgram that runs); ONNX export writes
standard operators that stock onnxruntime runs, and with dynamic shapes one file gives torch's
outputs (within 1e-4) and detections at the export size and at other sizes and batch sizes."""

import pytest
import torch

from deformdetr.engine.export import example_inputs, export_onnx, export_program, output_names, verify_onnx
from deformdetr.models import deformable_detr, monodetr

SMALL = dict(num_classes=5, backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2,
             dim_feedforward=64, num_queries=20, pretrained_backbone=False)
SMALL_MONO = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=64,
                  num_queries=6, group_num=2, depth_encoder_nheads=4, depth_encoder_dim_feedforward=64,
                  num_depth_bins=8)


def perturbed(model):
    """Every weight moved off its initial value (zero-initialised heads would hide errors)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def test_torch_export_keeps_our_custom_op_and_the_program_runs():
    model = perturbed(deformable_detr("single_scale", **SMALL))
    program = export_program(model, 96, 128, reference=False)
    targets = {str(node.target) for node in program.graph.nodes}
    assert "deformdetr.ms_deform_attn.default" in targets
    inputs = example_inputs(model, 96, 128, padded=True)
    with torch.no_grad():
        got, expected = program.module()(*inputs), model(*inputs)
    for name, value in zip(output_names(model), got):
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)


def test_an_opset_without_grid_sample_is_refused(tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the [interop] extra")
    with pytest.raises(ValueError, match="GridSample, standard from opset 16"):
        export_onnx(deformable_detr("single_scale", **SMALL), str(tmp_path / "m.onnx"), 64, 64, opset=15)


SIZES = [(2, 128, 160), (1, 200, 96), (3, 96, 224)]  # the export size, then others (96 x 224 is padded unevenly)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["single_scale", "single_scale_dc5", "multi_scale", "box_refine", "two_stage"])
def test_one_dynamic_onnx_file_matches_torch_at_every_size(tmp_path, variant):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [interop] extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the [interop] extra")
    model = perturbed(deformable_detr(variant, **SMALL))
    path = str(tmp_path / f"{variant}.onnx")
    export_onnx(model, path, 128, 160, dynamic=True)
    for result in verify_onnx(model, path, SIZES):
        assert max(result["max_abs_diff"].values()) < 1e-4, result
        assert result["same_detections"], result


@pytest.mark.slow
def test_monodetr_exports_with_its_camera_inputs(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [interop] extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the [interop] extra")
    model = perturbed(monodetr(**SMALL_MONO))
    path = str(tmp_path / "mono.onnx")
    export_onnx(model, path, 128, 192, dynamic=True)
    for result in verify_onnx(model, path, [(2, 128, 192), (1, 96, 320), (3, 160, 160)]):
        assert set(result["max_abs_diff"]) == set(output_names(model))
        assert max(result["max_abs_diff"].values()) < 1e-4, result
