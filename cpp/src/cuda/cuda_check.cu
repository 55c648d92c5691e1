#include "cuda_check.h"

#include <stdexcept>
#include <string>

#include "deformdetr/cuda_info.h"

namespace deformdetr {

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_minimum_driver_branch() {
  switch (CUDART_VERSION / 1000) {
    case 11:
      return 450;
    case 12:
      return 525;
    case 13:
      return 580;
    default:
      return 0;
  }
}

int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

namespace {

std::string cuda_version_string(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

std::string insufficient_driver_advice() {
  const int driver = cuda_driver_version();
  const int branch = cuda_minimum_driver_branch();
  std::string advice = " This deformdetr build links the CUDA " +
                       cuda_version_string(CUDART_VERSION) +
                       " runtime, which needs an NVIDIA driver" +
                       (branch > 0 ? " of branch R" + std::to_string(branch) + " or newer" : "");
  if (driver > 0)
    advice += "; the installed driver supports CUDA " + cuda_version_string(driver) + " at most";
  const std::string toolkit =
      driver > 0 ? "/usr/local/cuda-" + cuda_version_string(driver) : "/usr/local/cuda-12.4";
  return advice +
         ". Update the driver, or rebuild deformdetr with a CUDA toolkit the driver supports, "
         "e.g. `pip install --no-build-isolation --force-reinstall . "
         "-Cmake.define.CMAKE_CUDA_COMPILER=" +
         toolkit + "/bin/nvcc`.";
}

}  // namespace

void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // a non-sticky error would otherwise be reported by the next call too
  std::string message =
      std::string("deformdetr: CUDA ") + what + " failed: " + cudaGetErrorString(err) + ".";
  if (err == cudaErrorInsufficientDriver) message += insufficient_driver_advice();
  throw std::runtime_error(message);
}

CudaDeviceGuard::CudaDeviceGuard(int device) {
  cuda_check(cudaGetDevice(&previous_), "query of the current device");
  if (previous_ != device) {
    cuda_check(cudaSetDevice(device), "selection of the tensors' device");
    changed_ = true;
  }
}

// A destructor must not throw; restoring a device that was current a moment ago cannot fail short
// of a broken context, which the next CUDA call reports anyway (as its own: the error is cleared).
CudaDeviceGuard::~CudaDeviceGuard() {
  if (changed_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
}

}  // namespace deformdetr
