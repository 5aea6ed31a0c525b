// DCD loss, both terms and all gradients, in three launches of one call, no atomics.
//
// L = scale * z_s z_t^T + bias (B x B). Block J owns rows J and columns J (16 of each).
// Both main kernels first compute the block's raw similarity strips into shared memory
// (2 * 16 * B floats, B <= 1024):
//   SA[y][x] = z_s[y] . z_t[x]  (row strip, y in J)     SB[y][x] = z_t[y] . z_s[x] = S[x][y]  (column strip)
//
// 1. dcd_stats_kernel, per row y in J (one warp per row):
//      R_y = LSE_x L[y, x],  C_y = LSE_x L[x, y],  CE_y = R_y - L[y, y],
//      KL_y = sum_x Qc[x, y] g[x, y],  g[x, y] = (L[x, y] - C_y) - (L[y, x] - R_y),
//    the block's sums of CE and KL, and (with the gradient) R, C, KL for every row, to global memory.
// 2. dcd_grad_kernel recomputes the strips and, with every row's R, C and KL at hand,
//    overwrites them with whole rows and whole columns of dloss/dL (reference.py):
//      G[x, b] = ((1 + alpha) P[x, b] - delta - alpha Qc[b, x]) / B + alpha / B * Qc[x, b] (g[x, b] - KL_b)
//    (SA[x] <- G[x, :], SB[x] <- G[:, x]), so its own rows' gradients are local products:
//      dz_s[J] = scale * G[J, :] z_t,   dz_t[J] = scale * G[:, J]^T z_s,
//    plus the block's sums of G * S and G (each element of G counted once, in its row).
//    Recomputing the strips (2 * 16 * B * d multiply-adds a block) replaces the
//    [blocks, B, d] partials a single kernel would otherwise write and re-read (67 MB at B = 1024).
// 3. dcd_finish_kernel (one block) sums the blocks' statistics into the loss, d tau and d bias.
#include "common.cuh"
#include "dcd.h"

#include <cmath>

namespace rdk {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// scale = min(exp(tau), max_scale), NaN for a NaN tau as torch.clamp gives (fminf
// returns the other operand for a NaN one). nvcc's --use_fast_math keeps the isnan
// test (in the PTX, |e| > inf as an unordered compare, setp.gtu, true only for NaN):
// it flushes denormals and approximates division, sqrt and exp, but does not
// assume finite math.
__device__ __forceinline__ float clamped_scale(float e, float max_scale) {
  return isnan(e) ? e : fminf(e, max_scale);
}

// The block's shared memory: the two [16][batch] strips, its 16 rows of z_s and z_t, and
// one float per warp and statistic for the block sums.
struct Strips {
  float* sa;
  float* sb;
  float* zs_j;
  float* zt_j;
  float* red;
};

__device__ __forceinline__ Strips carve(float* smem, int batch, int dim) {
  Strips s;
  s.sa = smem;
  s.sb = s.sa + kDcdRows * batch;
  s.zs_j = s.sb + kDcdRows * batch;
  s.zt_j = s.zs_j + kDcdRows * dim;
  s.red = s.zt_j + kDcdRows * dim;
  return s;
}

// The block's rows of z_s and z_t (zeros past the batch), then the raw strips
// SA[y][x] = z_s[row0 + y] . z_t[x] and SB[y][x] = z_t[row0 + y] . z_s[x]: thread per
// column x, its 16 rows of each strip in registers.
template <typename T>
__device__ void similarity_strips(const T* __restrict__ z_s, const T* __restrict__ z_t, int batch, int dim,
                                  int row0, const Strips& s) {
  for (int i = threadIdx.x; i < kDcdRows * dim; i += kThreads) {
    const int r = row0 + i / dim, k = i % dim;
    const bool ok = r < batch;
    s.zs_j[i] = ok ? to_float(z_s[static_cast<int64_t>(r) * dim + k]) : 0.f;
    s.zt_j[i] = ok ? to_float(z_t[static_cast<int64_t>(r) * dim + k]) : 0.f;
  }
  __syncthreads();
  for (int x = threadIdx.x; x < batch; x += kThreads) {
    float a[kDcdRows], b[kDcdRows];
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) { a[y] = 0.f; b[y] = 0.f; }
    const T* ztx = z_t + static_cast<int64_t>(x) * dim;
    const T* zsx = z_s + static_cast<int64_t>(x) * dim;
    for (int k = 0; k < dim; ++k) {
      const float vt = to_float(ztx[k]), vs = to_float(zsx[k]);
#pragma unroll
      for (int y = 0; y < kDcdRows; ++y) {
        a[y] = fmaf(s.zs_j[y * dim + k], vt, a[y]);
        b[y] = fmaf(s.zt_j[y * dim + k], vs, b[y]);
      }
    }
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) { s.sa[y * batch + x] = a[y]; s.sb[y * batch + x] = b[y]; }
  }
  __syncthreads();
}

