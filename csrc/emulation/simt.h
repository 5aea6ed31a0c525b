// SIMT emulation of rdkernels' CUDA kernels on the CPU, for tests on machines without a GPU.
//
// The kernel sources are compiled unchanged as C++ by the host compiler with this header
// force-included (-include csrc/emulation/simt.h -DRDK_CPU_EMULATION; see
// python_tests/cuda_emulation.py). Device pointers are host pointers (CPU tensors' data),
// and a launch runs its grid on the calling thread before it returns:
//
// * blocks one after another, so a function-local `static` is the block's shared memory
//   (`__shared__` becomes `static`; dynamic shared memory is one buffer a launch, of
//   the launch's size, see RDK_DYNAMIC_SHARED in common.cuh);
// * the threads of a block as cooperative fibers (ucontext). A thread runs until it
//   reaches a barrier (__syncthreads, __syncthreads_or, __syncwarp, a shuffle, an mma) and
//   resumes once every live thread of its block (or warp) has arrived there: each
//   thread runs as far ahead of its warp as the code allows, so code that relies on
//   lanes moving in lockstep without a __syncwarp or a shuffle between them fails
//   here, as it may on Volta and later GPUs. Between barriers the threads run in
//   the order RDKERNELS_EMULATION_ORDER names: "forward" (thread 0 first, the
//   default), "reverse", or "shuffle:<seed>" (a random order per block): a write
//   that races a read of another thread gives different results in different orders;
// * a barrier that can never complete (a __syncthreads some threads skip) throws;
// * built with AddressSanitizer (RDKERNELS_EMULATION_SANITIZE=address, see
//   python_tests/cuda_emulation.py), an access past a tensor, a static shared array or
//   the dynamic shared memory stops with ASan's report, naming the kernel's line.
//
// Covered: what the kernels use: barriers, shuffles, fast-math intrinsics, vector
// types and __ldg, bf16/fp16 conversions, the runtime calls of the launchers, and
// the TF32 tensor-core instruction the bank-contrast kernels issue
// (mma.sync.m16n8k8 with the PTX ISA's fragment layout), which a kernel reaches
// through `#ifdef RDK_CPU_EMULATION`; 32-bit integer atomicAdd (a plain add: a thread
// is switched out only at a barrier, so no other thread runs between its read and
// its write). Not covered: other inline PTX, other atomics, concurrency between
// blocks, timing.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace rdk_emu {
// The bits of `from` as a `To` of the same size (std::bit_cast is C++20).
template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace rdk_emu

// ------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// ------------------------------------------------------------------ launch geometry
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};

namespace rdk_emu {

constexpr size_t kStackBytes = 256 * 1024;  // per emulated thread (kernels keep small arrays)

// A barrier completes when every live thread (block) or lane (warp) has arrived; a
// thread that returns no longer counts, so it may complete a barrier others wait at.
struct Barrier {
  unsigned live = 0, arrived = 0;
  uint64_t generation = 0;

  bool complete_if_ready() {
    if (arrived == 0 || arrived != live) return false;
    arrived = 0;
    ++generation;
    return true;
  }
};

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  unsigned tid = 0;
  bool done = false;
  const Barrier* waiting_at = nullptr;  // runnable again once its generation moves on
  uint64_t generation = 0;
};

constexpr int kSlotWords = 8;  // words a lane publishes at one warp barrier (an mma's fragments: 6)

struct Warp {
  Barrier barrier;
  uint32_t slots[2][32][kSlotWords];  // the lanes' words, double-buffered by generation
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  Barrier barrier;
  int vote = 0, vote_result = 0;  // __syncthreads_or

  void complete_if_ready() {
    const int votes = vote;
    if (barrier.complete_if_ready()) {
      vote_result = votes;
      vote = 0;
    }
  }
};

inline Block& block() {
  static Block b;
  return b;
}

// A launch's dynamic shared memory, allocated at its exact size (so that AddressSanitizer,
// when the module is built with it, reports an access past the end).
inline std::unique_ptr<unsigned char[]>& dynamic_shared_buffer() {
  static std::unique_ptr<unsigned char[]> buffer;
  return buffer;
}

inline void* dynamic_shared() { return dynamic_shared_buffer().get(); }

inline void set_thread_index(unsigned tid) {
  threadIdx.x = tid % blockDim.x;
  threadIdx.y = (tid / blockDim.x) % blockDim.y;
  threadIdx.z = tid / (blockDim.x * blockDim.y);
}

// The current thread waits at `barrier` (arrived at `generation`) unless its arrival completed it.
inline void wait_at(const Barrier& barrier, uint64_t generation) {
  Block& b = block();
  if (barrier.generation != generation) return;
  b.current->waiting_at = &barrier;
  b.current->generation = generation;
  swapcontext(&b.current->context, &b.scheduler);
}

