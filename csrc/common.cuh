// Shared helpers for rdkernels' CUDA kernels.
//
// The extension deliberately includes no torch headers: the Python side passes
// raw device pointers, dtype codes and the caller's CUDA stream. That keeps the
// build independent of torch's version and lets it compile on machines whose
// torch is a CPU build.
#pragma once

#ifndef RDK_CPU_EMULATION  // the emulation (emulation/simt.h) defines what the kernels use of these
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <stdexcept>
#include <string>

#include "device_limits.h"

// A kernel launch, RDK_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...), and a
// kernel's dynamic shared memory, RDK_DYNAMIC_SHARED(type, name): the CUDA syntax
// here, and what the CPU emulation of the tests runs instead (emulation/simt.h).
#ifdef RDK_CPU_EMULATION
#define RDK_LAUNCH(kernel, grid, block, shared_bytes, stream) ::rdk_emu::launch(kernel, grid, block, shared_bytes)
#define RDK_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::rdk_emu::dynamic_shared())
#else
#define RDK_LAUNCH(kernel, grid, block, shared_bytes, stream) kernel<<<grid, block, shared_bytes, stream>>>
#define RDK_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace rdk {

// Dtype codes shared with rdkernels/ops/_cuda_common.py.
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kInt32 = 3, kInt64 = 4 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the whole block; `scratch` holds one float per warp. All threads get the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = (lane < n_warps) ? scratch[lane] : 0.f;
  return warp_sum(v);
}

inline void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
  }
}

// Let `kernel` launch with `bytes` of dynamic shared memory, or throw an error naming
// the op and both sizes: past the device's limit the launch would only report
// "invalid argument".
template <typename Kernel>
void reserve_shared_memory(Kernel* kernel, size_t bytes, const char* what) {
  if (bytes <= 48 * 1024) return;  // every GPU grants 48 KB without opting in
  const int limit = max_shared_memory_per_block();
  if (bytes > static_cast<size_t>(limit)) {
    throw std::runtime_error(std::string(what) + ": needs " + std::to_string(bytes) +
                             " bytes of shared memory per block; this GPU allows " + std::to_string(limit));
  }
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": cannot reserve shared memory: " + cudaGetErrorString(err));
  }
}

inline std::runtime_error bad_dtype(const char* arg, int code) {
  return std::runtime_error(std::string("rdkernels._C: unsupported dtype code ") + std::to_string(code) +
                            " for " + arg);
}

}  // namespace rdk
