// Batched log-domain Sinkhorn (rdkernels/ops/sinkhorn/reference.py is the contract).
//
//   f_i = -eps LSE_j(log b_j + (g_j - C_ij)/eps),   g_j = -eps LSE_i(log a_i + (f_i - C_ij)/eps)
//
// Register path (n, m <= 128): one CTA of 16 warps per problem runs every
// iteration with the cost tile in registers. Warp w owns rows [w R, w R + R),
// lane l columns l, l + 32, ..., so the row update (f) is a warp-shuffle
// log-sum-exp with no barrier; the column update (g) is a per-thread LSE over
// the warp's R rows, then a merge of the 16 warps' (max, sum) pairs through
// shared memory: two barriers per iteration (three with the convergence test).
//
// Fused path (other n, m <= 256): one CTA per problem runs every iteration. The cost
// tile is copied once into shared memory in its storage type (bf16 stays bf16,
// lossless); if an fp32 tile does not fit (256 x 256 x 4 B > 227 KiB), the rows
// that do not fit are read from global memory (L2) instead. The row update is a
// warp per row, the row's terms in registers, reduced max first, then the sum
// (shuffles only); the column update is a thread per column walking the rows
// with an online log-sum-exp (consecutive threads read consecutive columns: no
// bank conflicts). The row update also yields the row-marginal
// error of the current plan, sum_i a_i |exp(F_i - F_new_i) - 1|, so the
// convergence test is a block reduction per iteration and needs no host sync.
//
// Tiled path (larger problems): a row kernel (warp per row) and a column kernel
// (thread per column) per iteration, skipping problems whose done flag is set;
// the host loop lives in rdkernels/ops/sinkhorn/_driver.py.
#include <algorithm>

#include "common.cuh"
#include "sinkhorn.h"

