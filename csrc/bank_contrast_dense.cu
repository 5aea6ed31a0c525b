// Bank contrast, dense strategy (the overview: bank_contrast_common.cuh).
#include "bank_contrast.h"
#include "bank_contrast_common.cuh"

#include <cmath>

namespace rdk {
namespace {

constexpr int kBM = 64;      // query rows per block (16 per warp)
constexpr int kBN = 64;      // bank rows per tile
constexpr int kWarps = 4;
constexpr int kDenseThreads = kWarps * 32;
constexpr int kDenseMaxDim = 128;
constexpr int kTileLoads = 8;   // 16-byte tile loads in flight per thread (load_tile)
static_assert(kBM == kBN, "load_tile copies kBN rows for the query block too");

// 3xTF32's split, as CUTLASS's fast fp32 GEMMs make it (FastF32): the big part is x
// rounded half an ulp up to TF32 (an integer add and an AND on its bits), the small part
// x - big (exact in fp32) with its low 13 bits cleared; both are valid TF32 operands.
// Four instructions a value. cvt.rna.tf32.f32 has no sm_80/sm_90 instruction of its own:
// ptxas expands it into a NaN/inf test, an add, a select and an AND, and with the small
// part's conversion the split took seven instructions a value, 140 of the 194 in a k-step
// of the sm_90 score loop (cuobjdump). Accuracy: hi + lo is x to 2^-21, the dropped
// lo * lo term at most 2^-22 of a product; with the big part rounded to nearest, lo takes
// either sign, so neither error leans one way across a dot's terms. The Triton kernels
// split the same way (rdkernels/ops/_tf32.py).
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
  lo = __float_as_uint(x - __uint_as_float(hi)) & 0xffffe000u;
}

// c += a @ b for one m16n8k8 TF32 tile (fp32 accumulate).
__device__ __forceinline__ void mma_tf32(float* c, const uint32_t* a, const uint32_t* b) {
#ifdef RDK_CPU_EMULATION
  rdk_emu::mma_m16n8k8_tf32(c, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// 3xTF32: (a_hi + a_lo)(b_hi + b_lo) without the lo*lo term; b_lo is zero
// (and skipped) when the bank is bf16, which TF32 holds exactly.
template <bool B_EXACT>
__device__ __forceinline__ void mma_3xtf32(float* c, const float* a, const float* b) {
  uint32_t ah[4], al[4], bh[2], bl[2];
#pragma unroll
  for (int i = 0; i < 4; ++i) split_tf32(a[i], ah[i], al[i]);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (B_EXACT) {
      bh[i] = __float_as_uint(b[i]);
    } else {
      split_tf32(b[i], bh[i], bl[i]);
    }
  }
  mma_tf32(c, al, bh);
  if (!B_EXACT) mma_tf32(c, ah, bl);
  mma_tf32(c, ah, bh);
}

template <int DP>
struct DenseSmem {
  static constexpr int ld = DP + 4;       // padded rows: conflict-free fragment loads
  static constexpr int ldc = kBN + 4;
  static constexpr size_t q_floats = kBM * ld;
  static constexpr size_t w_floats = kBN * ld;
  static constexpr size_t c_floats = kBM * ldc;   // per-warp 16 x 64 coefficient tiles
  static constexpr size_t bytes = (q_floats + w_floats + c_floats) * sizeof(float);
};

// Four consecutive elements as fp32 (one 16-byte load for fp32, 8 bytes for bf16).
template <typename T>
__device__ __forceinline__ float4 load_float4(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return __ldg(reinterpret_cast<const float4*>(p));
  } else {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
    return make_float4(__uint_as_float(x.x << 16), __uint_as_float(x.x & 0xffff0000u),
                       __uint_as_float(x.y << 16), __uint_as_float(x.y & 0xffff0000u));
  }
}

// Copy kBN rows x DP columns (zero beyond dim / n_valid) into shared memory as fp32.
// The vector path issues kTileLoads loads a thread before storing any: a tile is
// 16 (DP = 128) or 8 vectors a thread, so it waits for two or one load latencies
// where a load-store loop waited for one per vector the compiler did not batch.
template <typename T, int DP>
__device__ __forceinline__ void load_tile(float* dst, const T* src, int64_t first, int n_valid, int dim,
                                          int64_t stride, bool vec4) {
  constexpr int ld = DenseSmem<DP>::ld;
  if (vec4) {
    constexpr int per_row = DP / 4;
    constexpr int per_thread = kBN * per_row / kDenseThreads;
    constexpr int batch = per_thread < kTileLoads ? per_thread : kTileLoads;
    static_assert(kBN * per_row % kDenseThreads == 0 && per_thread % batch == 0, "whole vectors per thread");
#pragma unroll
    for (int k0 = 0; k0 < per_thread; k0 += batch) {
      float4 v[batch];
#pragma unroll
      for (int k = 0; k < batch; ++k) {
        const int i = threadIdx.x + (k0 + k) * kDenseThreads;
        const int r = i / per_row, c = (i % per_row) * 4;
        v[k] = (r < n_valid && c < dim) ? load_float4(src + (first + r) * stride + c) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int k = 0; k < batch; ++k) {
        const int i = threadIdx.x + (k0 + k) * kDenseThreads;
        *reinterpret_cast<float4*>(dst + (i / per_row) * ld + (i % per_row) * 4) = v[k];
      }
    }
  } else {
    for (int i = threadIdx.x; i < kBN * DP; i += kDenseThreads) {
      const int r = i / DP, c = i % DP;
      dst[r * ld + c] = (r < n_valid && c < dim) ? to_float(src[(first + r) * stride + c]) : 0.f;
    }
  }
}

template <typename BankT, int DP, int EPI>
__global__ void __launch_bounds__(kDenseThreads)
bank_dense_kernel(const float* __restrict__ query, const BankT* __restrict__ bank,
                  const uint32_t* __restrict__ counts, const float* __restrict__ z, float* __restrict__ loss_out,
                  float* __restrict__ dq, float* __restrict__ max_out, float* __restrict__ sum_out, int batch,
                  int n_bank, int dim, int n_tiles, int tiles_per_split, int64_t stride_bank, int64_t stride_counts,
                  float inv_t, float log_c, float log_mpn_c, bool vec4_q, bool vec4_bank) {
  using S = DenseSmem<DP>;
  constexpr bool B_EXACT = sizeof(BankT) == 2;
  constexpr int NT = DP / 8;  // n-tiles of dq per warp
  RDK_DYNAMIC_SHARED(float4, smem4);
  float* qs = reinterpret_cast<float*>(smem4);
  float* ws = qs + S::q_floats;
  float* cs = ws + S::w_floats;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = blockIdx.x * kBM;
  const int split = blockIdx.y, n_splits = gridDim.y;
  const int wrow = warp * 16;  // this warp's first row within the block
  float* cw = cs + wrow * S::ldc;
  // this thread's count rows (the rows g, g + 8 of its warp whose scores it holds), or null past the batch
  const uint32_t* cnt_row[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row0 + wrow + g + 8 * h;
    cnt_row[h] = row < batch ? counts + static_cast<int64_t>(row) * stride_counts : nullptr;
  }

  load_tile<float, DP>(qs, query, row0, min(kBM, batch - row0), dim, dim, vec4_q);

  float oacc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) oacc[j][0] = oacc[j][1] = oacc[j][2] = oacc[j][3] = 0.f;
  float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.f, 0.f}, loss[2] = {0.f, 0.f};
  const float log_z = EPI == kNce ? logf(*z) : 0.f;

  const int t_start = split * tiles_per_split;
  const int t_stop = min(t_start + tiles_per_split, n_tiles);
  for (int tile = t_start; tile < t_stop; ++tile) {
    const int64_t j0 = static_cast<int64_t>(tile) * kBN;
    __syncthreads();  // every warp is done with the previous tile
    // Sample counts of the score entries this thread holds: columns j*8 + 2t + {0, 1}
    // are the two halves of word j*4 + t of the tile's 32 (count rows are padded to
    // whole tiles). Loaded before the bank tile, so they arrive during its load.
    uint32_t cword[2][8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < 8; ++j) cword[h][j] = cnt_row[h] ? __ldg(cnt_row[h] + j0 / 2 + j * 4 + t) : 0u;
    }
    load_tile<BankT, DP>(ws, bank, j0, static_cast<int>(n_bank - j0 < kBN ? n_bank - j0 : kBN), dim, stride_bank, vec4_bank);
    __syncthreads();

    // scores: s[16 x 64] = q_w[16 x DP] . tile^T
    float sacc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) sacc[j][0] = sacc[j][1] = sacc[j][2] = sacc[j][3] = 0.f;
