#pragma once
#include <cstdint>

namespace rdk {
// See dcd.cu. Pointers are device addresses; stream is a cudaStream_t. params = fp32 [scale, bias].
// Writes stats[n_blocks, 4] = (sum CE, sum KL, sum G*S, sum G) and, with need_grad,
// local[2, batch, dim] and part[2, n_blocks, batch, dim] (dz / scale); rdkernels/ops/dcd/merge.py sums them.
constexpr int kDcdRows = 16;
constexpr int kDcdMaxBatch = 1024;
constexpr int kDcdMaxDim = 256;
void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t params, float alpha,
              uintptr_t stats, uintptr_t local, uintptr_t part, bool need_grad, uintptr_t stream);
}  // namespace rdk
