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
// relu -> LRN (size 0: none) -> max-pool, fused (lrn_pool.h).
char* alexnet_rs_relu_lrn_max_pool2d(const at::Tensor* x, int64_t size, double alpha, double beta, double k,
                                     int64_t kernel, int64_t stride, int32_t ceil_mode, at::Tensor** out,
                                     int32_t* kind);
// b may be null (no bias).
char* alexnet_rs_grouped_conv2d(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, int64_t stride_h,
                                int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t groups, at::Tensor** out,
                                int32_t* kind);
char* alexnet_rs_channels_last(const at::Tensor* x, at::Tensor** out, int32_t* kind);
// Fills tensors[0..n) in order from one private CPU generator seeded with `seed`: normal[i] != 0
// draws N(0, 1) (normal_), else U[0, 1) (uniform_); the values torch.manual_seed(seed) and then
// torch.randn / torch.rand of the same shapes give, without touching torch's global generator.
// *out is an empty tensor.
char* alexnet_rs_seeded_fill(const at::Tensor* const* tensors, const int32_t* normal, int64_t n, uint64_t seed,
                             at::Tensor** out, int32_t* kind);
int32_t alexnet_rs_is_channels_last(const at::Tensor* x) noexcept;
int64_t alexnet_rs_autocast_enter(int32_t cuda) noexcept;
// The dtype (c10::ScalarType) autocast computes in on CUDA (cuda = 1) or the CPU, -1 when off.
int32_t alexnet_rs_autocast_dtype(int32_t cuda) noexcept;
// Whether autograd records on this thread (at::GradMode): 1 or 0.
int32_t alexnet_rs_grad_enabled() noexcept;
void alexnet_rs_autocast_exit(int32_t cuda, int64_t prev) noexcept;
// kernels/cpu_cache.cpp: the per-thread scope of the caching CPU allocator, and its counters.
int32_t alexnet_rs_cpu_cache_enter() noexcept;
void alexnet_rs_cpu_cache_exit() noexcept;
void alexnet_rs_cpu_cache_stats(int64_t* out4) noexcept;
// kernels/sgd_cpu.cpp: one-pass SGD on float32 CPU tensors (1 when p, p.grad and v qualify).
int32_t alexnet_rs_sgd_fused_ok(const at::Tensor* p, const at::Tensor* v) noexcept;
void alexnet_rs_sgd_fused(const at::Tensor* p, const at::Tensor* v, double lr, double momentum, double wd,
                          int32_t paper) noexcept;
// kernels/linear_sgd_cpu.cpp: F.linear with the weight's SGD update in its backward (linear_sgd.h);
// _ok is 1 when the tensors qualify.
int32_t alexnet_rs_linear_sgd_ok(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                                 const at::Tensor* v) noexcept;
char* alexnet_rs_linear_sgd(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, const at::Tensor* v,
                            double lr, double momentum, double wd, int32_t paper, at::Tensor** out, int32_t* kind);
}
