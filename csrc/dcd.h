#pragma once
#include <cstdint>

namespace rdk {
// See dcd.cu. Pointers are device addresses; stream is a cudaStream_t. tau, bias: one fp32 each;
// scale = min(exp(tau), max_scale). scratch: dcd_scratch_bytes(batch) bytes (S and S^T, 2 B^2 floats, and
// a few floats a row). Outputs: loss[1] and, with need_grad, dzs, dzt [batch, dim], dtau[1], dbias[1] (fp32).
// Limits: the similarity grid's 65535 tile rows of 64 (the scratch runs out long before).
constexpr int64_t kDcdMaxBatch = 65535LL * 64;
constexpr int64_t kDcdMaxDim = 65535LL * 64;
int64_t dcd_scratch_bytes(int64_t batch);
void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t tau, uintptr_t bias,
              float max_scale, float alpha, uintptr_t scratch, uintptr_t loss, uintptr_t dzs, uintptr_t dzt,
              uintptr_t dtau, uintptr_t dbias, bool need_grad, uintptr_t stream);
}  // namespace rdk
