"""deformdetr: Deformable DETR and MonoDETR on a fast C++/CUDA core."""

from deformdetr._native import _C

__version__ = "0.1.0"

#: True when the installed build contains the CUDA kernels.
cuda_compiled: bool = bool(_C.cuda_compiled)

__all__ = ["__version__", "cuda_compiled"]
