// Error checks and the device guard of the CUDA entry points. Internal to cpp/src/cuda.
#pragma once

#include <cuda_runtime.h>

namespace deformdetr {

// Throws std::runtime_error naming `what` when err is an error, after clearing it, so that the
// next CUDA call does not report it again as its own. A driver too old for the runtime gets a
// message that says which driver is needed and how to build for the one installed.
void cuda_check(cudaError_t err, const char* what);

// Makes `device` current for the launch and, if that changed it, restores the caller's device.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device);
  ~CudaDeviceGuard();
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace deformdetr