#pragma unroll 1
    for (int k0 = 0; k0 < DP; k0 += 8) {
      const float a[4] = {qs[(wrow + g) * S::ld + k0 + t], qs[(wrow + g + 8) * S::ld + k0 + t],
                          qs[(wrow + g) * S::ld + k0 + t + 4], qs[(wrow + g + 8) * S::ld + k0 + t + 4]};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float b[2] = {ws[(j * 8 + g) * S::ld + k0 + t], ws[(j * 8 + g) * S::ld + k0 + t + 4]};
        mma_3xtf32<B_EXACT>(sacc[j], a, b);
      }
    }

    // epilogue: thread holds rows g, g+8 and columns j*8 + 2t + {0, 1}
    float scale[2] = {1.f, 1.f};
    if (EPI == kSoftmax) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float m = -INFINITY;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if (cword[h][j] >> (16 * c) & 0xffffu) m = fmaxf(m, sacc[j][2 * h + c] * inv_t);
          }
        }
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const float new_max = fmaxf(run_max[h], m);
        const float safe = new_max == -INFINITY ? 0.f : new_max;
        scale[h] = __expf(run_max[h] - safe);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int n = static_cast<int>(cword[h][j] >> (16 * c) & 0xffffu);
            const float p = n > 0 ? n * __expf(sacc[j][2 * h + c] * inv_t - safe) : 0.f;
            cw[(g + 8 * h) * S::ldc + j * 8 + 2 * t + c] = p;
            sum += p;
          }
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        run_sum[h] = run_sum[h] * scale[h] + sum;
        run_max[h] = new_max;
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        oacc[j][0] *= scale[0]; oacc[j][1] *= scale[0];
        oacc[j][2] *= scale[1]; oacc[j][3] *= scale[1];
      }
    } else {  // NCE negatives in log space: t = log x - log c
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int n = static_cast<int>(cword[h][j] >> (16 * c) & 0xffffu);
            float coef = 0.f;
            if (n > 0) {
              const float tt = sacc[j][2 * h + c] * inv_t - log_z - log_c;
              loss[h] += n * (softplus(tt) - log_mpn_c);
              coef = n * inv_t / (1.f + __expf(-tt));
            }
            cw[(g + 8 * h) * S::ldc + j * 8 + 2 * t + c] = coef;
          }
        }
      }
    }
    __syncwarp();  // coefficient tile complete

    // dq[16 x DP] += coef[16 x 64] . tile[64 x DP]
