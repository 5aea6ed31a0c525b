// Shared-bank contrast (RRD): per query row b and a queue Q[N, d],
//   loss[b] = LSE_k(s_bk) - sum_k softmax(t_b)_k s_bk,   s = q_s Q^T / tau_s, t = q_t Q^T / tau_t
//   dq_s[b] = sum_k (softmax(s_b)_k - softmax(t_b)_k) Q_k / tau_s
// computed flash-style in one pass over Q: no [B, N] matrix.
//
// Grid (row blocks of 16 queries, splits of the queue). Block = 4 warps; each warp owns
// 4 query rows. The block streams its split of Q in tiles of 32 rows through shared
// memory (row stride d + 1, so lane k reading row k is bank-conflict free); lane k scores
// queue row k against the warp's rows, the warp reduces max / sum with shuffles, and for
// the gradient each lane accumulates its d / 32 dimensions of
//   acc_s = sum_k exp2(s_k - m_s) Q_k,  acc_t = sum_k exp2(t_k - m_t) Q_k
// in registers, rescaled whenever the running max moves (exact online softmax). The
// queries are pre-scaled by log2(e) / tau, so all statistics are base 2. Per split the
// block writes (m_s, l_s, m_t, l_t, cross, acc_s, acc_t); a second kernel, launched
// by the same call, merges the splits per row (a log-sum-exp merge, flash-decoding style)
// into loss[b] and dq_s[b].
#include "common.cuh"
#include "shared_bank_contrast.h"

#include <cmath>

namespace rdk {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kSbcRowsPerBlock / kWarps;
constexpr int kThreads = kWarps * 32;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// One block per query row: warp 0 merges the split statistics and leaves each split's
// weight w / sum in shared memory; then every thread merges its columns of dq_s.
__global__ void __launch_bounds__(kThreads) shared_bank_merge_kernel(
    const float* __restrict__ stats, const float* __restrict__ acc, int64_t batch, int64_t splits, int dim,
    float inv_tau_s, float* __restrict__ loss, float* __restrict__ dq) {
  RDK_DYNAMIC_SHARED(float, weights);  // [2][splits]: w_s / sum_s, then w_t / sum_t
  const int64_t b = blockIdx.x;
  const int64_t plane = splits * batch;
  const float* m_s = stats + b;
  const float* l_s = stats + plane + b;
  const float* m_t = stats + 2 * plane + b;
  const float* l_t = stats + 3 * plane + b;
  const float* cross = stats + 4 * plane + b;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float big_s = -INFINITY, big_t = -INFINITY;
    for (int64_t s = lane; s < splits; s += 32) {
      big_s = fmaxf(big_s, m_s[s * batch]);
      big_t = fmaxf(big_t, m_t[s * batch]);
    }
    big_s = warp_max(big_s);
    big_t = warp_max(big_t);
    float sum_s = 0.f, sum_t = 0.f, cross_sum = 0.f;
    for (int64_t s = lane; s < splits; s += 32) {
      const float w_s = exp2f(m_s[s * batch] - big_s), w_t = exp2f(m_t[s * batch] - big_t);
      weights[s] = w_s;
      weights[splits + s] = w_t;
      sum_s += l_s[s * batch] * w_s;
      sum_t += l_t[s * batch] * w_t;
      cross_sum += cross[s * batch] * w_t;
    }
    sum_s = warp_sum(sum_s);
    sum_t = warp_sum(sum_t);
    cross_sum = warp_sum(cross_sum);
    for (int64_t s = lane; s < splits; s += 32) {
      weights[s] /= sum_s;
      weights[splits + s] /= sum_t;
    }
    if (lane == 0) loss[b] = (big_s + log2f(sum_s) - cross_sum / sum_t) * 0.6931471805599453f;
  }
  if (dq == nullptr) return;  // uniform: no thread reaches the barrier
  __syncthreads();
  const int64_t acc_plane = plane * dim;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const int64_t off = (s * batch + b) * dim + c;
      v += acc[off] * weights[s] - acc[acc_plane + off] * weights[splits + s];
    }
    dq[b * dim + c] = v * inv_tau_s;
  }
}

// Row stride of the queue tile: odd, so that lane k reading tile[k * ld + j] hits bank
// (k * ld + j) % 32, all 32 different (an even stride, d + 1 for odd d, puts two or more
// lanes on one bank; 32 at d = 127).
__host__ __device__ inline int sbc_tile_ld(int64_t dim) { return static_cast<int>(dim | 1); }

