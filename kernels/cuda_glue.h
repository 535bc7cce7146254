// Helpers shared by the torch glue of the CUDA kernels (kernels/*_cuda.cpp).
#pragma once
#include <ATen/ATen.h>

namespace alexnet_rs {
// The dtype code of cuda_api.h for t, or a TypeError for dtypes the kernels lack.
int cuda_dtype_code(const at::Tensor& t);
}  // namespace alexnet_rs