inline int block_barrier(int predicate) {
  Block& b = block();
  const uint64_t generation = b.barrier.generation;
  b.vote |= predicate ? 1 : 0;
  ++b.barrier.arrived;
  b.complete_if_ready();
  wait_at(b.barrier, generation);
  return b.vote_result;
}

// Every live lane of the warp publishes `count` words and, once all have, reads the
// warp's: slots[lane][i] (valid until the lane's next warp barrier).
inline const uint32_t (*warp_gather(const uint32_t* words, int count))[kSlotWords] {
  Block& b = block();
  const unsigned tid = b.current->tid, lane = tid & 31u;
  Warp& w = b.warps[tid >> 5];
  const uint64_t generation = w.barrier.generation;
  for (int i = 0; i < count; ++i) w.slots[generation & 1][lane][i] = words[i];
  ++w.barrier.arrived;
  w.barrier.complete_if_ready();
  wait_at(w.barrier, generation);
  return w.slots[generation & 1];
}

// Every live lane of the warp publishes `bits` and reads lane `source`'s.
inline uint32_t warp_exchange(uint32_t bits, unsigned source) {
  return warp_gather(&bits, 1)[source & 31u][0];
}

inline void fiber_entry() {
  Block& b = block();
  (*b.body)();
  Fiber& f = *b.current;
  f.done = true;
  Warp& w = b.warps[f.tid >> 5];
  --b.barrier.live;
  --w.barrier.live;
  b.complete_if_ready();
  w.barrier.complete_if_ready();
  // returning switches to uc_link, the scheduler
}

// The order in which the scheduler resumes a block's threads (RDKERNELS_EMULATION_ORDER).
inline std::vector<unsigned> schedule_order(unsigned n) {
  std::vector<unsigned> order(n);
  std::iota(order.begin(), order.end(), 0u);
  const char* env = std::getenv("RDKERNELS_EMULATION_ORDER");
  const std::string mode = env == nullptr ? "forward" : env;
  if (mode == "reverse") {
    std::reverse(order.begin(), order.end());
  } else if (mode.rfind("shuffle:", 0) == 0) {
    const unsigned long seed = std::stoul(mode.substr(8));
    const unsigned long block_id = blockIdx.x + 65536ul * (blockIdx.y + 65536ul * blockIdx.z);
    std::mt19937 rng(static_cast<uint32_t>(seed * 1000003ul + block_id));
    std::shuffle(order.begin(), order.end(), rng);
  } else if (mode != "forward") {
    throw std::runtime_error("RDKERNELS_EMULATION_ORDER must be forward, reverse or shuffle:<seed>, got " + mode);
  }
  return order;
}

inline void run_block(const std::function<void()>& body) {
  Block& b = block();
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  if (b.fibers.size() < n) b.fibers.resize(n);
  b.warps.assign((n + 31) / 32, Warp{});
  for (unsigned t = 0; t < n; ++t) ++b.warps[t >> 5].barrier.live;
  b.body = &body;
  b.barrier = Barrier{};
  b.barrier.live = n;
  b.vote = 0;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    if (f.stack == nullptr) f.stack = std::malloc(kStackBytes);
    if (f.stack == nullptr) throw std::runtime_error("CUDA emulation: out of memory for thread stacks");
    f.tid = t;
    f.done = false;
    f.waiting_at = nullptr;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  const std::vector<unsigned> order = schedule_order(n);
  unsigned remaining = n;
  while (remaining > 0) {
    bool progressed = false;
    for (const unsigned t : order) {
      Fiber& f = b.fibers[t];
      if (f.done) continue;
      if (f.waiting_at != nullptr && f.waiting_at->generation == f.generation) continue;
      f.waiting_at = nullptr;
      b.current = &f;
      set_thread_index(t);
      swapcontext(&b.scheduler, &f.context);
      progressed = true;
      if (f.done) --remaining;
    }
    if (!progressed) {
      throw std::runtime_error("CUDA emulation: a barrier can never complete (a __syncthreads or a shuffle that "
                               "not every live thread of the block or warp reaches)");
    }
  }
  b.current = nullptr;
}

inline void run_grid(dim3 grid, dim3 threads, size_t shared_bytes, const std::function<void()>& body) {
  if (threads.x * threads.y * threads.z == 0 || threads.x * threads.y * threads.z > 1024) {
    throw std::runtime_error("CUDA emulation: a block must have 1..1024 threads");
  }
  dynamic_shared_buffer().reset(new unsigned char[shared_bytes > 0 ? shared_bytes : 1]);
  gridDim = grid;
  blockDim = threads;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(body);
      }
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, threads;
  size_t shared_bytes;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // the kernel's parameters by value, converted once, as a launch copies them
    const std::tuple<Params...> params(static_cast<Params>(args)...);
    const std::function<void()> body = [&] { std::apply(kernel, params); };
    run_grid(grid, threads, shared_bytes, body);
  }
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 threads, size_t shared_bytes) {
  return Launch<Params...>{kernel, grid, threads, shared_bytes};
}

}  // namespace rdk_emu

