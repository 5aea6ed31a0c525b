#pragma once
#include <cstdint>

namespace rdk {
// See dcd.cu. Pointers are device addresses; stream is a cudaStream_t. tau, bias: one fp32 each;
// scale = min(exp(tau), max_scale). Scratch: stats[n_blocks, 4] = (sum CE, sum KL, sum G*S, sum G) and,
// with need_grad, rck[3, batch] (every row's R, C and KL). Outputs: loss[1] and, with need_grad,
// dzs, dzt [batch, dim], dtau[1], dbias[1] (all fp32).
constexpr int kDcdRows = 16;
constexpr int kDcdMaxBatch = 1024;
constexpr int kDcdMaxDim = 256;
// Dynamic shared memory of the two main kernels: the [16, batch] logit strips and [16, dim] rows.
int64_t dcd_shared_memory_bytes(int64_t batch, int64_t dim);
void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t tau, uintptr_t bias,
              float max_scale, float alpha, uintptr_t stats, uintptr_t rck, uintptr_t loss, uintptr_t dzs,
              uintptr_t dzt, uintptr_t dtau, uintptr_t dbias, bool need_grad, uintptr_t stream);
}  // namespace rdk