// Block sums of two per-lane values into stats[blockIdx.x * 4 + first + {0, 1}].
__device__ __forceinline__ void store_block_sums(float v0, float v1, float* red, float* __restrict__ stats,
                                                 int first) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v0 = warp_sum(v0);
  v1 = warp_sum(v1);
  if (lane == 0) {
    red[warp * 2 + 0] = v0;
    red[warp * 2 + 1] = v1;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    float v = 0.f;
    for (int w = 0; w < kWarps; ++w) v += red[w * 2 + threadIdx.x];
    stats[blockIdx.x * 4 + first + threadIdx.x] = v;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) dcd_stats_kernel(const T* __restrict__ z_s, const T* __restrict__ z_t,
                                                             int batch, int dim, const float* __restrict__ tau,
                                                             const float* __restrict__ bias_ptr, float max_scale,
                                                             float* __restrict__ stats, float* __restrict__ rck) {
  RDK_DYNAMIC_SHARED(float, smem);
  const Strips s = carve(smem, batch, dim);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kDcdRows;
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;
  similarity_strips(z_s, z_t, batch, dim, row0, s);

  float ce_acc = 0.f, kl_acc = 0.f;
  for (int y = warp; y < kDcdRows; y += kWarps) {
    const int row = row0 + y;
    if (row >= batch) continue;
    const float* ra = s.sa + y * batch;
    const float* rb = s.sb + y * batch;
    float mr = -INFINITY, mc = -INFINITY;
    for (int x = lane; x < batch; x += 32) {
      mr = fmaxf(mr, ra[x] * scale + bias);
      mc = fmaxf(mc, rb[x] * scale + bias);
    }
    mr = warp_max_f(mr);
    mc = warp_max_f(mc);
    float sr = 0.f, sc = 0.f;
    for (int x = lane; x < batch; x += 32) {
      sr += __expf(ra[x] * scale + bias - mr);
      sc += __expf(rb[x] * scale + bias - mc);
    }
    const float lse_r = mr + __logf(warp_sum(sr));
    const float lse_c = mc + __logf(warp_sum(sc));
    float kl = 0.f;
    for (int x = lane; x < batch; x += 32) {
      const float log_q = rb[x] * scale + bias - lse_c;
      const float log_p = ra[x] * scale + bias - lse_r;
      kl += __expf(log_q) * (log_q - log_p);
    }
    kl = warp_sum(kl);
    if (lane == 0) {
      ce_acc += lse_r - (ra[row] * scale + bias);
      kl_acc += kl;
      if (rck != nullptr) {
        rck[row] = lse_r;
        rck[batch + row] = lse_c;
        rck[2 * batch + row] = kl;
      }
    }
  }
  store_block_sums(ce_acc, kl_acc, s.red, stats, 0);
}

