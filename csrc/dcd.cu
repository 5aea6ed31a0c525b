// DCD loss, both terms and all gradients: five launches of one call, no atomics.
//
// L = scale * S + bias, S = z_s z_t^T (B x B). Everything the loss and its gradient need is
// a row or column sum of an elementwise function of L[a, b] and L[b, a] (the formulas:
// rdkernels/ops/dcd/reference.py), so the launches follow the Triton kernels'
// (rdkernels/ops/dcd/triton.py), with fp32 FMA tiles where those take 3xTF32 dots:
//
// 1. dcd_similarity_kernel, a block per 64 x 64 tile (I, J) of S: the tile into S and,
//    transposed through shared memory, into S^T (so every later read is a row read), and
//    the tile's log-sum-exp partials of L's rows over J and of L's columns over I.
// 2. dcd_lse_kernel merges each row's and column's partials: R (rows), C (columns).
// 3. dcd_stats_kernel, a warp per column b of L walking its rows a (rows b of S^T and S):
//      KL_b = sum_a Qc[a, b] g[a, b],  g[a, b] = (L[a, b] - C_b) - (L[b, a] - R_b),
//    CE on the diagonal, and for the gradient sum_a Qc S, sum_a Qc and the sums of G' S and
//    G', where G' is dloss/dL without its KL term, which nothing knows before this launch:
//      G[a, b] = G'[a, b] - alpha / B * Qc[a, b] * KL_b.
// 4. dcd_grad_kernel, a block per 32 rows and 64 columns of dz_s = scale G z_t or of
//    dz_t = scale G^T z_s: walks the batch in steps of 32, rebuilding each G tile from S,
//    S^T, R, C and KL into shared memory beside the step's rows of z.
// 5. dcd_finish_kernel (one warp) sums the columns' statistics into the loss, d tau
//    (through the clamp of exp(tau)) and d bias.
//
// Launches 1 and 4 fetch each step's global reads a step ahead into registers, so that they are
// in flight while the block multiplies the step before.
//
// Every sum runs in a fixed order: deterministic. The scratch is S and S^T (2 B^2 floats,
// 8 MB at B = 1024, L2-resident on an A100 or H100) and a few floats a row; shared memory
// is static (under 48 KB), so any batch size and width runs on any GPU.
//
// Why not the single pass over [16, B] logit strips in shared memory that this replaced:
// its B / 16 blocks (4 at B = 64, 64 at B = 1024) each walked every column, a thread per
// column reading its own rows of z, and it took 0.51 ms at B = 1024 (fwd + bwd, H100)
// where Triton's tiles take 0.09 ms; it also held the strips in shared memory, so B was
// capped at 1024 (about 660 on a 99 KB GPU). Here launch 1 runs (B / 64)^2 blocks, launch
// 3 B / 8 and launch 4 B / 8 (d = 128: two column blocks, two sides).
#include "common.cuh"
#include "dcd.h"

#include <cmath>

