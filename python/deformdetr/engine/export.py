"""``deformdetr export``: a detector as an ONNX graph of standard operators, which stock
onnxruntime runs, and a check of that graph against the model in torch.

The attention exports through the pure-PyTorch reference (``grid_sample``: ONNX GridSample, opset
16 and later). With ``dynamic``, batch size, height and width are symbols of the graph: the level
sizes, reference points, valid ratios, masks and two-stage proposals are computed inside it, so
one file serves every image size (from about twice the coarsest stride up).

Inputs: ``images`` (N, 3, H, W) float32, normalised as in training, and ``mask`` (N, H, W) bool,
True at padding; MonoDETR takes ``images``, ``calibs`` (N, 3, 4) and ``img_sizes`` (N, 2) (W, H)
instead. Outputs: ``pred_logits`` and ``pred_boxes`` (MonoDETR: its heads by their output names).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from deformdetr.models.postprocess import PostProcess
from deformdetr.ops import use_reference

__all__ = ["OPSET", "DEFAULT_SIZES", "family_name", "input_names", "output_names", "example_inputs", "export_onnx",
           "export_program", "verify_onnx"]

#: ONNX opset: GridSample is standard from 16; 18 is the one torch's exporter writes natively.
OPSET = 18
_INSTALL = "pip install 'deformdetr[interop]'"

#: The export size when none is given: the official evaluation sizes (COCO's shorter side 800;
#: KITTI's 384 x 1280 for MonoDETR).
DEFAULT_SIZES = {"deformable_detr": (800, 1066), "monodetr": (384, 1280)}

_DETR_INPUTS = ("images", "mask")
_MONO_INPUTS = ("images", "calibs", "img_sizes")
_DETR_OUTPUTS = ("pred_logits", "pred_boxes")
_MONO_OUTPUTS = ("pred_logits", "pred_boxes", "pred_3d_dim", "pred_depth", "pred_angle", "pred_depth_map_logits")


def _is_mono(model: nn.Module) -> bool:
    from deformdetr.models.mono.monodetr import MonoDETR

    return isinstance(model, MonoDETR)


def family_name(model: nn.Module) -> str:
    return "monodetr" if _is_mono(model) else "deformable_detr"


def input_names(model: nn.Module) -> tuple:
    return _MONO_INPUTS if _is_mono(model) else _DETR_INPUTS


def output_names(model: nn.Module) -> tuple:
    return _MONO_OUTPUTS if _is_mono(model) else _DETR_OUTPUTS


class _NamedOutputs(nn.Module):
    """The model taking its inputs as plain tensors and giving its named outputs as a tuple, as
    exporters take them (the auxiliary outputs of earlier layers are left out)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs: Tensor) -> tuple:
        outputs = self.model(*inputs)
        return tuple(outputs[name] for name in self.names)


