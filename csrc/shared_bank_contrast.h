#pragma once
#include <cstdint>

namespace rdk {
// See shared_bank_contrast.cu. Pointers are device addresses; stream is a cudaStream_t.
// Writes per-split statistics stats[5, splits, batch] (base-2 m_s, l_s, m_t, l_t, cross) and,
// with need_grad, acc[2, splits, batch, dim] (scratch), then merges them into loss[batch] and,
// with need_grad, dq[batch, dim] (fp32).
constexpr int kSbcRowsPerBlock = 16;
constexpr int kSbcTile = 32;
constexpr int kSbcMaxDim = 512;
// Dynamic shared memory of the main kernel: a [32, dim + 1] queue tile and two [16, dim] query blocks.
int64_t shared_bank_contrast_shared_memory_bytes(int64_t dim);
void shared_bank_contrast(uintptr_t q_s, uintptr_t q_t, int q_dtype, uintptr_t queue, int queue_dtype, int64_t batch,
                          int64_t n_rows, int64_t dim, int64_t splits, int64_t rows_per_split, float scale_s,
                          float scale_t, float inv_tau_s, uintptr_t stats, uintptr_t acc, uintptr_t loss,
                          uintptr_t dq, bool need_grad, uintptr_t stream);
}  // namespace rdk