#pragma unroll 1
    for (int k0 = 0; k0 < kBN; k0 += 8) {
      const float a[4] = {cw[g * S::ldc + k0 + t], cw[(g + 8) * S::ldc + k0 + t], cw[g * S::ldc + k0 + t + 4],
                          cw[(g + 8) * S::ldc + k0 + t + 4]};
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const float b[2] = {ws[(k0 + t) * S::ld + j * 8 + g], ws[(k0 + t + 4) * S::ld + j * 8 + g]};
        mma_3xtf32<B_EXACT>(oacc[j], a, b);
      }
    }
  }

  // partials of rows g and g+8 of this warp
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + wrow + g + 8 * h;
    float l = loss[h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (row >= batch) continue;
    const int64_t part = row * n_splits + split;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = j * 8 + 2 * t + c;
        if (col < dim) dq[part * dim + col] = oacc[j][2 * h + c];
      }
    }
    if (t == 0) {
      if (EPI == kNce) {
        loss_out[part] = l;
      } else {
        max_out[part] = run_max[h];
        sum_out[part] = run_sum[h];
      }
    }
  }
}

template <typename BankT, int DP>
void launch_dense_dp(int epilogue, dim3 grid, cudaStream_t stream, const float* q, const BankT* bank,
                     const uint32_t* counts, const float* z, float* loss, float* dq, float* mx, float* sm, int batch,
                     int n_bank, int dim, int n_tiles, int per, int64_t stride_bank, int64_t stride_counts,
                     float inv_t, float log_c, float log_mpn_c, bool vec4_q, bool vec4_bank) {
  const size_t smem = DenseSmem<DP>::bytes;
#define RDK_DENSE(EPI)                                                                                        \
  do {                                                                                                        \
    auto kernel = bank_dense_kernel<BankT, DP, EPI>;                                                          \
    reserve_shared_memory(kernel, smem, "bank_contrast_dense");                                              \
    RDK_LAUNCH(kernel, grid, kDenseThreads, smem, stream)(q, bank, counts, z, loss, dq, mx, sm, batch, n_bank, \
                                                          dim, n_tiles, per, stride_bank, stride_counts, inv_t,  \
                                                          log_c, log_mpn_c, vec4_q, vec4_bank);               \
  } while (0)
  if (epilogue == kNce) {
    RDK_DENSE(kNce);
  } else if (epilogue == kSoftmax) {
    RDK_DENSE(kSoftmax);
  } else {
    throw std::runtime_error("rdkernels._C.bank_contrast_dense: epilogue must be 0 (nce) or 1 (softmax)");
  }
#undef RDK_DENSE
}

