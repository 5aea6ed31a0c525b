// Device limits the launchers and the Python side share (see device_limits.h).
#include "device_limits.h"

#ifndef RDK_CPU_EMULATION
#include <cuda_runtime.h>
#endif

namespace rdk {

int max_shared_memory_per_block() {
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

namespace {
__global__ void image_probe_kernel() {}
}  // namespace

std::string kernel_image_error() {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, image_probe_kernel);
  if (err == cudaSuccess) return std::string();
  // Not a sticky error, but it is this runtime's last error, which the launchers'
  // checks read after their launches: clear it.
  cudaGetLastError();
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

std::vector<int> compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  return {__CUDA_ARCH_LIST__};
#else
  return {};
#endif
}

}  // namespace rdk
