// The C ABI between Rust (src/ops.rs) and our torch ops. Tensors cross as `at::Tensor*`
// (tch's C_tensor). Every entry point catches all C++ exceptions: it returns null on success,
// or a malloc'd message (free with alexnet_rs_free_error) and sets *kind to
//   1: a TypeError-like failure (dtype), 2: a ValueError-like failure (shape, size, device),
//   3: anything else.
#pragma once
#include <cstdint>

namespace at { class Tensor; }

extern "C" {
void alexnet_rs_free_error(char* message);
char* alexnet_rs_lrn(const at::Tensor* x, int64_t size, double alpha, double beta, double k,
                     at::Tensor** out, int32_t* kind);
// b may be null (no bias).
char* alexnet_rs_grouped_conv2d(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, int64_t stride_h,
                                int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t groups, at::Tensor** out,
                                int32_t* kind);
char* alexnet_rs_channels_last(const at::Tensor* x, at::Tensor** out, int32_t* kind);
int32_t alexnet_rs_is_channels_last(const at::Tensor* x);
int64_t alexnet_rs_autocast_enter(int32_t cuda) noexcept;
void alexnet_rs_autocast_exit(int32_t cuda, int64_t prev) noexcept;
}