// ------------------------------------------------------------------ barriers and shuffles
inline void __syncthreads() { rdk_emu::block_barrier(0); }
inline int __syncthreads_or(int predicate) { return rdk_emu::block_barrier(predicate); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  rdk_emu::warp_exchange(0, threadIdx.x & 31u);
}

template <typename T>
inline T rdk_emu_shuffle(T value, unsigned source) {
  static_assert(sizeof(T) == 4, "the emulated shuffles move 32-bit values");
  return rdk_emu::bit_cast<T>(rdk_emu::warp_exchange(rdk_emu::bit_cast<uint32_t>(value), source));
}

inline unsigned rdk_emu_lane() { return rdk_emu::block().current->tid & 31u; }

template <typename T>
inline T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = 32) {
  const unsigned lane = rdk_emu_lane();
  const unsigned source = lane ^ static_cast<unsigned>(lane_mask);
  // a source outside the lane's segment of `width` lanes reads the lane itself
  const bool same = (source / width) == (lane / width);
  return rdk_emu_shuffle(value, same ? source : lane);
}

template <typename T>
inline T __shfl_sync(unsigned, T value, int source_lane, int width = 32) {
  const unsigned lane = rdk_emu_lane();
  const unsigned base = lane - lane % width;
  return rdk_emu_shuffle(value, base + static_cast<unsigned>(source_lane) % width);
}

template <typename T>
inline T __shfl_down_sync(unsigned, T value, unsigned delta, int width = 32) {
  const unsigned lane = rdk_emu_lane();
  const unsigned source = lane + delta;
  const bool inside = (source / width) == (lane / width);
  return rdk_emu_shuffle(value, inside ? source : lane);
}

// ------------------------------------------------------------------ vector types and loads
struct __align__(8) uint2 {
  unsigned x, y;
};
struct __align__(16) uint4 {
  unsigned x, y, z, w;
};
struct __align__(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  const unsigned old = *address;
  *address = old + value;
  return old;
}
inline float __uint_as_float(unsigned u) { return rdk_emu::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return rdk_emu::bit_cast<unsigned>(f); }

// ------------------------------------------------------------------ TF32 tensor cores
namespace rdk_emu {

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, c += a @ b, with the PTX ISA's
// fragments: lane = 4 * group + t holds a = A[group][t], A[group + 8][t], A[group][t + 4],
// A[group + 8][t + 4]; b = B[t][group], B[t + 4][group]; c = C[group][2t], C[group][2t + 1],
// C[group + 8][2t], C[group + 8][2t + 1]. Products of TF32 values are exact in fp32;
// the sum runs over k in order.
inline void mma_m16n8k8_tf32(float* c, const uint32_t* a, const uint32_t* b) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const uint32_t(*all)[kSlotWords] = warp_gather(mine, 6);
  const unsigned lane = block().current->tid & 31u, group = lane >> 2, t = lane & 3u;
  auto A = [&](unsigned row, unsigned k) {  // the lane holding A[row][k] and which of its registers
    const unsigned owner = 4 * (row & 7u) + (k & 3u);
    return __uint_as_float(all[owner][(row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]);
  };
  auto B = [&](unsigned k, unsigned col) { return __uint_as_float(all[4 * col + (k & 3u)][4 + (k >= 4 ? 1 : 0)]); };
  for (int i = 0; i < 4; ++i) {
    const unsigned row = group + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (unsigned k = 0; k < 8; ++k) acc += A(row, k) * B(k, col);
    c[i] = acc;
  }
}

}  // namespace rdk_emu

// ------------------------------------------------------------------ math
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::isinf;
using std::isnan;

template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  return a < b ? b : a;
}

// ------------------------------------------------------------------ 16-bit floats
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __half {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 x) {
  return rdk_emu::bit_cast<float>(static_cast<uint32_t>(x.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t bits = rdk_emu::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return __nv_bfloat16{static_cast<uint16_t>(bits >> 16)};
}

inline float __half2float(__half x) {
  _Float16 h;
  std::memcpy(&h, &x.bits, 2);
  return static_cast<float>(h);
}

inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}

// ------------------------------------------------------------------ the runtime calls of the launchers
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
struct cudaFuncAttributes {
  int maxThreadsPerBlock;
};

inline constexpr int kEmulatedSharedMemoryOptin = 227 * 1024;  // as an H100

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
inline const char* cudaGetErrorName(cudaError_t) { return "cudaSuccess"; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = kEmulatedSharedMemoryOptin;
  return cudaSuccess;
}
template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel*, cudaFuncAttribute, int) {
  return cudaSuccess;
}
template <typename Kernel>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, Kernel*) {
  attributes->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}
