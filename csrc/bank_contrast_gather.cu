// Bank contrast, gather strategy (the overview: bank_contrast_common.cuh).
#include "bank_contrast.h"
#include "bank_contrast_common.cuh"

#include <cmath>
#include <type_traits>

namespace rdk {
namespace {

constexpr int kGatherThreads = 128;
constexpr int kGatherWarps = kGatherThreads / 32;

// 16-byte vectors of bank elements.
template <typename BankT> struct Vec16;
template <> struct Vec16<float> {
  static constexpr int n = 4;
  __device__ static void unpack(const uint4& v, float* out) {
    out[0] = __uint_as_float(v.x); out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z); out[3] = __uint_as_float(v.w);
  }
};
template <> struct Vec16<__nv_bfloat16> {
  static constexpr int n = 8;
  __device__ static void unpack(const uint4& v, float* out) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};


// Load the VEC elements of one bank row that start at `col`: one 16-byte load
// when the row is aligned, else element by element (masked by dim).
template <typename BankT>
__device__ __forceinline__ uint4 load_vec(const BankT* row, int col, int dim, bool vec_ok) {
  constexpr int VEC = Vec16<BankT>::n;
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (col >= dim) return v;
  if (vec_ok) return __ldg(reinterpret_cast<const uint4*>(row + col));
  BankT tmp[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) tmp[i] = (col + i < dim) ? row[col + i] : from_float<BankT>(0.f);
  memcpy(&v, tmp, sizeof(v));
  return v;
}

template <typename BankT, typename IdxT, int NV, int EPI>
__global__ void __launch_bounds__(kGatherThreads)
bank_gather_kernel(const float* __restrict__ query, const BankT* __restrict__ bank, const IdxT* __restrict__ idx,
                   const float* __restrict__ z, const float* __restrict__ grad, float* __restrict__ out,
                   float* __restrict__ dq, float* __restrict__ max_out, float* __restrict__ sum_out, int n_cols,
                   int dim, int cols_per_split, int lpr, bool vec_ok, int64_t stride_bank, int64_t stride_idx,
                   float inv_t, float log_c, float log_mpn_c) {
  constexpr int VEC = Vec16<BankT>::n;
  constexpr int E = NV * VEC;             // bank elements per lane
  constexpr int U = NV >= 4 ? 1 : 4 / NV;  // rows in flight per group
  RDK_DYNAMIC_SHARED(float, smem);  // [warps, dim] dq per warp, then 2 x 32 floats of reductions
  float* sm_acc = smem;
  float* sm_red = smem + kGatherWarps * dim;

  const int64_t row = blockIdx.x;
  const int split = blockIdx.y, n_splits = gridDim.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane & (lpr - 1);
  const int group = threadIdx.x / lpr;
  const int n_groups = blockDim.x / lpr;
  const int start = split * cols_per_split;
  const int stop = min(start + cols_per_split, n_cols);

  float qv[E], acc[E];
#pragma unroll
  for (int v = 0; v < NV; ++v) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const int c = (sub + v * lpr) * VEC + i;
      qv[v * VEC + i] = c < dim ? query[row * dim + c] : 0.f;
      acc[v * VEC + i] = 0.f;
    }
  }
  float loss = 0.f, run_max = -INFINITY, run_sum = 0.f;
  const float log_z = EPI == kNce ? logf(*z) : 0.f;
  const IdxT* idx_row = idx + row * stride_idx;

  // Block-uniform trip count, so the group shuffles below never diverge.
  for (int base = start; base < stop; base += n_groups * U) {
    uint4 raw[U][NV];
    int cols[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      cols[u] = base + u * n_groups + group;
      const bool live = cols[u] < stop;
      const BankT* brow = bank + (live ? static_cast<int64_t>(idx_row[cols[u]]) : 0) * stride_bank;
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        raw[u][v] = live ? load_vec<BankT>(brow, (sub + v * lpr) * VEC, dim, vec_ok) : make_uint4(0u, 0u, 0u, 0u);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float w[E];
#pragma unroll
      for (int v = 0; v < NV; ++v) Vec16<BankT>::unpack(raw[u][v], w + v * VEC);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < E; ++i) dot = fmaf(w[i], qv[i], dot);
      for (int off = lpr >> 1; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      const int col = cols[u];
      if (col >= stop) continue;
      const float s = dot * inv_t;
      if (EPI == kScores) {
        if (sub == 0) out[row * n_cols + col] = s;
      } else if (EPI == kScoresBwd) {
        const float g = grad[row * n_cols + col] * inv_t;
#pragma unroll
        for (int i = 0; i < E; ++i) acc[i] = fmaf(g, w[i], acc[i]);
      } else if (EPI == kSoftmax) {
        const float new_max = fmaxf(run_max, s);
        const float scale = __expf(run_max - new_max);
        const float p = __expf(s - new_max);
        run_sum = run_sum * scale + p;
#pragma unroll
        for (int i = 0; i < E; ++i) acc[i] = fmaf(p, w[i], acc[i] * scale);
        run_max = new_max;
      } else {  // NCE in log space: log x = s - log Z; column 0 is the positive
        const bool is_pos = col == 0;
        const float log_x = s - log_z;
        const float t = is_pos ? log_c - log_x : log_x - log_c;
        const float sp = softplus(t);
        loss += is_pos ? sp : sp - log_mpn_c;
        const float sig = 1.f / (1.f + __expf(-t));
        const float g = (is_pos ? -sig : sig) * inv_t;
#pragma unroll
        for (int i = 0; i < E; ++i) acc[i] = fmaf(g, w[i], acc[i]);
      }
    }
  }
  if (EPI == kScores) return;

  const int64_t part = row * n_splits + split;
  if (EPI == kSoftmax) {
    // rescale every group to the block's max before summing
    float m = run_max;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    __syncthreads();
    if (lane == 0) sm_red[warp] = m;
    __syncthreads();
    float block_max = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) block_max = fmaxf(block_max, sm_red[w]);
    const float scale = run_max == -INFINITY ? 0.f : __expf(run_max - block_max);
    run_sum *= scale;
