"""Torch-facing wrappers of the native core, each beside a pure-PyTorch reference."""

from deformdetr.ops.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference, use_reference
from deformdetr.ops.ms_deform_attn_module import MSDeformAttn

__all__ = ["ms_deform_attn", "ms_deform_attn_reference", "use_reference", "MSDeformAttn"]
