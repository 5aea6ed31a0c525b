#pragma once
#include <cstdint>

namespace rdk {
// See sinkhorn.cu. Pointers are device addresses; stream is a cudaStream_t.
// Potentials passed to the tiled kernels are divided by eps (F = f/eps, G = g/eps).

// One launch, one CTA per problem, every iteration (n, m <= 256). f, g are written in
// units of the cost; plan may be 0 (not written). registers: n, m <= 128 take the
// register-resident kernel (16 warps per problem) instead of the shared-memory one.
void sinkhorn(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t log_b, uintptr_t a, uintptr_t f,
              uintptr_t g, uintptr_t total, uintptr_t plan, uintptr_t n_iters, int64_t problems, int64_t n,
              int64_t m, float eps, float tol, int64_t max_iters, bool check, bool registers, uintptr_t stream);

// Tiled path, one half-iteration per launch; problems with done[p] != 0 are skipped.
void sinkhorn_rows(uintptr_t cost, int cost_dtype, uintptr_t log_b, uintptr_t G, uintptr_t F, uintptr_t F_new,
                   uintptr_t a, uintptr_t err, uintptr_t done, int64_t problems, int64_t n, int64_t m,
                   float inv_eps, bool check, uintptr_t stream);
void sinkhorn_cols(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t F, uintptr_t G, uintptr_t done,
                   int64_t problems, int64_t n, int64_t m, float inv_eps, uintptr_t stream);
void sinkhorn_plan_cost(uintptr_t cost, int cost_dtype, uintptr_t log_a, uintptr_t log_b, uintptr_t F, uintptr_t G,
                        uintptr_t rowcost, uintptr_t plan, int64_t problems, int64_t n, int64_t m, float inv_eps,
                        uintptr_t stream);
}  // namespace rdk