#pragma unroll
    for (int i = 0; i < E; ++i) acc[i] *= scale;
    loss = run_sum;  // summed below like the NCE loss
    if (threadIdx.x == 0) max_out[part] = block_max;
  }
  // dq summed over the groups in a fixed order, so that runs are bit-identical
  // (shared-memory atomics would add in whatever order the warps arrive): the
  // groups of a warp by a shuffle tree (lanes `off` apart hold the same
  // columns), then the warps' rows of sm_acc in warp order.
  for (int off = lpr; off < 32; off <<= 1) {
#pragma unroll
    for (int i = 0; i < E; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
  }
  if (lane < lpr) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const int c = (sub + v * lpr) * VEC + i;
        if (c < dim) sm_acc[warp * dim + c] = acc[v * VEC + i];
      }
    }
  }
  float total = 0.f;
  if (EPI == kNce || EPI == kSoftmax) total = block_sum(sub == 0 ? loss : 0.f, sm_red + 32);
  __syncthreads();
  for (int k = threadIdx.x; k < dim; k += blockDim.x) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kGatherWarps; ++w) sum += sm_acc[w * dim + k];
    dq[part * dim + k] = sum;
  }
  if (threadIdx.x == 0) {
    if (EPI == kNce) out[part] = total;
    if (EPI == kSoftmax) sum_out[part] = total;
  }
}

// NV (16-byte vectors per lane) and lanes per row for a row of `dim` elements.
template <typename BankT>
void gather_shape(int64_t dim, int* nv, int* lpr) {
  constexpr int VEC = Vec16<BankT>::n;
  const int64_t vectors = (dim + VEC - 1) / VEC;
  *nv = vectors <= 32 ? 1 : (vectors <= 64 ? 2 : (vectors <= 128 ? 4 : 8));
  const int64_t lanes = (vectors + *nv - 1) / *nv;
  int l = 1;
  while (l < lanes) l <<= 1;
  *lpr = l;
}

template <typename BankT, typename IdxT, int NV>
void launch_gather_nv(int epilogue, dim3 grid, size_t smem, cudaStream_t stream, const float* q, const BankT* bank,
                      const IdxT* idx, const float* z, const float* grad, float* out, float* dq, float* mx,
                      float* sm, int n_cols, int dim, int cols, int lpr, bool vec_ok, int64_t stride_bank,
                      int64_t stride_idx, float inv_t, float log_c, float log_mpn_c) {
#define RDK_GATHER(EPI)                                                                                        \
  do {                                                                                                        \
    auto kernel = bank_gather_kernel<BankT, IdxT, NV, EPI>;                                                   \
    RDK_LAUNCH(kernel, grid, kGatherThreads, smem, stream)(q, bank, idx, z, grad, out, dq, mx, sm, n_cols, dim, \
                                                           cols, lpr, vec_ok, stride_bank, stride_idx, inv_t,  \
                                                           log_c, log_mpn_c);                                 \
  } while (0)
  switch (epilogue) {
    case kNce: RDK_GATHER(kNce); break;
    case kSoftmax: RDK_GATHER(kSoftmax); break;
    case kScores: RDK_GATHER(kScores); break;
    case kScoresBwd: RDK_GATHER(kScoresBwd); break;
    default: throw std::runtime_error("rdkernels._C.bank_contrast: unknown epilogue code " + std::to_string(epilogue));
  }
#undef RDK_GATHER
}

