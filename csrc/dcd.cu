// DCD loss, both terms and all gradients, one launch, logits computed once.
//
// Block J owns rows J and columns J (16 of each) of the B x B logits
// L = scale * z_s z_t^T + bias. It computes the raw similarity strips
//   SA[y][x] = z_s[y] . z_t[x]  (row strip, y in J)     SB[y][x] = z_t[y] . z_s[x] = S[x][y]  (column strip)
// into shared memory (2 * 16 * B floats, B <= 1024), then per row y in J (one warp per row):
//   R_y = LSE_x L[y, x], C_y = LSE_x L[x, y], CE_y = R_y - L[y, y],
//   KL_y = sum_x Qc[x, y] g[x, y],  g[x, y] = (L[x, y] - C_y) - (L[y, x] - R_y)
// and overwrites the strips with the two halves of dloss/dL it can place
//   G_row[y][x] = ((1 + alpha) P[y, x] - delta - alpha Qc[x, y]) / B
//   G_col[y][x] = alpha / B * Qc[x, y] * (g[x, y] - KL_y)   (the element G[x, y])
// (every element of dloss/dL lands in exactly one), and finally
//   local rows J:  dz_s[J] = G_row z_t,  dz_t[J] = G_col z_s
//   all rows:      dz_s += G_col^T z_t[J],  dz_t += G_row^T z_s[J]   (one partial per block)
// in units of 1 / scale. Deterministic: no atomics; torch sums the partials.
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