template <typename QT, typename BT, int DPL>  // DPL: dimensions per lane, d <= 32 * DPL
__global__ void __launch_bounds__(kThreads) shared_bank_contrast_kernel(
    const QT* __restrict__ q_s, const QT* __restrict__ q_t, const BT* __restrict__ queue, int64_t batch,
    int64_t n_rows, int dim, int64_t rows_per_split, float scale_s, float scale_t, float* __restrict__ stats,
    float* __restrict__ acc_out, bool need_grad) {
  RDK_DYNAMIC_SHARED(float, smem);
  const int ld = sbc_tile_ld(dim);
  float* tile = smem;                               // [kSbcTile][ld]
  float* qs = tile + kSbcTile * ld;                 // [16][dim], pre-scaled
  float* qt = qs + kSbcRowsPerBlock * dim;          // [16][dim]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSbcRowsPerBlock;
  const int64_t split = blockIdx.y, n_splits = gridDim.y;
  const int64_t start = split * rows_per_split;
  const int64_t stop = min(start + rows_per_split, n_rows);

  for (int i = threadIdx.x; i < kSbcRowsPerBlock * dim; i += kThreads) {
    const int64_t r = row0 + i / dim;
    const int j = i % dim;
    const bool ok = r < batch;
    qs[i] = ok ? to_float(q_s[r * dim + j]) * scale_s : 0.f;
    qt[i] = ok ? to_float(q_t[r * dim + j]) * scale_t : 0.f;
  }

  float m_s[kRowsPerWarp], l_s[kRowsPerWarp], m_t[kRowsPerWarp], l_t[kRowsPerWarp], cross[kRowsPerWarp];
  float acc_s[kRowsPerWarp][DPL], acc_t[kRowsPerWarp][DPL];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m_s[r] = -INFINITY; m_t[r] = -INFINITY; l_s[r] = 0.f; l_t[r] = 0.f; cross[r] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) { acc_s[r][i] = 0.f; acc_t[r][i] = 0.f; }
  }

  for (int64_t n0 = start; n0 < stop; n0 += kSbcTile) {
    __syncthreads();  // the previous tile is no longer read (and qs/qt are written on entry)
    for (int i = threadIdx.x; i < kSbcTile * dim; i += kThreads) {
      const int k = i / dim, j = i % dim;
      const int64_t n = n0 + k;
      tile[k * ld + j] = n < stop ? to_float(queue[n * dim + j]) : 0.f;
    }
    __syncthreads();
    const bool valid = n0 + lane < stop;
    float s[kRowsPerWarp], t[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) { s[r] = 0.f; t[r] = 0.f; }
    const float* my_row = tile + lane * ld;
    for (int j = 0; j < dim; ++j) {
      const float w = my_row[j];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int rr = warp * kRowsPerWarp + r;
        s[r] = fmaf(qs[rr * dim + j], w, s[r]);
        t[r] = fmaf(qt[rr * dim + j], w, t[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float sv = valid ? s[r] : -INFINITY;
      const float tv = valid ? t[r] : -INFINITY;
      const float new_ms = fmaxf(m_s[r], warp_max(sv));
      const float new_mt = fmaxf(m_t[r], warp_max(tv));
      const float alpha_s = exp2f(m_s[r] - new_ms);
      const float alpha_t = exp2f(m_t[r] - new_mt);
      const float p_s = exp2f(sv - new_ms);
      const float p_t = exp2f(tv - new_mt);
      l_s[r] = l_s[r] * alpha_s + warp_sum(p_s);
      l_t[r] = l_t[r] * alpha_t + warp_sum(p_t);
      cross[r] = cross[r] * alpha_t + warp_sum(valid ? p_t * s[r] : 0.f);
      m_s[r] = new_ms;
      m_t[r] = new_mt;
      if (need_grad) {
#pragma unroll
        for (int i = 0; i < DPL; ++i) { acc_s[r][i] *= alpha_s; acc_t[r][i] *= alpha_t; }
        for (int k = 0; k < kSbcTile; ++k) {
          const float pk_s = __shfl_sync(0xffffffffu, p_s, k);
          const float pk_t = __shfl_sync(0xffffffffu, p_t, k);
          const float* qrow = tile + k * ld;
#pragma unroll
          for (int i = 0; i < DPL; ++i) {
            const int j = lane + 32 * i;
            if (j < dim) {
              acc_s[r][i] = fmaf(pk_s, qrow[j], acc_s[r][i]);
              acc_t[r][i] = fmaf(pk_t, qrow[j], acc_t[r][i]);
            }
          }
        }
      }
    }
  }

  const int64_t plane = n_splits * batch;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = row0 + warp * kRowsPerWarp + r;
    if (row >= batch) continue;
    const int64_t base = split * batch + row;
    if (lane == 0) {
      stats[base] = m_s[r];
      stats[plane + base] = l_s[r];
      stats[2 * plane + base] = m_t[r];
      stats[3 * plane + base] = l_t[r];
      stats[4 * plane + base] = cross[r];
    }
    if (need_grad) {
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int j = lane + 32 * i;
        if (j < dim) {
          acc_out[base * dim + j] = acc_s[r][i];
          acc_out[(plane + base) * dim + j] = acc_t[r][i];
        }
      }
    }
  }
}