namespace rdk {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxFused = 256;
constexpr int kLaneCols = kMaxFused / 32;  // the fused kernel's row terms per lane
// A finite "minus infinity": the running max starts here, so exp(max_old - max_new)
// never computes (-inf) - (-inf).
constexpr float kNegBig = -1e30f;

__device__ __forceinline__ void lse_add(float& mx, float& s, float x) {
  if (x > mx) {
    s = s * __expf(mx - x) + 1.f;
    mx = x;
  } else {
    s += __expf(x - mx);
  }
}

__device__ __forceinline__ void lse_merge(float& mx, float& s, float omx, float os) {
  const float nm = fmaxf(mx, omx);
  s = s * __expf(mx - nm) + os * __expf(omx - nm);
  mx = nm;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ void warp_lse(float& mx, float& s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float omx = __shfl_xor_sync(0xffffffffu, mx, offset);
    const float os = __shfl_xor_sync(0xffffffffu, s, offset);
    lse_merge(mx, s, omx, os);
  }
}

inline size_t fused_header_bytes(int64_t n, int64_t m) {
  // F, F_new, log a, a: n floats each; G, log b: m each; 32 floats of reduction scratch.
  const size_t bytes = (4 * n + 2 * m + 32) * sizeof(float);
  return (bytes + 15) / 16 * 16;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_fused_kernel(
    const T* __restrict__ cost, const float* __restrict__ log_a, const float* __restrict__ log_b,
    const float* __restrict__ a_in, float* __restrict__ f_out, float* __restrict__ g_out,
    float* __restrict__ total_out, float* __restrict__ plan_out, int* __restrict__ iters_out, int n, int m,
    float eps, float tol, int max_iters, int check, int rows_smem, size_t header) {
  RDK_DYNAMIC_SHARED(unsigned char, smem_raw);
  float* F = reinterpret_cast<float*>(smem_raw);
  float* Fn = F + n;
  float* la = Fn + n;
  float* a = la + n;
  float* G = a + n;
  float* lb = G + m;
  float* scratch = lb + m;
  T* tile = reinterpret_cast<T*>(smem_raw + header);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t p = blockIdx.x;
  const T* C = cost + p * n * m;
  const float inv_eps = 1.f / eps;
  const int lane_cols = (m + 31) / 32;  // a row's columns per lane

  for (int i = tid; i < n; i += kThreads) {
    F[i] = 0.f;
    la[i] = log_a[p * n + i];
    a[i] = a_in[p * n + i];
  }
  for (int j = tid; j < m; j += kThreads) {
    G[j] = 0.f;
    lb[j] = log_b[p * m + j];
  }
  for (int k = tid; k < rows_smem * m; k += kThreads) tile[k] = C[k];
  __syncthreads();

  auto c_at = [&](int i, int j) -> float {
    return to_float(i < rows_smem ? tile[i * m + j] : C[static_cast<int64_t>(i) * m + j]);
  };

  int it = 0;
  for (; it < max_iters; ++it) {
    float err_local = 0.f;
    for (int i = warp; i < n; i += kWarps) {
      // The row's terms stay in registers (m <= 256: at most 8 a lane), so the
      // log-sum-exp takes two passes, a max then a sum, whose warp reductions are
      // plain shuffles: an online merge would spend two exps per shuffle level,
      // more than the lane's own terms cost at m = 256.
      float x[kLaneCols];
      float mx = kNegBig;
#pragma unroll
      for (int c = 0; c < kLaneCols; ++c) {
        const int j = lane + 32 * c;
        // (c < lane_cols follows from j < m, but the uniform test is what keeps
        // ptxas from spilling x: 12 B on sm_90 with -lineinfo without it)
        x[c] = c < lane_cols && j < m ? lb[j] + G[j] - c_at(i, j) * inv_eps : kNegBig;
        mx = fmaxf(mx, x[c]);
      }
      mx = warp_max(mx);
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < kLaneCols; ++c) {
        if (c < lane_cols) s += __expf(x[c] - mx);  // uniform: a warp skips the columns past m
      }
      s = warp_sum(s);
      const float fn = -(mx + __logf(s));
      if (lane == 0) {
        Fn[i] = fn;
        err_local += a[i] * fabsf(__expf(F[i] - fn) - 1.f);
      }
    }
    if (check && it > 0) {
      // block_sum's barriers also publish Fn; every thread gets the same err.
      if (block_sum(err_local, scratch) <= tol) break;
    } else {
      __syncthreads();
    }
    float* t = F;  // commit F_new (uniform across the block)
    F = Fn;
    Fn = t;
    for (int j = tid; j < m; j += kThreads) {
      float mx = kNegBig, s = 0.f;
      for (int i = 0; i < n; ++i) lse_add(mx, s, la[i] + F[i] - c_at(i, j) * inv_eps);
      G[j] = -(mx + __logf(s));
    }
    __syncthreads();
  }

  float acc = 0.f;
  const int64_t nm = static_cast<int64_t>(n) * m;
  for (int64_t k = tid; k < nm; k += kThreads) {
    const int i = static_cast<int>(k / m), j = static_cast<int>(k % m);
    const float c = c_at(i, j);
    const float pl = __expf(la[i] + lb[j] + F[i] + G[j] - c * inv_eps);
    acc += pl * c;
    if (plan_out != nullptr) plan_out[p * nm + k] = pl;
  }
  const float total = block_sum(acc, scratch);
  if (tid == 0) {
    total_out[p] = total;
    iters_out[p] = it;
  }
  for (int i = tid; i < n; i += kThreads) f_out[p * n + i] = F[i] * eps;
  for (int j = tid; j < m; j += kThreads) g_out[p * m + j] = G[j] * eps;
}

// ---- register path ----------------------------------------------------------

constexpr int kRegWarps = 16;
constexpr int kRegThreads = kRegWarps * 32;
constexpr int kRegMaxRows = 8 * kRegWarps;  // R <= 8 rows per warp
constexpr int kRegMaxCols = 4 * 32;         // CPL <= 4 columns per lane

// R rows per warp (n <= 16 R), CPL columns per lane (m <= 32 CPL). Potentials are
// kept divided by eps; lbg_j = log b_j + G_j is what the row update needs.
template <typename T, int R, int CPL>
__global__ void __launch_bounds__(kRegThreads, 1) sinkhorn_regs_kernel(
    const T* __restrict__ cost, const float* __restrict__ log_a, const float* __restrict__ log_b,
    const float* __restrict__ a_in, float* __restrict__ f_out, float* __restrict__ g_out,
    float* __restrict__ total_out, float* __restrict__ plan_out, int* __restrict__ iters_out, int n, int m,
    float eps, float tol, int max_iters, int check) {
  constexpr int COLS = 32 * CPL;
  __shared__ float part_max[kRegWarps][COLS];
  __shared__ float part_sum[kRegWarps][COLS];
  __shared__ float lbg_sh[COLS];
  __shared__ float g_sh[COLS];
  __shared__ float red[kRegWarps];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t p = blockIdx.x;
  const int64_t nm = static_cast<int64_t>(n) * m;
  const T* C = cost + p * nm;
  const float inv_eps = 1.f / eps;

  float cs[R][CPL], la[R], av[R], F[R], lbg[CPL], lb[CPL];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = warp * R + r;
    la[r] = i < n ? log_a[p * n + i] : kNegBig;
    av[r] = i < n ? a_in[p * n + i] : 0.f;
    F[r] = 0.f;
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
      const int j = lane + 32 * c;
      cs[r][c] = (i < n && j < m) ? to_float(C[static_cast<int64_t>(i) * m + j]) * inv_eps : 0.f;
    }
  }