// (kThreads, 1): with no minimum of resident blocks ptxas aimed at 64 registers and spilled;
// the strips' shared memory (up to ~140 KB at B = 1024) allows one block an SM at large B anyway.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    dcd_grad_kernel(const T* __restrict__ z_s, const T* __restrict__ z_t, int batch, int dim,
                    const float* __restrict__ tau, const float* __restrict__ bias_ptr, float max_scale, float alpha,
                    const float* __restrict__ rck, float* __restrict__ stats, float* __restrict__ dzs,
                    float* __restrict__ dzt) {
  RDK_DYNAMIC_SHARED(float, smem);
  const Strips s = carve(smem, batch, dim);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kDcdRows;
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;
  const float inv_b = 1.f / static_cast<float>(batch);
  const float* lse_r = rck;
  const float* lse_c = rck + batch;
  const float* kl = rck + 2 * batch;
  similarity_strips(z_s, z_t, batch, dim, row0, s);

  // Whole row x and whole column x of G, in place of the strips (each lane its own
  // columns b: no lane reads another's entries).
  float dsc_acc = 0.f, db_acc = 0.f;
  for (int y = warp; y < kDcdRows; y += kWarps) {
    const int x = row0 + y;
    float* ra = s.sa + y * batch;
    float* rb = s.sb + y * batch;
    if (x >= batch) {  // rows past the batch hold no gradient
      for (int b = lane; b < batch; b += 32) { ra[b] = 0.f; rb[b] = 0.f; }
      continue;
    }
    const float r_x = lse_r[x], c_x = lse_c[x], kl_x = kl[x];
    for (int b = lane; b < batch; b += 32) {
      const float l_xb = ra[b] * scale + bias, l_bx = rb[b] * scale + bias;
      const float r_b = lse_r[b], c_b = lse_c[b];
      const float log_q_xb = l_xb - c_b, log_q_bx = l_bx - c_x;  // column softmaxes Qc[x, b], Qc[b, x]
      const float p_xb = __expf(l_xb - r_x), p_bx = __expf(l_bx - r_b);
      const float q_xb = __expf(log_q_xb), q_bx = __expf(log_q_bx);
      const float delta = b == x ? 1.f : 0.f;
      const float g_xb = ((1.f + alpha) * p_xb - delta - alpha * q_bx) * inv_b +
                         alpha * inv_b * q_xb * ((log_q_xb - (l_bx - r_b)) - kl[b]);
      const float g_bx = ((1.f + alpha) * p_bx - delta - alpha * q_xb) * inv_b +
                         alpha * inv_b * q_bx * ((log_q_bx - (l_xb - r_x)) - kl_x);
      dsc_acc += g_xb * ra[b];
      db_acc += g_xb;
      ra[b] = g_xb;
      rb[b] = g_bx;
    }
  }
  store_block_sums(dsc_acc, db_acc, s.red, stats, 2);  // its barrier also orders the strips' writes

  // dz_s[J] = scale * G[J, :] z_t, dz_t[J] = scale * G[:, J]^T z_s: thread per (output, k).
  for (int item = threadIdx.x; item < 2 * dim; item += kThreads) {
    const bool is_t = item >= dim;
    const int k = is_t ? item - dim : item;
    const float* g = is_t ? s.sb : s.sa;
    const T* z = is_t ? z_s : z_t;
    float acc[kDcdRows];
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) acc[y] = 0.f;
    for (int b = 0; b < batch; ++b) {
      const float v = to_float(z[static_cast<int64_t>(b) * dim + k]);
#pragma unroll
      for (int y = 0; y < kDcdRows; ++y) acc[y] = fmaf(g[y * batch + b], v, acc[y]);
    }
    float* out = is_t ? dzt : dzs;
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) {
      if (row0 + y < batch) out[static_cast<int64_t>(row0 + y) * dim + k] = acc[y] * scale;
    }
  }
}

