#pragma once

#include <string>
#include <vector>

namespace rdk {
// Largest dynamic shared memory one block may opt in to on the current CUDA device,
// in bytes: 99 KB on sm_86/sm_89/sm_120 (RTX 30/40, A10, L4, L40S), 163 KB on sm_80,
// 227 KB on sm_90. The Python side asks before it picks the CUDA backend for a shape.
int max_shared_memory_per_block();

// The architectures this module's device code was compiled for, as nvcc's
// __CUDA_ARCH_LIST__ gives them (800 = sm_80), for messages: the list names the
// virtual architectures, not whether SASS, PTX or both were embedded.
std::vector<int> compiled_archs();

// Whether this module holds code the current device can run: "" if so, else the CUDA
// error as "name: description", read by cudaFuncGetAttributes on an empty kernel built
// with the same flags as every other (SASS for the device, or PTX the driver can
// compile for it). The Python side asks once per device, with that device current,
// before it picks the cuda backend there, where a launch would otherwise fail with
// "no kernel image is available". It switches no device itself: a cudaSetDevice here
// would create a primary context on a device the process may never use.
std::string kernel_image_error();
}  // namespace rdk
