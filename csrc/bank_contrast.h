#pragma once
#include <cstdint>

namespace rdk {

// See bank_contrast_common.cuh (the overview), bank_contrast_gather.cu and
// bank_contrast_dense.cu. Pointers are device addresses; stream is a cudaStream_t.
// The query is float32 (the Python wrapper converts it: B*d elements).

// Gather strategy: one block per (query row, column split). Epilogue codes:
// 0 nce, 1 softmax, 2 scores, 3 scores backward. Partials per (row, split), as
// the Triton kernel writes them: dq[B, S, d]; nce loss[B, S]; softmax max/sum[B, S];
// scores out[B, K+1]. Unused pointers may be 0.
void bank_contrast(uintptr_t query, uintptr_t bank, int bank_dtype, uintptr_t idx, int idx_dtype, uintptr_t z,
                   uintptr_t grad, uintptr_t out, uintptr_t dq, uintptr_t run_max, uintptr_t run_sum, int64_t batch,
                   int64_t n_cols, int64_t dim, int64_t cols_per_split, int64_t n_splits, int64_t stride_bank,
                   int64_t stride_idx, float inv_t, float log_c, float log_mpn_c, int epilogue, uintptr_t stream);

// Dense strategy (d <= 128): tensor-core (3xTF32 mma.sync) scores of 64-row query
// blocks against 64-row bank tiles, multiplicities from the packed sample counts
// (counts[B, stride_counts] uint32: bank row j's count in bits 16 * (j % 2) of word
// j / 2, rows padded to whole tiles of dense_block_n() bank rows; see
// rdkernels/ops/bank_contrast/sample_counts.py). Epilogue 0 nce, 1 softmax; the
// positive is left to the caller. Partials as above, over splits of the bank tiles.
void bank_contrast_dense(uintptr_t query, uintptr_t bank, int bank_dtype, uintptr_t counts, uintptr_t z,
                         uintptr_t loss, uintptr_t dq, uintptr_t run_max, uintptr_t run_sum, int64_t batch,
                         int64_t n_bank, int64_t dim, int64_t n_tiles, int64_t tiles_per_split, int64_t n_splits,
                         int64_t stride_bank, int64_t stride_counts, float inv_t, float log_c, float log_mpn_c,
                         int epilogue, uintptr_t stream);

// The dense strategy's packed sample counts (layout above), counts[batch, words] uint32
// from the negatives idx[b, 1 : 1 + n_neg] (int32 or int64, columns contiguous): one
// block per (query row, chunk of chunk_words words of its row), each chunk a
// shared-memory histogram. Every word is written, padding included, so counts need
// not be zeroed first. Ids outside [0, n_bank) are dropped.
constexpr int64_t kSampleCountMaxChunkWords = 12288;  // 48 KB of shared memory: granted without opting in
void sample_counts(uintptr_t idx, int idx_dtype, uintptr_t counts, int64_t batch, int64_t n_neg, int64_t n_bank,
                   int64_t stride_idx, int64_t stride_counts, int64_t words, int64_t chunk_words, uintptr_t stream);
int64_t sample_count_max_chunk_words();

int dense_block_m();
int dense_block_n();
int dense_max_dim();
// Dynamic shared memory per block of bank_contrast_dense at width dim (<= dense_max_dim()).
int64_t dense_shared_memory_bytes(int64_t dim);

}  // namespace rdk