def example_inputs(model: nn.Module, height: int, width: int, batch: int = 1, seed: int = 0,
                   padded: bool = False) -> tuple:
    """Random inputs of the model's kind (seeded): images, and a mask (``padded``: the last image
    padded at the bottom and right) or, for MonoDETR, KITTI-like camera matrices and sizes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=generator)
    if _is_mono(model):
        calib = torch.tensor([[700.0, 0.0, width / 2, 45.0], [0.0, 700.0, height / 2, -0.2], [0.0, 0.0, 1.0, 0.005]])
        sizes = torch.tensor([[float(width), float(height)]])
        return images, calib.expand(batch, 3, 4).clone(), sizes.expand(batch, 2).clone()
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if padded:
        mask[-1, height * 3 // 4:] = True
        mask[-1, :, width * 2 // 3:] = True
        images = images.masked_fill(mask[:, None], 0.0)
    return images, mask


def _dynamic_shapes(model: nn.Module) -> tuple:
    """Batch, height and width free in every input ("AUTO": torch.export keeps each symbolic
    unless the model ties it to a constant)."""
    auto = torch.export.Dim.AUTO
    image = {0: auto, 2: auto, 3: auto}
    if _is_mono(model):
        return image, {0: auto}, {0: auto}
    return image, {0: auto, 1: auto, 2: auto}


def export_program(model: nn.Module, height: int, width: int, dynamic: bool = False,
                   reference: bool = True) -> torch.export.ExportedProgram:
    """The model as a torch.export ExportedProgram with inputs and outputs named as in the ONNX
    file. ``reference``: the attention as the pure-PyTorch reference (standard operators, what
    ONNX needs); otherwise our custom op, deformdetr::ms_deform_attn, is one node per call."""
    model = model.eval()
    # A batch of 1 would be baked in: torch.export specialises sizes 0 and 1.
    inputs = example_inputs(model, height, width, batch=2 if dynamic else 1)
    wrapper = _NamedOutputs(model, output_names(model))
    with torch.no_grad(), use_reference(reference), warnings.catch_warnings():
        # torch.export's own use of a pytree API it deprecates; nothing the user can act on.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return torch.export.export(wrapper, inputs, dynamic_shapes={"inputs": _dynamic_shapes(model)} if dynamic else None,
                                   strict=False)


def export_onnx(model: nn.Module, output: str, height: int, width: int, dynamic: bool = False,
                opset: int = OPSET) -> None:
    """Writes the model to ``output`` as ONNX (standard operators; see the module docstring)."""
    _require("onnx", "onnxscript")
    if opset < 16:
        raise ValueError(f"opset {opset}: the attention needs GridSample, standard from opset 16")
    program = export_program(model, height, width, dynamic)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    # The exporter reports its steps on stdout; the CLI says what matters. optimize=False: the
    # exporter's graph optimizer (onnxscript 0.7) drops the bound of a Clip in the box-refinement
    # loop, leaving a graph onnxruntime refuses; onnxruntime optimises the graph when it loads it.
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logger("torch.onnx"):
        torch.onnx.export(program, program.example_inputs[0], output, input_names=list(input_names(model)),
                          output_names=list(output_names(model)), opset_version=opset, dynamo=True,
                          external_data=False, optimize=False)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Errors only from logger ``name`` (the exporter warns that torchvision's ops, which no
    model here uses, cannot be registered without torchvision)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"ONNX export needs {', '.join(missing)}: {_INSTALL}")


def verify_onnx(model: nn.Module, path: str, sizes: Sequence[tuple], seed: int = 0) -> list[dict]:
    """Runs the ONNX file with onnxruntime on the CPU and the model in torch on the same random
    inputs, one (batch, height, width) per entry of ``sizes`` (Deformable DETR: the last image
    padded). Returns per size the largest absolute difference of each output and, for Deformable
    DETR, whether PostProcess picks the same detections (labels, and scores and boxes within 1e-4)."""
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = output_names(model)
    results = []
    for batch, height, width in sizes:
        inputs = example_inputs(model, height, width, batch, seed=seed, padded=True)
        with torch.no_grad():
            expected = model.eval()(*inputs)
        got = dict(zip(names, session.run(list(names), {n: t.numpy() for n, t in zip(input_names(model), inputs)})))
        got = {name: torch.from_numpy(value) for name, value in got.items()}
        result = {"size": (batch, height, width),
                  "max_abs_diff": {name: float((got[name] - expected[name]).abs().max()) for name in names}}
        if not _is_mono(model):
            result["same_detections"] = _same_detections(got, expected, inputs[1])
        results.append(result)
    return results


def _same_detections(got: dict, expected: dict, mask: Tensor) -> bool:
    image_sizes = torch.tensor([[int((~m).any(1).sum()), int((~m).any(0).sum())] for m in mask])  # unpadded (H, W)
    ours, theirs = (PostProcess()(outputs, image_sizes) for outputs in (expected, got))
    return all(torch.equal(a["labels"], b["labels"]) and torch.allclose(a["scores"], b["scores"], atol=1e-4)
               and torch.allclose(a["boxes"], b["boxes"], atol=1e-4 * max(mask.shape[1:]))
               for a, b in zip(ours, theirs))
