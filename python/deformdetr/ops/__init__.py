"""Torch-facing wrappers of the native core, each beside a pure-PyTorch reference."""

from deformdetr.ops import boxes as _boxes
from deformdetr.ops import dropout as _dropout
from deformdetr.ops import matching as _matching
from deformdetr.ops import ms_deform_attn as _attention
from deformdetr.ops import rotated_iou as _rotated_iou
from deformdetr.ops.boxes import *  # noqa: F401,F403  (each module's __all__)
from deformdetr.ops.dropout import *  # noqa: F401,F403
from deformdetr.ops.matching import *  # noqa: F401,F403
from deformdetr.ops.ms_deform_attn import *  # noqa: F401,F403
from deformdetr.ops.ms_deform_attn_module import MSDeformAttn
from deformdetr.ops.rotated_iou import *  # noqa: F401,F403

__all__ = [*_attention.__all__, "MSDeformAttn", *_matching.__all__, *_boxes.__all__, *_rotated_iou.__all__,
           *_dropout.__all__]
