// Bank contrast: queries q[B, d] scored against memory-bank rows M[N, d] at
// idx[B, K+1] (column 0 the positive), s = <M[idx], q> / T, with a loss
// epilogue. Two strategies (rdkernels/ops/bank_contrast/cost_model.py picks):
//
// * gather (bank_gather_kernel): one block per (query row, column split).
//   Each warp is cut into groups of `lpr` lanes; a group scores one bank row
//   at a time, each lane holding NV 16-byte vectors of it, and keeps U rows
//   in flight to cover latency. Per column the epilogue runs on the group's
//   score: NCE terms and d loss / d s (log space), an online softmax, the
//   score itself, or the scores' backward. The block then merges its groups
//   (softmax: rescaled by the block max) and writes one partial per
//   (row, split); the caller merges the splits (rdkernels/ops/bank_contrast/cuda.py).
//
// * dense (bank_dense_kernel): flash-attention-shaped. One block of 4 warps
//   per (64 query rows, split of the bank); it streams 64-row bank tiles
//   through shared memory once. Per tile, each warp computes its 16 x 64
//   score tile with mma.sync m16n8k8 TF32 in 3xTF32 (hi/lo splits: fp32
//   accuracy on tensor cores; a bf16 bank is exact in TF32, so its lo part is
//   skipped), loads the tile's sample counts (how often each bank row is a
//   negative of each query: packed 16-bit pairs, ops/bank_contrast/sample_counts.py)
//   into the registers that hold the matching scores, applies the epilogue
//   there, and accumulates dq += coef @ tile with a second 3xTF32 mma. No [B, N] matrix exists.
//   The positive column is merged by the caller.
//
// Accumulation is always fp32. Launch configurations are listed next to each launcher.
//
// This header holds what the two strategies' kernels share; each has its own file
// (bank_contrast_gather.cu, bank_contrast_dense.cu), and bank_contrast.h declares both.
#pragma once

#include "common.cuh"

namespace rdk {

enum BankEpilogue : int { kNce = 0, kSoftmax = 1, kScores = 2, kScoresBwd = 3 };

__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(__expf(-fabsf(x))); }

}  // namespace rdk