// Sums the blocks' statistics: the loss and, with the gradient, d tau (through the
// clamp of exp(tau)) and d bias.
__global__ void __launch_bounds__(32) dcd_finish_kernel(const float* __restrict__ stats,
                                                        const float* __restrict__ tau, int n_blocks, int batch,
                                                        float max_scale, float alpha, float* __restrict__ loss,
                                                        float* __restrict__ dtau, float* __restrict__ dbias) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  for (int p = threadIdx.x; p < n_blocks; p += 32) {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] += stats[p * 4 + k];
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) v[k] = warp_sum(v[k]);
  if (threadIdx.x == 0) {
    *loss = (v[0] + alpha * v[1]) / static_cast<float>(batch);
    if (dtau != nullptr) {
      const float e = expf(*tau);
      *dtau = v[2] * (e <= max_scale ? e : 0.f);  // torch.clamp passes the gradient inside [0, max]
      *dbias = v[3];
    }
  }
}

template <typename T>
void launch(const void* z_s, const void* z_t, int batch, int dim, const float* tau, const float* bias,
            float max_scale, float alpha, float* stats, float* rck, float* dzs, float* dzt, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(dcd_shared_memory_bytes(batch, dim));
  const int blocks = (batch + kDcdRows - 1) / kDcdRows;
  const T* zs = static_cast<const T*>(z_s);
  const T* zt = static_cast<const T*>(z_t);
  auto stats_kernel = dcd_stats_kernel<T>;
  reserve_shared_memory(stats_kernel, smem, "dcd_loss");
  RDK_LAUNCH(stats_kernel, blocks, kThreads, smem, stream)(zs, zt, batch, dim, tau, bias, max_scale, stats, rck);
  if (rck == nullptr) return;
  auto grad_kernel = dcd_grad_kernel<T>;
  reserve_shared_memory(grad_kernel, smem, "dcd_loss");
  RDK_LAUNCH(grad_kernel, blocks, kThreads, smem, stream)(zs, zt, batch, dim, tau, bias, max_scale, alpha, rck,
                                                           stats, dzs, dzt);
}

}  // namespace

int64_t dcd_shared_memory_bytes(int64_t batch, int64_t dim) {
  return (2 * kDcdRows * batch + 2 * kDcdRows * dim + kWarps * 2) * static_cast<int64_t>(sizeof(float));
}

void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t tau, uintptr_t bias,
              float max_scale, float alpha, uintptr_t stats, uintptr_t rck, uintptr_t loss, uintptr_t dzs,
              uintptr_t dzt, uintptr_t dtau, uintptr_t dbias, bool need_grad, uintptr_t stream) {
  if (batch == 0) return;
  if (batch > kDcdMaxBatch || dim > kDcdMaxDim) {
    throw std::runtime_error("dcd_loss: the CUDA kernel supports batch <= 1024 and dim <= 256");
  }
  auto f32 = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
  const void* zs = reinterpret_cast<const void*>(z_s);
  const void* zt = reinterpret_cast<const void*>(z_t);
  const auto* ta = reinterpret_cast<const float*>(tau);
  const auto* bi = reinterpret_cast<const float*>(bias);
  float* st = f32(stats);
  float* r = need_grad ? f32(rck) : nullptr;
  float* ds = need_grad ? f32(dzs) : nullptr;
  float* dt = need_grad ? f32(dzt) : nullptr;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int b = static_cast<int>(batch), d = static_cast<int>(dim);
  switch (z_dtype) {
    case kFloat32: launch<float>(zs, zt, b, d, ta, bi, max_scale, alpha, st, r, ds, dt, s); break;
    case kBFloat16: launch<__nv_bfloat16>(zs, zt, b, d, ta, bi, max_scale, alpha, st, r, ds, dt, s); break;
    case kFloat16: launch<__half>(zs, zt, b, d, ta, bi, max_scale, alpha, st, r, ds, dt, s); break;
    default: throw bad_dtype("z_s", z_dtype);
  }
  check_launch("dcd_loss");
  const int blocks = (b + kDcdRows - 1) / kDcdRows;
  RDK_LAUNCH(dcd_finish_kernel, 1, 32, 0, s)(st, ta, blocks, b, max_scale, alpha, f32(loss),
                                             need_grad ? f32(dtau) : nullptr, need_grad ? f32(dbias) : nullptr);
  check_launch("dcd_finish");
}

}  // namespace rdk