#pragma unroll
  for (int c = 0; c < CPL; ++c) {
    const int j = lane + 32 * c;
    lb[c] = j < m ? log_b[p * m + j] : kNegBig;
    lbg[c] = lb[c];  // G = 0
  }

  int it = 0;
  for (; it < max_iters; ++it) {
    // Row update: F_new_i = -LSE_j(lbg_j - C_ij / eps), a warp per R rows.
    float fn[R];
    float err = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float mx = kNegBig;
#pragma unroll
      for (int c = 0; c < CPL; ++c) mx = fmaxf(mx, lbg[c] - cs[r][c]);
      mx = warp_max(mx);
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < CPL; ++c) s += __expf(lbg[c] - cs[r][c] - mx);
      s = warp_sum(s);
      fn[r] = (warp * R + r < n) ? -(mx + __logf(s)) : 0.f;
      if (check) err += av[r] * fabsf(__expf(F[r] - fn[r]) - 1.f);  // an exp a row: only when it is read
    }
    if (check && it > 0) {
      // Row-marginal L1 error of the current plan; the same value in every thread.
      if (lane == 0) red[warp] = err;
      __syncthreads();
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kRegWarps; ++w) total += red[w];
      if (total <= tol) break;  // uniform across the block
    }
#pragma unroll
    for (int r = 0; r < R; ++r) F[r] = fn[r];
    // Column update: each thread's LSE over its warp's rows, then a merge across warps.
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
      float mx = kNegBig;
#pragma unroll
      for (int r = 0; r < R; ++r) mx = fmaxf(mx, la[r] + F[r] - cs[r][c]);
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < R; ++r) s += __expf(la[r] + F[r] - cs[r][c] - mx);
      part_max[warp][lane + 32 * c] = mx;
      part_sum[warp][lane + 32 * c] = s;
    }
    __syncthreads();
    if (threadIdx.x < COLS) {
      const int j = threadIdx.x;
      float mx = kNegBig;
#pragma unroll
      for (int w = 0; w < kRegWarps; ++w) mx = fmaxf(mx, part_max[w][j]);
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kRegWarps; ++w) s += part_sum[w][j] * __expf(part_max[w][j] - mx);
      const float g = -(mx + __logf(s));
      g_sh[j] = g;
      lbg_sh[j] = j < m ? log_b[p * m + j] + g : kNegBig;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < CPL; ++c) lbg[c] = lbg_sh[lane + 32 * c];
  }

  // <plan, C>, the plan on request, and the potentials.
  float acc = 0.f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = warp * R + r;
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
      const int j = lane + 32 * c;
      if (i < n && j < m) {
        const float pl = __expf(la[r] + F[r] + lbg[c] - cs[r][c]);
        acc += pl * cs[r][c] * eps;
        if (plan_out != nullptr) plan_out[p * nm + static_cast<int64_t>(i) * m + j] = pl;
      }
    }
  }
  acc = warp_sum(acc);
  __syncthreads();  // red may still be read by the last convergence test
  if (lane == 0) red[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kRegWarps; ++w) total += red[w];
    total_out[p] = total;
    iters_out[p] = it;
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = warp * R + r;
    if (lane == 0 && i < n) f_out[p * n + i] = F[r] * eps;
  }
  for (int j = threadIdx.x; j < m; j += kRegThreads) g_out[p * m + j] = (it == 0 ? 0.f : g_sh[j]) * eps;
}

