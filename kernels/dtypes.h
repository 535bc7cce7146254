// kernels/dtypes.h: the dtypes our kernels compute in (at::isFloatingType also admits the float8
// types, which the Meta kernels then accepted and the CPU kernels refused).
#pragma once
#include <c10/core/ScalarType.h>

namespace alexnet_rs {

inline bool kernel_dtype(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16;
}

}  // namespace alexnet_rs