template <typename QT, typename BT, int DPL>
void launch_dpl(const void* q_s, const void* q_t, const void* queue, int64_t batch, int64_t n_rows, int dim,
                int64_t splits, int64_t rows_per_split, float scale_s, float scale_t, float* stats, float* acc,
                bool need_grad, cudaStream_t stream) {
  auto kernel = shared_bank_contrast_kernel<QT, BT, DPL>;
  const size_t smem = static_cast<size_t>(shared_bank_contrast_shared_memory_bytes(dim));
  reserve_shared_memory(kernel, smem, "shared_bank_contrast");
  const dim3 grid(static_cast<unsigned>((batch + kSbcRowsPerBlock - 1) / kSbcRowsPerBlock),
                  static_cast<unsigned>(splits));
  RDK_LAUNCH(kernel, grid, kThreads, smem, stream)(static_cast<const QT*>(q_s), static_cast<const QT*>(q_t),
                                           static_cast<const BT*>(queue), batch, n_rows, dim, rows_per_split,
                                           scale_s, scale_t, stats, acc, need_grad);
}

template <typename QT, typename BT>
void launch_types(const void* q_s, const void* q_t, const void* queue, int64_t batch, int64_t n_rows, int dim,
                  int64_t splits, int64_t rows_per_split, float scale_s, float scale_t, float* stats, float* acc,
                  bool need_grad, cudaStream_t stream) {
  if (dim <= 64) {
    launch_dpl<QT, BT, 2>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
  } else if (dim <= 128) {
    launch_dpl<QT, BT, 4>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
  } else if (dim <= 256) {
    launch_dpl<QT, BT, 8>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
  } else {
    launch_dpl<QT, BT, 16>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
  }
}

template <typename QT>
void launch_queue(int queue_dtype, const void* q_s, const void* q_t, const void* queue, int64_t batch, int64_t n_rows,
                  int dim, int64_t splits, int64_t rows_per_split, float scale_s, float scale_t, float* stats,
                  float* acc, bool need_grad, cudaStream_t stream) {
  switch (queue_dtype) {
    case kFloat32: return launch_types<QT, float>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
    case kBFloat16: return launch_types<QT, __nv_bfloat16>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
    case kFloat16: return launch_types<QT, __half>(q_s, q_t, queue, batch, n_rows, dim, splits, rows_per_split, scale_s, scale_t, stats, acc, need_grad, stream);
    default: throw bad_dtype("queue", queue_dtype);
  }
}

}  // namespace

int64_t shared_bank_contrast_shared_memory_bytes(int64_t dim) {
  return (kSbcTile * sbc_tile_ld(dim) + 2 * kSbcRowsPerBlock * dim) * static_cast<int64_t>(sizeof(float));
}

void shared_bank_contrast(uintptr_t q_s, uintptr_t q_t, int q_dtype, uintptr_t queue, int queue_dtype, int64_t batch,
                          int64_t n_rows, int64_t dim, int64_t splits, int64_t rows_per_split, float scale_s,
                          float scale_t, float inv_tau_s, uintptr_t stats, uintptr_t acc, uintptr_t loss,
                          uintptr_t dq, bool need_grad, uintptr_t stream) {
  if (batch == 0 || n_rows == 0) return;
  if (dim > kSbcMaxDim) throw std::runtime_error("shared_bank_contrast: dim > 512 is not supported by the CUDA kernel");
  const void* qs_p = reinterpret_cast<const void*>(q_s);
  const void* qt_p = reinterpret_cast<const void*>(q_t);
  const void* queue_p = reinterpret_cast<const void*>(queue);
  auto* stats_p = reinterpret_cast<float*>(stats);
  auto* acc_p = reinterpret_cast<float*>(acc);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int d = static_cast<int>(dim);
  switch (q_dtype) {
    case kFloat32: launch_queue<float>(queue_dtype, qs_p, qt_p, queue_p, batch, n_rows, d, splits, rows_per_split, scale_s, scale_t, stats_p, acc_p, need_grad, s); break;
    case kBFloat16: launch_queue<__nv_bfloat16>(queue_dtype, qs_p, qt_p, queue_p, batch, n_rows, d, splits, rows_per_split, scale_s, scale_t, stats_p, acc_p, need_grad, s); break;
    case kFloat16: launch_queue<__half>(queue_dtype, qs_p, qt_p, queue_p, batch, n_rows, d, splits, rows_per_split, scale_s, scale_t, stats_p, acc_p, need_grad, s); break;
    default: throw bad_dtype("q_s", q_dtype);
  }
  check_launch("shared_bank_contrast");
  const size_t merge_smem = 2 * static_cast<size_t>(splits) * sizeof(float);
  reserve_shared_memory(shared_bank_merge_kernel, merge_smem, "shared_bank_merge");
  RDK_LAUNCH(shared_bank_merge_kernel, static_cast<unsigned>(batch), kThreads, merge_smem, s)(
      stats_p, acc_p, batch, splits, d, inv_tau_s, reinterpret_cast<float*>(loss),
      need_grad ? reinterpret_cast<float*>(dq) : nullptr);
  check_launch("shared_bank_merge");
}

}  // namespace rdk
