// Device limits the launchers and the Python side share (see device_limits.h).
#include "device_limits.h"

#include <cuda_runtime.h>

namespace rdk {

int max_shared_memory_per_block() {
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

}  // namespace rdk