template <typename T>
__global__ void __launch_bounds__(kThreads) dcd_kernel(const T* __restrict__ z_s, const T* __restrict__ z_t,
                                                       int batch, int dim, const float* __restrict__ tau,
                                                       const float* __restrict__ bias_ptr,
                                                       float max_scale, float alpha, float* __restrict__ stats,
                                                       float* __restrict__ local, float* __restrict__ part,
                                                       bool need_grad) {
  RDK_DYNAMIC_SHARED(float, smem);
  float* sa = smem;                        // [16][batch]
  float* sb = sa + kDcdRows * batch;       // [16][batch]
  float* zs_j = sb + kDcdRows * batch;     // [16][dim]
  float* zt_j = zs_j + kDcdRows * dim;     // [16][dim]
  float* red = zt_j + kDcdRows * dim;      // [kWarps][4]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kDcdRows;
  const int n_blocks = gridDim.x;
  const float scale = clamped_scale(expf(*tau), max_scale), bias = *bias_ptr;
  const float inv_b = 1.f / static_cast<float>(batch);

  for (int i = threadIdx.x; i < kDcdRows * dim; i += kThreads) {
    const int r = row0 + i / dim, k = i % dim;
    const bool ok = r < batch;
    zs_j[i] = ok ? to_float(z_s[static_cast<int64_t>(r) * dim + k]) : 0.f;
    zt_j[i] = ok ? to_float(z_t[static_cast<int64_t>(r) * dim + k]) : 0.f;
  }
  __syncthreads();

  // 1. Similarity strips: thread per column x, 16 rows of each strip in registers.
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
        a[y] = fmaf(zs_j[y * dim + k], vt, a[y]);
        b[y] = fmaf(zt_j[y * dim + k], vs, b[y]);
      }
    }
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) { sa[y * batch + x] = a[y]; sb[y * batch + x] = b[y]; }
  }
  __syncthreads();

  // 2. Per-row statistics and the gradient strips (warp per row).
  float ce_acc = 0.f, kl_acc = 0.f, dsc_acc = 0.f, db_acc = 0.f;
  for (int y = warp; y < kDcdRows; y += kWarps) {
    const int row = row0 + y;
    if (row >= batch) continue;
    float* ra = sa + y * batch;
    float* rb = sb + y * batch;
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
    }
    if (need_grad) {
      // Lane 0 has read ra[row]; lane row % 32 overwrites it below. The shuffles above
      // order nothing in shared memory, so without this the write may come first.
      __syncwarp();
      for (int x = lane; x < batch; x += 32) {
        const float log_q = rb[x] * scale + bias - lse_c;
        const float log_p = ra[x] * scale + bias - lse_r;
        const float p = __expf(log_p), q = __expf(log_q);
        const float g_row = ((1.f + alpha) * p - (x == row ? 1.f : 0.f) - alpha * q) * inv_b;
        const float g_col = alpha * inv_b * q * ((log_q - log_p) - kl);
        dsc_acc += g_row * ra[x] + g_col * rb[x];
        db_acc += g_row + g_col;
        ra[x] = g_row;
        rb[x] = g_col;
      }
    }
  }
  // Rows past the batch hold no gradient.
  if (need_grad) {
    for (int y = 0; y < kDcdRows; ++y) {
      if (row0 + y < batch) continue;
      for (int x = threadIdx.x; x < batch; x += kThreads) { sa[y * batch + x] = 0.f; sb[y * batch + x] = 0.f; }
    }
  }
  dsc_acc = warp_sum(dsc_acc);
  db_acc = warp_sum(db_acc);
  if (lane == 0) {
    red[warp * 4 + 0] = ce_acc;
    red[warp * 4 + 1] = kl_acc;
    red[warp * 4 + 2] = dsc_acc;
    red[warp * 4 + 3] = db_acc;
  }
  __syncthreads();
  if (threadIdx.x < 4) {
    float v = 0.f;
    for (int w = 0; w < kWarps; ++w) v += red[w * 4 + threadIdx.x];
    stats[blockIdx.x * 4 + threadIdx.x] = v;
  }
  if (!need_grad) return;

  // 3a. Local rows J: thread per (output, k); 16 row accumulators each.
  for (int item = threadIdx.x; item < 2 * dim; item += kThreads) {
    const bool is_t = item >= dim;
    const int k = is_t ? item - dim : item;
    const float* g = is_t ? sb : sa;
    const T* z = is_t ? z_s : z_t;
    float accv[kDcdRows];
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) accv[y] = 0.f;
    for (int x = 0; x < batch; ++x) {
      const float v = to_float(z[static_cast<int64_t>(x) * dim + k]);
#pragma unroll
      for (int y = 0; y < kDcdRows; ++y) accv[y] = fmaf(g[y * batch + x], v, accv[y]);
    }
    float* out = local + (is_t ? static_cast<int64_t>(batch) * dim : 0);
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) {
      if (row0 + y < batch) out[static_cast<int64_t>(row0 + y) * dim + k] = accv[y];
    }
  }
  // 3b. All rows: part[0][J][x] = G_col^T z_t[J], part[1][J][x] = G_row^T z_s[J].
  const int64_t plane = static_cast<int64_t>(n_blocks) * batch * dim;
  float* part_s = part + static_cast<int64_t>(blockIdx.x) * batch * dim;
  float* part_t = part_s + plane;
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(batch) * dim; i += kThreads) {
    const int x = static_cast<int>(i / dim), k = static_cast<int>(i % dim);
    float vs = 0.f, vt = 0.f;
#pragma unroll
    for (int y = 0; y < kDcdRows; ++y) {
      vs = fmaf(sb[y * batch + x], zt_j[y * dim + k], vs);
      vt = fmaf(sa[y * batch + x], zs_j[y * dim + k], vt);
    }
    part_s[i] = vs;
    part_t[i] = vt;
  }
}

// Sums the blocks' partials: block b writes dz_s[b], dz_t[b] = (local + sum of parts) * scale;
// block 0 also writes the loss, d tau (through the clamp of exp(tau)) and d bias.
__global__ void __launch_bounds__(kThreads) dcd_finish_kernel(
    const float* __restrict__ stats, const float* __restrict__ local, const float* __restrict__ part,
    const float* __restrict__ tau, int n_blocks, int batch, int dim, float max_scale, float alpha,
    float* __restrict__ loss, float* __restrict__ dzs, float* __restrict__ dzt, float* __restrict__ dtau,
    float* __restrict__ dbias) {
  const float e = expf(*tau);
  if (blockIdx.x == 0 && threadIdx.x < 32) {
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
        *dtau = v[2] * (e <= max_scale ? e : 0.f);  // torch.clamp passes the gradient inside [0, max]
        *dbias = v[3];
      }
    }
  }
  if (dzs == nullptr) return;
  const float scale = clamped_scale(e, max_scale);
  const int64_t b = blockIdx.x, bd = static_cast<int64_t>(batch) * dim, plane = n_blocks * bd;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const int64_t at = b * dim + c;
    float vs = local[at], vt = local[bd + at];
    for (int p = 0; p < n_blocks; ++p) {
      vs += part[p * bd + at];
      vt += part[plane + p * bd + at];
    }
    dzs[at] = vs * scale;
    dzt[at] = vt * scale;
  }
}