template <typename T, int R, int CPL>
void launch_regs(const void* cost, const float* log_a, const float* log_b, const float* a, float* f, float* g,
                 float* total, float* plan, int* n_iters, int64_t P, int64_t n, int64_t m, float eps, float tol,
                 int64_t max_iters, bool check, cudaStream_t stream) {
  auto kernel = sinkhorn_regs_kernel<T, R, CPL>;
  RDK_LAUNCH(kernel, static_cast<unsigned>(P), kRegThreads, 0, stream)(
      static_cast<const T*>(cost), log_a, log_b, a, f, g, total, plan, n_iters, static_cast<int>(n),
      static_cast<int>(m), eps, tol, static_cast<int>(max_iters), check ? 1 : 0);
}

template <typename T, int R>
void launch_regs_cols(const void* cost, const float* log_a, const float* log_b, const float* a, float* f,
                      float* g, float* total, float* plan, int* n_iters, int64_t P, int64_t n, int64_t m, float eps,
                      float tol, int64_t max_iters, bool check, cudaStream_t stream) {
  if (m <= 32) {
    launch_regs<T, R, 1>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  } else if (m <= 64) {
    launch_regs<T, R, 2>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  } else {
    launch_regs<T, R, 4>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  }
}

template <typename T>
void launch_registers(const void* cost, const float* log_a, const float* log_b, const float* a, float* f, float* g,
                      float* total, float* plan, int* n_iters, int64_t P, int64_t n, int64_t m, float eps, float tol,
                      int64_t max_iters, bool check, cudaStream_t stream) {
  if (n <= 2 * kRegWarps) {
    launch_regs_cols<T, 2>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  } else if (n <= 4 * kRegWarps) {
    launch_regs_cols<T, 4>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  } else {
    launch_regs_cols<T, 8>(cost, log_a, log_b, a, f, g, total, plan, n_iters, P, n, m, eps, tol, max_iters, check, stream);
  }
}

