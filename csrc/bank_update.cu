// In-place momentum update of memory-bank rows:
//   M[y[b]] = normalize(m * M[y[b]] + (1 - m) * v[b])
// One block per batch row. Duplicate ids in y are resolved deterministically:
// only the last occurrence writes, and every write mixes with the row as it was
// before the call (each distinct bank row is read and written by one block).
#include "bank_update.h"
#include "common.cuh"

namespace rdk {
namespace {

template <typename BankT, typename ValT, typename IdxT>
__global__ void bank_update_kernel(BankT* __restrict__ bank, const IdxT* __restrict__ index,
                                   const ValT* __restrict__ values, int64_t batch, int64_t dim,
                                   float momentum) {
  // One float per warp for the norm's block sum. The mixed row is not kept in shared
  // memory (that capped dim at 48 KB of floats): the second pass mixes it again, and
  // each element is read and written by the same thread.
  RDK_DYNAMIC_SHARED(float, scratch);
  const int64_t b = blockIdx.x;
  const IdxT row = index[b];

  // Last occurrence wins: skip this entry if a later one names the same row.
  int later = 0;
  for (int64_t j = b + 1 + threadIdx.x; j < batch; j += blockDim.x) later |= (index[j] == row);
  if (__syncthreads_or(later)) return;

  BankT* dst = bank + static_cast<int64_t>(row) * dim;
  const ValT* src = values + b * dim;
  auto mixed = [&](int64_t k) { return momentum * to_float(dst[k]) + (1.f - momentum) * to_float(src[k]); };
  float sq = 0.f;
  for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) {
    const float r = mixed(k);
    sq += r * r;
  }
  // No eps, as in the reference: a row mixes to zero only if v = -M/(1-m) * m exactly.
  const float inv_norm = rsqrtf(block_sum(sq, scratch));
  for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) dst[k] = from_float<BankT>(mixed(k) * inv_norm);
}

template <typename BankT, typename ValT>
void launch_with_index(void* bank, int index_dtype, const void* index, const void* values, int64_t batch,
                       int64_t dim, float momentum, cudaStream_t stream) {
  const int threads = dim >= 256 ? 256 : (dim >= 128 ? 128 : 64);
  const size_t smem = (threads / 32) * sizeof(float);  // block_sum's one float per warp
  if (index_dtype == kInt64) {
    auto kernel = bank_update_kernel<BankT, ValT, int64_t>;
    RDK_LAUNCH(kernel, batch, threads, smem, stream)(
        static_cast<BankT*>(bank), static_cast<const int64_t*>(index), static_cast<const ValT*>(values), batch,
        dim, momentum);
  } else if (index_dtype == kInt32) {
    auto kernel = bank_update_kernel<BankT, ValT, int32_t>;
    RDK_LAUNCH(kernel, batch, threads, smem, stream)(
        static_cast<BankT*>(bank), static_cast<const int32_t*>(index), static_cast<const ValT*>(values), batch,
        dim, momentum);
  } else {
    throw bad_dtype("index", index_dtype);
  }
}

template <typename BankT>
void launch_with_values(void* bank, int index_dtype, const void* index, int values_dtype, const void* values,
                        int64_t batch, int64_t dim, float momentum, cudaStream_t stream) {
  switch (values_dtype) {
    case kFloat32: return launch_with_index<BankT, float>(bank, index_dtype, index, values, batch, dim, momentum, stream);
    case kBFloat16: return launch_with_index<BankT, __nv_bfloat16>(bank, index_dtype, index, values, batch, dim, momentum, stream);
    case kFloat16: return launch_with_index<BankT, __half>(bank, index_dtype, index, values, batch, dim, momentum, stream);
    default: throw bad_dtype("values", values_dtype);
  }
}

}  // namespace

void bank_update(uintptr_t bank, int bank_dtype, int64_t dim, uintptr_t index, int index_dtype, uintptr_t values,
                 int values_dtype, int64_t batch, float momentum, uintptr_t stream) {
  if (batch == 0) return;
  auto* bank_p = reinterpret_cast<void*>(bank);
  auto* index_p = reinterpret_cast<const void*>(index);
  auto* values_p = reinterpret_cast<const void*>(values);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (bank_dtype) {
    case kFloat32: launch_with_values<float>(bank_p, index_dtype, index_p, values_dtype, values_p, batch, dim, momentum, s); break;
    case kBFloat16: launch_with_values<__nv_bfloat16>(bank_p, index_dtype, index_p, values_dtype, values_p, batch, dim, momentum, s); break;
    default: throw bad_dtype("bank", bank_dtype);
  }
  check_launch("bank_update");
}

}  // namespace rdk
