#pragma once

namespace rdk {
// Largest dynamic shared memory one block may opt in to on the current CUDA device,
// in bytes: 99 KB on sm_86/sm_89/sm_120 (RTX 30/40, A10, L4, L40S), 163 KB on sm_80,
// 227 KB on sm_90. The Python side asks before it picks the CUDA backend for a shape.
int max_shared_memory_per_block();
}  // namespace rdk
