// What the CUDA kernels were built with and what they need of the driver, for `deformdetr info`
// and for the error a too-old driver gets. Defined only in builds with CUDA.
#pragma once

namespace deformdetr {

// The CUDA runtime linked into the core (statically), as CUDART_VERSION: 13000 for 13.0.
int cuda_runtime_version();

// The oldest driver branch that runs that runtime (580 for CUDA 13.x, 525 for 12.x, 450 for
// 11.x: NVIDIA's minor version compatibility), or 0 for a runtime this code does not know.
int cuda_minimum_driver_branch();

// The newest CUDA version the installed driver supports (12040 for 12.4); 0 without a driver.
int cuda_driver_version();

}  // namespace deformdetr