// ---- tiled path -------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_rows_kernel(
    const T* __restrict__ cost, const float* __restrict__ log_b, const float* __restrict__ G,
    const float* __restrict__ F, float* __restrict__ F_new, const float* __restrict__ a,
    float* __restrict__ err, const int* __restrict__ done, int64_t n, int64_t m, float inv_eps, int check, int64_t p_first) {
  const int64_t p = p_first + blockIdx.y;
  if (done[p]) return;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= n) return;
  const T* row = cost + (p * n + i) * m;
  const float* lb = log_b + p * m;
  const float* g = G + p * m;
  float mx = kNegBig, s = 0.f;
  for (int64_t j = lane; j < m; j += 32) lse_add(mx, s, lb[j] + g[j] - to_float(row[j]) * inv_eps);
  warp_lse(mx, s);
  if (lane == 0) {
    const float fn = -(mx + __logf(s));
    F_new[p * n + i] = fn;
    if (check) err[p * n + i] = a[p * n + i] * fabsf(__expf(F[p * n + i] - fn) - 1.f);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_cols_kernel(
    const T* __restrict__ cost, const float* __restrict__ log_a, const float* __restrict__ F,
    float* __restrict__ G, const int* __restrict__ done, int64_t n, int64_t m, float inv_eps, int64_t p_first) {
  __shared__ float u[kThreads];  // log a_i + F_i for a chunk of rows
  const int64_t p = p_first + blockIdx.y;
  if (done[p]) return;  // uniform across the block: safe before the barriers below
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const T* C = cost + p * n * m;
  float mx = kNegBig, s = 0.f;
  for (int64_t i0 = 0; i0 < n; i0 += kThreads) {
    const int64_t rows = (n - i0) < kThreads ? (n - i0) : kThreads;
    __syncthreads();
    if (threadIdx.x < rows) u[threadIdx.x] = log_a[p * n + i0 + threadIdx.x] + F[p * n + i0 + threadIdx.x];
    __syncthreads();
    if (j < m) {
      for (int64_t r = 0; r < rows; ++r) lse_add(mx, s, u[r] - to_float(C[(i0 + r) * m + j]) * inv_eps);
    }
  }
  if (j < m) G[p * m + j] = -(mx + __logf(s));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_plan_cost_kernel(
    const T* __restrict__ cost, const float* __restrict__ log_a, const float* __restrict__ log_b,
    const float* __restrict__ F, const float* __restrict__ G, float* __restrict__ rowcost,
    float* __restrict__ plan, int64_t n, int64_t m, float inv_eps, int64_t p_first) {
  const int64_t p = p_first + blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (i >= n) return;
  const T* row = cost + (p * n + i) * m;
  const float u = log_a[p * n + i] + F[p * n + i];
  float acc = 0.f;
  for (int64_t j = lane; j < m; j += 32) {
    const float c = to_float(row[j]);
    const float pl = __expf(u + log_b[p * m + j] + G[p * m + j] - c * inv_eps);
    acc += pl * c;
    if (plan != nullptr) plan[(p * n + i) * m + j] = pl;
  }
  acc = warp_sum(acc);
  if (lane == 0) rowcost[p * n + i] = acc;
}

template <typename T>
void launch_fused(const void* cost, const float* log_a, const float* log_b, const float* a, float* f, float* g,
                  float* total, float* plan, int* n_iters, int64_t P, int64_t n, int64_t m, float eps, float tol,
                  int64_t max_iters, bool check, cudaStream_t stream) {
  const int optin = max_shared_memory_per_block();
  const size_t header = fused_header_bytes(n, m);
  const size_t row_bytes = static_cast<size_t>(m) * sizeof(T);
  const int64_t fit = optin > static_cast<int>(header) ? (optin - header) / row_bytes : 0;
  const int rows_smem = static_cast<int>(std::min<int64_t>(n, fit));
  const size_t smem = header + static_cast<size_t>(rows_smem) * row_bytes;
  auto kernel = sinkhorn_fused_kernel<T>;
  reserve_shared_memory(kernel, smem, "sinkhorn");
  RDK_LAUNCH(kernel, static_cast<unsigned>(P), kThreads, smem, stream)(
      static_cast<const T*>(cost), log_a, log_b, a, f, g, total, plan, n_iters, static_cast<int>(n),
      static_cast<int>(m), eps, tol, static_cast<int>(max_iters), check ? 1 : 0, rows_smem, header);
}

// The tiled kernels put problems on grid y, which holds at most 65535 blocks:
// a larger batch takes one launch per chunk of problems, each told its first.
constexpr int64_t kMaxGridY = 65535;

template <typename Launch>
void for_problem_chunks(int64_t problems, Launch&& launch) {
  for (int64_t first = 0; first < problems; first += kMaxGridY) {
    launch(first, static_cast<unsigned>(std::min(kMaxGridY, problems - first)));
  }
}

}  // namespace

#define RDK_DISPATCH_COST(dtype, T, ...)                             \
  switch (dtype) {                                                   \
    case kFloat32: { using T = float; __VA_ARGS__; break; }          \
    case kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__; break; } \
    case kFloat16: { using T = __half; __VA_ARGS__; break; }         \
    default: throw bad_dtype("cost", dtype);                         \
  }

