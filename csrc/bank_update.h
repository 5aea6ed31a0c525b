#pragma once
#include <cstdint>

namespace rdk {
// See bank_update.cu. Pointers are device addresses; stream is a cudaStream_t.
void bank_update(uintptr_t bank, int bank_dtype, int64_t dim, uintptr_t index, int index_dtype, uintptr_t values,
                 int values_dtype, int64_t batch, float momentum, uintptr_t stream);
}  // namespace rdk