template <typename BankT, typename IdxT>
void launch_gather(int epilogue, dim3 grid, cudaStream_t stream, const float* q, const void* bank, const void* idx,
                   const float* z, const float* grad, float* out, float* dq, float* mx, float* sm, int n_cols,
                   int dim, int cols, int64_t stride_bank, int64_t stride_idx, float inv_t, float log_c,
                   float log_mpn_c) {
  constexpr int VEC = Vec16<BankT>::n;
  int nv, lpr;
  gather_shape<BankT>(dim, &nv, &lpr);
  const bool vec_ok = dim % VEC == 0 && stride_bank % VEC == 0 && reinterpret_cast<uintptr_t>(bank) % 16 == 0;
  const size_t smem = (kGatherWarps * static_cast<size_t>(dim) + 32 + 32) * sizeof(float);
  auto* b = static_cast<const BankT*>(bank);
  auto* ix = static_cast<const IdxT*>(idx);
  // one launch per NV, the template argument the only difference
  auto launch = [&](auto nv_const) {
    launch_gather_nv<BankT, IdxT, decltype(nv_const)::value>(epilogue, grid, smem, stream, q, b, ix, z, grad, out,
                                                             dq, mx, sm, n_cols, dim, cols, lpr, vec_ok,
                                                             stride_bank, stride_idx, inv_t, log_c, log_mpn_c);
  };
  switch (nv) {
    case 1: launch(std::integral_constant<int, 1>{}); break;
    case 2: launch(std::integral_constant<int, 2>{}); break;
    case 4: launch(std::integral_constant<int, 4>{}); break;
    default:  // only fp32 rows need 8 vectors a lane (bf16 d <= 1024 fits in 4)
      if constexpr (sizeof(BankT) == 4) {
        launch(std::integral_constant<int, 8>{});
      } else {  // unreachable while dim <= 1024: refuse rather than leave the outputs unwritten
        throw std::runtime_error("bank_contrast: no gather kernel for a bf16 bank of this width");
      }
      break;
  }
}

}  // namespace

// Gather launch: grid (B, n_splits), 128 threads, dynamic smem (4 * dim + 64) floats.
void bank_contrast(uintptr_t query, uintptr_t bank, int bank_dtype, uintptr_t idx, int idx_dtype, uintptr_t z,
                   uintptr_t grad, uintptr_t out, uintptr_t dq, uintptr_t run_max, uintptr_t run_sum, int64_t batch,
                   int64_t n_cols, int64_t dim, int64_t cols_per_split, int64_t n_splits, int64_t stride_bank,
                   int64_t stride_idx, float inv_t, float log_c, float log_mpn_c, int epilogue, uintptr_t stream) {
  if (batch == 0 || n_cols == 0) return;
  if (dim > 1024) throw std::runtime_error("rdkernels._C.bank_contrast: dim must be <= 1024");
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(n_splits));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* q = reinterpret_cast<const float*>(query);
  auto* zp = reinterpret_cast<const float*>(z);
  auto* gp = reinterpret_cast<const float*>(grad);
  auto* op = reinterpret_cast<float*>(out);
  auto* dp = reinterpret_cast<float*>(dq);
  auto* mp = reinterpret_cast<float*>(run_max);
  auto* sp = reinterpret_cast<float*>(run_sum);
  const void* b = reinterpret_cast<const void*>(bank);
  const void* ix = reinterpret_cast<const void*>(idx);
  const int nc = static_cast<int>(n_cols), d = static_cast<int>(dim), cps = static_cast<int>(cols_per_split);
#define RDK_ARGS epilogue, grid, s, q, b, ix, zp, gp, op, dp, mp, sp, nc, d, cps, stride_bank, stride_idx, inv_t, log_c, log_mpn_c
  if (bank_dtype == kFloat32 && idx_dtype == kInt64) launch_gather<float, int64_t>(RDK_ARGS);
  else if (bank_dtype == kFloat32 && idx_dtype == kInt32) launch_gather<float, int32_t>(RDK_ARGS);
  else if (bank_dtype == kBFloat16 && idx_dtype == kInt64) launch_gather<__nv_bfloat16, int64_t>(RDK_ARGS);
  else if (bank_dtype == kBFloat16 && idx_dtype == kInt32) launch_gather<__nv_bfloat16, int32_t>(RDK_ARGS);
  else if (bank_dtype != kFloat32 && bank_dtype != kBFloat16) throw bad_dtype("bank", bank_dtype);
  else throw bad_dtype("idx", idx_dtype);
#undef RDK_ARGS
  check_launch("bank_contrast");
}

}  // namespace rdk