void sinkhorn(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t log_b, uintptr_t a, uintptr_t f,
              uintptr_t g, uintptr_t total, uintptr_t plan, uintptr_t n_iters, int64_t problems, int64_t n,
              int64_t m, float eps, float tol, int64_t max_iters, bool check, bool registers, uintptr_t stream) {
  if (problems == 0) return;
  if (n > kMaxFused || m > kMaxFused) throw std::runtime_error("sinkhorn: the fused kernel needs n, m <= 256");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* la = reinterpret_cast<const float*>(log_a);
  auto* lb = reinterpret_cast<const float*>(log_b);
  auto* ap = reinterpret_cast<const float*>(a);
  auto* fp = reinterpret_cast<float*>(f);
  auto* gp = reinterpret_cast<float*>(g);
  auto* tp = reinterpret_cast<float*>(total);
  auto* pp = reinterpret_cast<float*>(plan);
  auto* ip = reinterpret_cast<int*>(n_iters);
  const void* c = reinterpret_cast<const void*>(cost);
  if (registers && n <= kRegMaxRows && m <= kRegMaxCols) {
    RDK_DISPATCH_COST(cost_dtype, T,
        launch_registers<T>(c, la, lb, ap, fp, gp, tp, pp, ip, problems, n, m, eps, tol, max_iters, check, s))
  } else {
    RDK_DISPATCH_COST(cost_dtype, T,
        launch_fused<T>(c, la, lb, ap, fp, gp, tp, pp, ip, problems, n, m, eps, tol, max_iters, check, s))
  }
  check_launch("sinkhorn");
}


void sinkhorn_rows(uintptr_t cost, int cost_dtype, uintptr_t log_b, uintptr_t G, uintptr_t F, uintptr_t F_new,
                   uintptr_t a, uintptr_t err, uintptr_t done, int64_t problems, int64_t n, int64_t m,
                   float inv_eps, bool check, uintptr_t stream) {
  if (problems == 0 || n == 0) return;
  const auto row_blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  for_problem_chunks(problems, [&](int64_t first, unsigned count) {
    RDK_DISPATCH_COST(cost_dtype, T,
        RDK_LAUNCH(sinkhorn_rows_kernel<T>, dim3(row_blocks, count), kThreads, 0, s)(
            reinterpret_cast<const T*>(cost), reinterpret_cast<const float*>(log_b),
            reinterpret_cast<const float*>(G), reinterpret_cast<const float*>(F), reinterpret_cast<float*>(F_new),
            reinterpret_cast<const float*>(a), reinterpret_cast<float*>(err), reinterpret_cast<const int*>(done), n,
            m, inv_eps, check ? 1 : 0, first))
  });
  check_launch("sinkhorn_rows");
}

void sinkhorn_cols(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t F, uintptr_t G, uintptr_t done,
                   int64_t problems, int64_t n, int64_t m, float inv_eps, uintptr_t stream) {
  if (problems == 0 || m == 0) return;
  const auto col_blocks = static_cast<unsigned>((m + kThreads - 1) / kThreads);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  for_problem_chunks(problems, [&](int64_t first, unsigned count) {
    RDK_DISPATCH_COST(cost_dtype, T,
        RDK_LAUNCH(sinkhorn_cols_kernel<T>, dim3(col_blocks, count), kThreads, 0, s)(
            reinterpret_cast<const T*>(cost), reinterpret_cast<const float*>(log_a),
            reinterpret_cast<const float*>(F), reinterpret_cast<float*>(G), reinterpret_cast<const int*>(done), n, m,
            inv_eps, first))
  });
  check_launch("sinkhorn_cols");
}

void sinkhorn_plan_cost(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t log_b, uintptr_t F, uintptr_t G,
                        uintptr_t rowcost, uintptr_t plan, int64_t problems, int64_t n, int64_t m, float inv_eps,
                        uintptr_t stream) {
  if (problems == 0 || n == 0) return;
  const auto row_blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  for_problem_chunks(problems, [&](int64_t first, unsigned count) {
    RDK_DISPATCH_COST(cost_dtype, T,
        RDK_LAUNCH(sinkhorn_plan_cost_kernel<T>, dim3(row_blocks, count), kThreads, 0, s)(
            reinterpret_cast<const T*>(cost), reinterpret_cast<const float*>(log_a),
            reinterpret_cast<const float*>(log_b), reinterpret_cast<const float*>(F),
            reinterpret_cast<const float*>(G), reinterpret_cast<float*>(rowcost), reinterpret_cast<float*>(plan), n,
            m, inv_eps, first))
  });
  check_launch("sinkhorn_plan_cost");
}

#undef RDK_DISPATCH_COST

}  // namespace rdk