template <typename T>
void launch(const void* z_s, const void* z_t, int batch, int dim, const float* tau, const float* bias,
            float max_scale, float alpha, float* stats, float* local, float* part, bool need_grad,
            cudaStream_t stream) {
  auto kernel = dcd_kernel<T>;
  const size_t smem = static_cast<size_t>(dcd_shared_memory_bytes(batch, dim));
  reserve_shared_memory(kernel, smem, "dcd_loss");
  const int blocks = (batch + kDcdRows - 1) / kDcdRows;
  RDK_LAUNCH(kernel, blocks, kThreads, smem, stream)(static_cast<const T*>(z_s), static_cast<const T*>(z_t), batch, dim,
                                             tau, bias, max_scale, alpha, stats, local, part, need_grad);
}

}  // namespace

int64_t dcd_shared_memory_bytes(int64_t batch, int64_t dim) {
  return (2 * kDcdRows * batch + 2 * kDcdRows * dim + kWarps * 4) * static_cast<int64_t>(sizeof(float));
}

void dcd_loss(uintptr_t z_s, uintptr_t z_t, int z_dtype, int64_t batch, int64_t dim, uintptr_t tau, uintptr_t bias,
              float max_scale, float alpha, uintptr_t stats, uintptr_t local, uintptr_t part, uintptr_t loss,
              uintptr_t dzs, uintptr_t dzt, uintptr_t dtau, uintptr_t dbias, bool need_grad, uintptr_t stream) {
  if (batch == 0) return;
  if (batch > kDcdMaxBatch || dim > kDcdMaxDim) {
    throw std::runtime_error("dcd_loss: the CUDA kernel supports batch <= 1024 and dim <= 256");
  }
  const void* zs = reinterpret_cast<const void*>(z_s);
  const void* zt = reinterpret_cast<const void*>(z_t);
  const auto* ta = reinterpret_cast<const float*>(tau);
  const auto* bi = reinterpret_cast<const float*>(bias);
  auto* st = reinterpret_cast<float*>(stats);
  auto* lo = reinterpret_cast<float*>(local);
  auto* pa = reinterpret_cast<float*>(part);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const int b = static_cast<int>(batch), d = static_cast<int>(dim);
  switch (z_dtype) {
    case kFloat32: launch<float>(zs, zt, b, d, ta, bi, max_scale, alpha, st, lo, pa, need_grad, s); break;
    case kBFloat16: launch<__nv_bfloat16>(zs, zt, b, d, ta, bi, max_scale, alpha, st, lo, pa, need_grad, s); break;
    case kFloat16: launch<__half>(zs, zt, b, d, ta, bi, max_scale, alpha, st, lo, pa, need_grad, s); break;
    default: throw bad_dtype("z_s", z_dtype);
  }
  check_launch("dcd_loss");
  const int blocks = (b + kDcdRows - 1) / kDcdRows;
  auto out = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
  RDK_LAUNCH(dcd_finish_kernel, need_grad ? b : 1, kThreads, 0, s)(
      st, lo, pa, ta, blocks, b, d, max_scale, alpha, out(loss), need_grad ? out(dzs) : nullptr,
      need_grad ? out(dzt) : nullptr, need_grad ? out(dtau) : nullptr, need_grad ? out(dbias) : nullptr);
  check_launch("dcd_finish");
}

}  // namespace rdk