namespace rdk {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;         // S tiles: kTile x kTile, 16 x 16 threads of 4 x 4 outputs
constexpr int kStep = 16;         // ... over the width in steps of kStep
constexpr int kPad = 4;           // row padding of the k-major operand tiles (float4-aligned rows)
constexpr int kStatWarps = kThreads / 32;   // launch 3: a warp per column of L
constexpr int kGradRows = 32;     // launch 4: 32 output rows x 64 columns, 16 x 16 threads of 2 x 4
constexpr int kGradCols = 64;
constexpr int kGradStep = 32;     // ... over the batch in steps of kGradStep
constexpr int kAlign = 64;        // scratch segments start on 256-byte boundaries

static_assert(kTile == 4 * 16 && kGradCols == 4 * 16 && kGradRows == 2 * 16, "16 x 16 thread grids");

// scale = min(exp(tau), max_scale), NaN for a NaN tau as torch.clamp gives (fminf
// returns the other operand for a NaN one). nvcc's --use_fast_math keeps the isnan
// test (in the PTX, |e| > inf as an unordered compare, setp.gtu, true only for NaN):
// it flushes denormals and approximates division, sqrt and exp, but does not
// assume finite math.
__device__ __forceinline__ float clamped_scale(float e, float max_scale) {
  return isnan(e) ? e : fminf(e, max_scale);
}

__device__ __forceinline__ float group_max(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float group_sum(float v, int width) {
  for (int offset = width / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The (max, sum of exp(l - max)) partial of a group of lanes' logits (-inf where masked):
// (-inf, 0) for an all-masked group.
template <int N>
__device__ __forceinline__ void lse_partial(const float (&l)[N], int width, float& m, float& s) {
  m = -INFINITY;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, l[i]);
  m = group_max(m, width);
  const float safe = m == -INFINITY ? 0.f : m;
  s = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) s += __expf(l[i] - safe);
  s = group_sum(s, width);
}

// dloss/dL[a, b] from L[a, b], L[b, a], the row and column log-sum-exps of a and b, and
// KL_b (reference.py): row softmax P, column softmax Qc.
__device__ __forceinline__ float grad_element(float l_ab, float l_ba, float r_a, float c_a, float r_b, float c_b,
                                              float kl_b, bool diagonal, float alpha, float inv_b) {
  const float p = __expf(l_ab - r_a);
  const float log_q = l_ab - c_b;
  const float q = __expf(log_q);
  const float q_ba = __expf(l_ba - c_a);
  const float g = log_q - (l_ba - r_b);
  return ((1.f + alpha) * p - (diagonal ? 1.f : 0.f) - alpha * q_ba + alpha * q * (g - kl_b)) * inv_b;
}

struct Layout {  // float offsets into the scratch
  int64_t n_tiles, ld, sim, part, lse, col, total;
};

__host__ __device__ inline int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// S, then S^T: [2, ld, ld] | partials [2 (rows, columns), 2 (max, sum), n_tiles, ld] | R, C: [2, ld] |
// per column b of L: [6, ld] = KL, sum Qc S, sum Qc, CE, sum G'S, sum G'.
__host__ __device__ inline Layout layout(int64_t batch) {
  Layout s;
  s.n_tiles = (batch + kTile - 1) / kTile;
  s.ld = s.n_tiles * kTile;
  s.sim = 0;
  s.part = aligned(2 * s.ld * s.ld);
  s.lse = s.part + aligned(4 * s.n_tiles * s.ld);
  s.col = s.lse + aligned(2 * s.ld);
  s.total = s.col + aligned(6 * s.ld);
  return s;
}

enum Column { kKl = 0, kQcS, kQc, kCe, kGS, kG, kColumns };

constexpr int kTileLoads = kTile * kStep / kThreads;  // values of each operand a thread loads per step

// A thread's share of kTile rows x kStep columns of z from (row0, k0), as fp32 (zeros past the
// batch or the width). Global reads run along a row. Fetched a step ahead, into registers, so
// the loads are in flight while the block multiplies the step before.
template <typename T>
__device__ __forceinline__ void fetch_step(float (&v)[kTileLoads], const T* __restrict__ z, int batch, int dim,
                                           int row0, int k0) {
#pragma unroll
  for (int i = 0; i < kTileLoads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int r = idx / kStep, k = idx % kStep;
    const bool ok = row0 + r < batch && k0 + k < dim;
    v[i] = ok ? to_float(z[static_cast<int64_t>(row0 + r) * dim + k0 + k]) : 0.f;
  }
}

// ... then into shared memory k-major, dst[k][row], for the products' row vectors.
__device__ __forceinline__ void store_k_major(float (*dst)[kTile + kPad], const float (&v)[kTileLoads]) {
#pragma unroll
  for (int i = 0; i < kTileLoads; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    dst[idx % kStep][idx / kStep] = v[i];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    dcd_similarity_kernel(const T* __restrict__ z_s, const T* __restrict__ z_t, int batch, int dim,
                          const float* __restrict__ tau, const float* __restrict__ bias_ptr, float max_scale,
                          float* __restrict__ scratch) {
  // the operand tiles of the product, then (reused) the result tile, for its transpose
  __shared__ __align__(16) float smem[kTile * (kTile + 1)];
  static_assert(2 * kStep * (kTile + kPad) <= kTile * (kTile + 1), "operand tiles fit the result tile");
  auto as = reinterpret_cast<float(*)[kTile + kPad]>(smem);
  auto bs = reinterpret_cast<float(*)[kTile + kPad]>(smem + kStep * (kTile + kPad));
  auto tile = reinterpret_cast<float(*)[kTile + 1]>(smem);

  const Layout lay = layout(batch);
  const int64_t ld = lay.ld;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int row0 = blockIdx.y * kTile, col0 = blockIdx.x * kTile;
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;

  float acc[4][4] = {};
  float a_next[kTileLoads], b_next[kTileLoads];
  fetch_step(a_next, z_s, batch, dim, row0, 0);
  fetch_step(b_next, z_t, batch, dim, col0, 0);
  for (int k0 = 0; k0 < dim; k0 += kStep) {
    store_k_major(as, a_next);
    store_k_major(bs, b_next);
    __syncthreads();
    if (k0 + kStep < dim) {
      fetch_step(a_next, z_s, batch, dim, row0, k0 + kStep);
      fetch_step(b_next, z_t, batch, dim, col0, k0 + kStep);
    }
#pragma unroll
    for (int k = 0; k < kStep; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(&as[k][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&bs[k][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();  // the next step overwrites the operand tiles
  }

  float* sim = scratch + lay.sim;
  float* part = scratch + lay.part;
  const int64_t plane = lay.n_tiles * ld;  // one [n_tiles, ld] plane of partials
  // S (whole tiles: ld is a multiple of kTile) and the rows' partials over this tile's columns
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + ty * 4 + i;
    *reinterpret_cast<float4*>(sim + r * ld + col0 + tx * 4) = make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    float l[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      l[j] = (r < batch && col0 + tx * 4 + j < batch) ? acc[i][j] * scale + bias : -INFINITY;
    }
    float m, s;
    lse_partial(l, 16, m, s);  // over the 16 lanes of this row (lane = 16 * (ty % 2) + tx)
    if (tx == 0) {
      part[blockIdx.x * ld + r] = m;
      part[plane + blockIdx.x * ld + r] = s;
    }
    tile[ty * 4 + i][tx * 4 + 0] = acc[i][0];  // the operand tiles are free: the loop ended on a barrier
    tile[ty * 4 + i][tx * 4 + 1] = acc[i][1];
    tile[ty * 4 + i][tx * 4 + 2] = acc[i][2];
    tile[ty * 4 + i][tx * 4 + 3] = acc[i][3];
  }
  __syncthreads();
  // S^T's tile, a row of it per 64 consecutive threads (the odd stride reads a column conflict-free)
  float* sim_t = sim + ld * ld;
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kThreads) {
    const int c = idx / kTile, r = idx % kTile;
    sim_t[(col0 + c) * ld + row0 + r] = tile[r][c];
  }
  // the columns' partials over this tile's rows: 4 lanes a column, 16 rows each
  const int c = threadIdx.x / 4, quarter = threadIdx.x % 4;
  float l[kTile / 4];
#pragma unroll
  for (int i = 0; i < kTile / 4; ++i) {
    const int r = quarter * (kTile / 4) + i;
    l[i] = (row0 + r < batch && col0 + c < batch) ? tile[r][c] * scale + bias : -INFINITY;
  }
  float m, s;
  lse_partial(l, 4, m, s);
  if (quarter == 0) {
    part[2 * plane + blockIdx.y * ld + col0 + c] = m;
    part[3 * plane + blockIdx.y * ld + col0 + c] = s;
  }
}

// R[b] and C[b] from the tiles' partials (0 past the batch).
__global__ void __launch_bounds__(kThreads) dcd_lse_kernel(int batch, float* __restrict__ scratch) {
  const Layout lay = layout(batch);
  const int b = blockIdx.x * kThreads + threadIdx.x;
  if (b >= lay.ld) return;
  const int64_t plane = lay.n_tiles * lay.ld;
  const float* part = scratch + lay.part;
#pragma unroll
  for (int side = 0; side < 2; ++side) {
    const float* maxima = part + 2 * side * plane + b;
    const float* sums = maxima + plane;
    float m = -INFINITY;
    for (int t = 0; t < lay.n_tiles; ++t) m = fmaxf(m, maxima[t * lay.ld]);
    float s = 0.f;
    for (int t = 0; t < lay.n_tiles; ++t) s += sums[t * lay.ld] * __expf(maxima[t * lay.ld] - m);
    scratch[lay.lse + side * lay.ld + b] = b < batch ? m + __logf(s) : 0.f;
  }
}

template <bool NEED_GRAD>
__global__ void __launch_bounds__(kThreads)
    dcd_stats_kernel(int batch, const float* __restrict__ tau, const float* __restrict__ bias_ptr, float max_scale,
                     float alpha, float* __restrict__ scratch) {
  const Layout lay = layout(batch);
  const int64_t ld = lay.ld;
  const int lane = threadIdx.x % 32;
  const int b = blockIdx.x * kStatWarps + threadIdx.x / 32;
  if (b >= batch) return;  // a whole warp: no barrier follows
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;
  const float inv_b = 1.f / static_cast<float>(batch);
  const float* lse_r = scratch + lay.lse;
  const float* lse_c = lse_r + ld;
  const float r_b = lse_r[b], c_b = lse_c[b];
  const float* s_row = scratch + lay.sim + b * ld;     // S[b, a]: L[b, a]
  const float* st_row = s_row + ld * ld;               // S^T[b, a] = S[a, b]: L[a, b]
  float kl = 0.f, qs = 0.f, qsum = 0.f, gs = 0.f, g = 0.f;
#pragma unroll 4  // independent steps: four steps' loads in flight at once
  for (int a = lane; a < batch; a += 32) {
    const float s_ab = st_row[a];
    const float l_ab = s_ab * scale + bias, l_ba = s_row[a] * scale + bias;
    const float log_q = l_ab - c_b;
    const float q = __expf(log_q);
    kl += q * (log_q - (l_ba - r_b));
    if (NEED_GRAD) {
      qs += q * s_ab;
      qsum += q;
      const float gp = grad_element(l_ab, l_ba, lse_r[a], lse_c[a], r_b, c_b, 0.f, a == b, alpha, inv_b);
      gs += gp * s_ab;
      g += gp;
    }
  }
  kl = warp_sum(kl);
  if (NEED_GRAD) {
    qs = warp_sum(qs);
    qsum = warp_sum(qsum);
    gs = warp_sum(gs);
    g = warp_sum(g);
  }
  if (lane == 0) {
    float* col = scratch + lay.col + b;
    col[kKl * ld] = kl;
    col[kCe * ld] = r_b - (s_row[b] * scale + bias);
    col[kQcS * ld] = qs;
    col[kQc * ld] = qsum;
    col[kGS * ld] = gs;
    col[kG * ld] = g;
  }
}

constexpr int kGradEntries = kGradRows * kGradStep / kThreads;  // G entries a thread builds per step
constexpr int kGradLoads = kGradStep * kGradCols / kThreads;     // z values a thread loads per step

// What a thread reads to build its G entries of one step of dcd_grad_kernel's walk, fetched a
// step ahead into registers: the loads are in flight while the block multiplies the step
// before. (The step's rows of z go straight to shared memory at its start: prefetching them
// too took ptxas past the 128 registers of two blocks an SM, into spills.) The
// entries lie in one walk column, x = x0 + lane, and rows own0 + warp + 8 i.
struct GradStep {
  float first[kGradEntries], second[kGradEntries];  // S or S^T at (own, x): L[a, b] and L[b, a]
  float r, c, kl;                                   // R, C and KL of the walk's x
};

__device__ __forceinline__ void fetch_grad_step(GradStep& s, const float* __restrict__ first,
                                                const float* __restrict__ second, const float* __restrict__ lse_r,
                                                const float* __restrict__ lse_c, const float* __restrict__ kl,
                                                int batch, int64_t ld, int own0, int x0) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int x = x0 + lane;
  const bool x_ok = x < batch;
  s.r = x_ok ? lse_r[x] : 0.f;
  s.c = x_ok ? lse_c[x] : 0.f;
  s.kl = x_ok ? kl[x] : 0.f;
#pragma unroll
  for (int i = 0; i < kGradEntries; ++i) {
    const int own = own0 + warp + kStatWarps * i;
    const bool ok = x_ok && own < batch;
    s.first[i] = ok ? first[own * ld + x] : 0.f;
    s.second[i] = ok ? second[own * ld + x] : 0.f;
  }
}

// blockIdx.z = 0: dz_s[own] = scale sum_b G[own, b] z_t[b] (G[own, b] from S[own, b], S^T[own, b]);
//            = 1: dz_t[own] = scale sum_a G[a, own] z_s[a] (G[a, own] from S^T[own, a], S[own, a]).
// (kThreads, 2): two blocks an SM (128 registers a thread) hide each other's step barriers.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    dcd_grad_kernel(const T* __restrict__ z_s, const T* __restrict__ z_t, int batch, int dim,
                    const float* __restrict__ tau, const float* __restrict__ bias_ptr, float max_scale, float alpha,
                    const float* __restrict__ scratch, float* __restrict__ dzs, float* __restrict__ dzt) {
  __shared__ float gs[kGradStep][kGradRows + 1];                    // G^T of the step: [walk][own]
  __shared__ __align__(16) float zs[kGradStep][kGradCols + kPad];   // the step's rows of z: [walk][column]
  static_assert(kGradRows == kStatWarps * kGradEntries && kGradStep == 32, "a warp's entries: one walk column");
  const Layout lay = layout(batch);
  const int64_t ld = lay.ld;
  const bool dz_t = blockIdx.z == 1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int own0 = blockIdx.x * kGradRows, col0 = blockIdx.y * kGradCols;
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;
  const float inv_b = 1.f / static_cast<float>(batch);
  const float* lse_r = scratch + lay.lse;
  const float* lse_c = lse_r + ld;
  const float* kl = scratch + lay.col + kKl * ld;
  const float* first = scratch + lay.sim + (dz_t ? ld * ld : 0);   // rows give L[a, b] (a: the G row)
  const float* second = scratch + lay.sim + (dz_t ? 0 : ld * ld);  // ... and L[b, a]
  const T* z = dz_t ? z_s : z_t;

  // the own rows' R, C, KL: (a) for dz_s, (b) for dz_t
  float own_r[kGradEntries], own_c[kGradEntries], own_kl[kGradEntries];
#pragma unroll
  for (int i = 0; i < kGradEntries; ++i) {
    const int own = own0 + warp + kStatWarps * i;
    own_r[i] = own < batch ? lse_r[own] : 0.f;
    own_c[i] = own < batch ? lse_c[own] : 0.f;
    own_kl[i] = own < batch ? kl[own] : 0.f;
  }
  GradStep step;
  fetch_grad_step(step, first, second, lse_r, lse_c, kl, batch, ld, own0, 0);
  float acc[2][4] = {};
  for (int x0 = 0; x0 < batch; x0 += kGradStep) {
    const int x = x0 + lane;
#pragma unroll
    for (int i = 0; i < kGradEntries; ++i) {
      const int own = own0 + warp + kStatWarps * i;
      float v = 0.f;
      if (own < batch && x < batch) {
        const float l_ab = step.first[i] * scale + bias, l_ba = step.second[i] * scale + bias;
        v = dz_t ? grad_element(l_ab, l_ba, step.r, step.c, own_r[i], own_c[i], own_kl[i], own == x, alpha, inv_b)
                 : grad_element(l_ab, l_ba, own_r[i], own_c[i], step.r, step.c, step.kl, own == x, alpha, inv_b);
      }
      gs[lane][warp + kStatWarps * i] = v;
    }
#pragma unroll
    for (int i = 0; i < kGradLoads; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      const int w = idx / kGradCols, c = idx % kGradCols;
      const bool ok = x0 + w < batch && col0 + c < dim;
      zs[w][c] = ok ? to_float(z[static_cast<int64_t>(x0 + w) * dim + col0 + c]) : 0.f;
    }
    __syncthreads();
    if (x0 + kGradStep < batch) {
      fetch_grad_step(step, first, second, lse_r, lse_c, kl, batch, ld, own0, x0 + kGradStep);
    }
#pragma unroll
    for (int w = 0; w < kGradStep; ++w) {
      const float a0 = gs[w][ty * 2], a1 = gs[w][ty * 2 + 1];
      const float4 v = *reinterpret_cast<const float4*>(&zs[w][tx * 4]);
      const float zv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[0][j] = fmaf(a0, zv[j], acc[0][j]);
        acc[1][j] = fmaf(a1, zv[j], acc[1][j]);
      }
    }
    __syncthreads();  // the next step overwrites both tiles
  }
  float* out = dz_t ? dzt : dzs;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int own = own0 + ty * 2 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = col0 + tx * 4 + j;
      if (own < batch && c < dim) out[static_cast<int64_t>(own) * dim + c] = acc[i][j] * scale;
    }
  }
}

// One warp: the loss and, with the gradient, d tau and d bias from the columns' statistics.
__global__ void __launch_bounds__(32)
    dcd_finish_kernel(int batch, const float* __restrict__ tau, float max_scale, float alpha,
                      const float* __restrict__ scratch, float* __restrict__ loss, float* __restrict__ dtau,
                      float* __restrict__ dbias) {
  const Layout lay = layout(batch);
  const float* col = scratch + lay.col;
  const int64_t ld = lay.ld;
  float ce = 0.f, kl = 0.f, gs = 0.f, g = 0.f, kl_qs = 0.f, kl_q = 0.f;
  for (int b = threadIdx.x; b < batch; b += 32) {
    const float kl_b = col[kKl * ld + b];
    kl += kl_b;
    ce += col[kCe * ld + b];
    if (dtau != nullptr) {
      gs += col[kGS * ld + b];
      g += col[kG * ld + b];
      kl_qs += kl_b * col[kQcS * ld + b];
      kl_q += kl_b * col[kQc * ld + b];
    }
  }
  ce = warp_sum(ce);
  kl = warp_sum(kl);
  const float inv_b = 1.f / static_cast<float>(batch);
  if (dtau == nullptr) {
    if (threadIdx.x == 0) *loss = (ce + alpha * kl) * inv_b;
    return;
  }
  gs = warp_sum(gs);
  g = warp_sum(g);
  kl_qs = warp_sum(kl_qs);
  kl_q = warp_sum(kl_q);
  if (threadIdx.x == 0) {
    *loss = (ce + alpha * kl) * inv_b;
    // sum G S = sum G'S - alpha / B sum_b KL_b sum_a Qc S; likewise sum G
    const float e = expf(*tau);
    *dtau = (gs - alpha * inv_b * kl_qs) * (e <= max_scale ? e : 0.f);  // torch.clamp passes it inside [0, max]
    *dbias = g - alpha * inv_b * kl_q;
  }
}

template <typename T>
void launch(const void* z_s, const void* z_t, int batch, int dim, const float* tau, const float* bias,
            float max_scale, float alpha, float* scratch, float* loss, float* dzs, float* dzt, float* dtau,
            float* dbias, cudaStream_t stream) {
  const Layout lay = layout(batch);
  const T* zs = static_cast<const T*>(z_s);
  const T* zt = static_cast<const T*>(z_t);
  const unsigned n_tiles = static_cast<unsigned>(lay.n_tiles);
  RDK_LAUNCH(dcd_similarity_kernel<T>, dim3(n_tiles, n_tiles), kThreads, 0, stream)(zs, zt, batch, dim, tau, bias,
                                                                                     max_scale, scratch);
  RDK_LAUNCH(dcd_lse_kernel, static_cast<unsigned>((lay.ld + kThreads - 1) / kThreads), kThreads, 0,
             stream)(batch, scratch);
  const unsigned stat_blocks = static_cast<unsigned>((batch + kStatWarps - 1) / kStatWarps);
  if (dzs == nullptr) {
    RDK_LAUNCH(dcd_stats_kernel<false>, stat_blocks, kThreads, 0, stream)(batch, tau, bias, max_scale, alpha,
                                                                         scratch);
  } else {
    RDK_LAUNCH(dcd_stats_kernel<true>, stat_blocks, kThreads, 0, stream)(batch, tau, bias, max_scale, alpha,
                                                                        scratch);
    const dim3 grid(static_cast<unsigned>((batch + kGradRows - 1) / kGradRows),
                    static_cast<unsigned>((dim + kGradCols - 1) / kGradCols), 2);
    RDK_LAUNCH(dcd_grad_kernel<T>, grid, kThreads, 0, stream)(zs, zt, batch, dim, tau, bias, max_scale, alpha,
                                                              scratch, dzs, dzt);
  }
  RDK_LAUNCH(dcd_finish_kernel, 1, 32, 0, stream)(batch, tau, max_scale, alpha, scratch, loss, dtau, dbias);
}

}  // namespace

