// The dense bank-contrast strategy's packed sample counts (layout:
// rdkernels/ops/bank_contrast/sample_counts.py): counts[b, w] holds how often bank
// rows 2w (low 16 bits) and 2w + 1 (high 16 bits) appear among idx[b, 1:].
//
// One block per (query row, chunk of that row's words): the block zeroes a histogram
// of its chunk in shared memory, adds every negative of its row that falls in the
// chunk with a shared-memory atomic, then writes the chunk out whole, padding words
// included. So the counts need no zeroed buffer (no memset before the kernel), and
// the atomics stay on the SM instead of meeting in L2 (the Triton kernel's global
// reductions, one a negative). Integer adds give the same sums in any order.
#include "bank_contrast.h"
#include "common.cuh"

namespace rdk {
namespace {

constexpr int kCountThreads = 512;

template <typename IdxT>
__global__ void __launch_bounds__(kCountThreads)
sample_count_kernel(const IdxT* __restrict__ idx, uint32_t* __restrict__ counts, int64_t n_neg, int64_t n_bank,
                    int64_t stride_idx, int64_t stride_counts, int64_t words, int64_t chunk_words) {
  RDK_DYNAMIC_SHARED(uint32_t, hist);
  const int64_t row = blockIdx.x;
  const int64_t first = blockIdx.y * chunk_words;
  const int64_t n_words = min(chunk_words, words - first);
  for (int64_t w = threadIdx.x; w < n_words; w += blockDim.x) hist[w] = 0u;
  __syncthreads();
  const IdxT* negatives = idx + row * stride_idx + 1;  // column 0 is the positive
  for (int64_t k = threadIdx.x; k < n_neg; k += blockDim.x) {
    const int64_t id = static_cast<int64_t>(negatives[k]);
    const int64_t w = (id >> 1) - first;
    // ids outside [0, n_bank) (possible only with index checks off) are dropped
    if (id >= 0 && id < n_bank && w >= 0 && w < n_words) atomicAdd(&hist[w], (id & 1) ? (1u << 16) : 1u);
  }
  __syncthreads();
  uint32_t* out = counts + row * stride_counts + first;
  for (int64_t w = threadIdx.x; w < n_words; w += blockDim.x) out[w] = hist[w];
}

}  // namespace

int64_t sample_count_max_chunk_words() { return kSampleCountMaxChunkWords; }

void sample_counts(uintptr_t idx, int idx_dtype, uintptr_t counts, int64_t batch, int64_t n_neg, int64_t n_bank,
                   int64_t stride_idx, int64_t stride_counts, int64_t words, int64_t chunk_words, uintptr_t stream) {
  if (batch == 0 || words == 0) return;
  if (chunk_words <= 0 || chunk_words > kSampleCountMaxChunkWords) {
    throw std::invalid_argument("sample_counts: chunk_words must be in [1, " +
                                std::to_string(kSampleCountMaxChunkWords) + "], got " + std::to_string(chunk_words));
  }
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>((words + chunk_words - 1) / chunk_words));
  const size_t smem = static_cast<size_t>(chunk_words) * sizeof(uint32_t);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* out = reinterpret_cast<uint32_t*>(counts);
  if (idx_dtype == kInt64) {
    RDK_LAUNCH(sample_count_kernel<int64_t>, grid, kCountThreads, smem, s)(
        reinterpret_cast<const int64_t*>(idx), out, n_neg, n_bank, stride_idx, stride_counts, words, chunk_words);
  } else if (idx_dtype == kInt32) {
    RDK_LAUNCH(sample_count_kernel<int32_t>, grid, kCountThreads, smem, s)(
        reinterpret_cast<const int32_t*>(idx), out, n_neg, n_bank, stride_idx, stride_counts, words, chunk_words);
  } else {
    throw bad_dtype("idx", idx_dtype);
  }
  check_launch("sample_counts");
}

}  // namespace rdk