template <typename BankT>
void launch_dense(int epilogue, dim3 grid, cudaStream_t stream, const float* q, const void* bank,
                  const uint32_t* counts, const float* z, float* loss, float* dq, float* mx, float* sm, int batch,
                  int n_bank, int dim, int n_tiles, int per, int64_t stride_bank, int64_t stride_counts, float inv_t,
                  float log_c, float log_mpn_c) {
  const int align = sizeof(BankT) == 4 ? 16 : 8;
  const bool vec4_q = dim % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0;
  const bool vec4_bank = dim % 4 == 0 && stride_bank % 4 == 0 && reinterpret_cast<uintptr_t>(bank) % align == 0;
  auto* b = static_cast<const BankT*>(bank);
  if (dim <= 64) {
    launch_dense_dp<BankT, 64>(epilogue, grid, stream, q, b, counts, z, loss, dq, mx, sm, batch, n_bank, dim, n_tiles,
                               per, stride_bank, stride_counts, inv_t, log_c, log_mpn_c, vec4_q, vec4_bank);
  } else {
    launch_dense_dp<BankT, 128>(epilogue, grid, stream, q, b, counts, z, loss, dq, mx, sm, batch, n_bank, dim, n_tiles,
                                per, stride_bank, stride_counts, inv_t, log_c, log_mpn_c, vec4_q, vec4_bank);
  }
}

}  // namespace

// Dense launch: grid (ceil(B / 64), n_splits), 128 threads, dynamic smem
// dense_shared_memory_bytes(dim): 52 224 / 84 992 B for d <= 64 / 128, opted in above
// 48 KB; the Python side checks the latter against the device's per-block limit.
void bank_contrast_dense(uintptr_t query, uintptr_t bank, int bank_dtype, uintptr_t counts, uintptr_t z,
                         uintptr_t loss, uintptr_t dq, uintptr_t run_max, uintptr_t run_sum, int64_t batch,
                         int64_t n_bank, int64_t dim, int64_t n_tiles, int64_t tiles_per_split, int64_t n_splits,
                         int64_t stride_bank, int64_t stride_counts, float inv_t, float log_c, float log_mpn_c,
                         int epilogue, uintptr_t stream) {
  if (batch == 0) return;
  if (dim > kDenseMaxDim) throw std::runtime_error("rdkernels._C.bank_contrast_dense: dim must be <= 128");
  const dim3 grid(static_cast<unsigned>((batch + kBM - 1) / kBM), static_cast<unsigned>(n_splits));
  auto s = reinterpret_cast<cudaStream_t>(stream);
#define RDK_ARGS                                                                                              \
  epilogue, grid, s, reinterpret_cast<const float*>(query), reinterpret_cast<const void*>(bank),             \
      reinterpret_cast<const uint32_t*>(counts), reinterpret_cast<const float*>(z),                          \
      reinterpret_cast<float*>(loss), reinterpret_cast<float*>(dq), reinterpret_cast<float*>(run_max),        \
      reinterpret_cast<float*>(run_sum), static_cast<int>(batch), static_cast<int>(n_bank), static_cast<int>(dim), \
      static_cast<int>(n_tiles), static_cast<int>(tiles_per_split), stride_bank, stride_counts, inv_t, log_c,  \
      log_mpn_c
  if (bank_dtype == kFloat32) launch_dense<float>(RDK_ARGS);
  else if (bank_dtype == kBFloat16) launch_dense<__nv_bfloat16>(RDK_ARGS);
  else throw bad_dtype("bank", bank_dtype);
#undef RDK_ARGS
  check_launch("bank_contrast_dense");
}

int dense_block_m() { return kBM; }
int dense_block_n() { return kBN; }
int dense_max_dim() { return kDenseMaxDim; }
int64_t dense_shared_memory_bytes(int64_t dim) {
  return static_cast<int64_t>(dim <= 64 ? DenseSmem<64>::bytes : DenseSmem<128>::bytes);
}

}  // namespace rdk