int64_t dcd_scratch_bytes(int64_t batch) { return layout(batch).total * static_cast<int64_t>(sizeof(float)); }

void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t tau, uintptr_t bias,
              float max_scale, float alpha, uintptr_t scratch, uintptr_t loss, uintptr_t dzs, uintptr_t dzt,
              uintptr_t dtau, uintptr_t dbias, bool need_grad, uintptr_t stream) {
  if (batch == 0) return;
  if (batch > kDcdMaxBatch || dim > kDcdMaxDim) {
    throw std::runtime_error("dcd_loss: batch and width must be at most 65535 * 64 (the launch grids' limit)");
  }
  auto f32 = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
  const void* zs = reinterpret_cast<const void*>(z_s);
  const void* zt = reinterpret_cast<const void*>(z_t);
  const auto* ta = reinterpret_cast<const float*>(tau);
  const auto* bi = reinterpret_cast<const float*>(bias);
  float* ds = need_grad ? f32(dzs) : nullptr;
  float* dt = need_grad ? f32(dzt) : nullptr;
  float* dta = need_grad ? f32(dtau) : nullptr;
  float* dbi = need_grad ? f32(dbias) : nullptr;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int b = static_cast<int>(batch), d = static_cast<int>(dim);
  float* sc = f32(scratch);
  float* lo = f32(loss);
  switch (z_dtype) {
    case kFloat32: launch<float>(zs, zt, b, d, ta, bi, max_scale, alpha, sc, lo, ds, dt, dta, dbi, s); break;
    case kBFloat16: launch<__nv_bfloat16>(zs, zt, b, d, ta, bi, max_scale, alpha, sc, lo, ds, dt, dta, dbi, s); break;
    case kFloat16: launch<__half>(zs, zt, b, d, ta, bi, max_scale, alpha, sc, lo, ds, dt, dta, dbi, s); break;
    default: throw bad_dtype("z_s", z_dtype);
  }
  check_launch("dcd_loss");
}

}  // namespace rdk
