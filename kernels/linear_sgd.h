// kernels/linear_sgd.h: F.linear whose backward updates the weight by SGD instead of producing
// its gradient (linear_sgd_cpu.cpp; src/optim.rs `InBackward` uses it in the training loop).
#pragma once
#include <ATen/core/Tensor.h>

namespace alexnet_rs {

// The largest batch the fused backward takes: above it ATen's GEMMs measured faster.
constexpr int64_t kLinearSgdMaxBatch = 32;

// Whether x (B, K), w (N, K), b (N), v (N, K) qualify: an AVX-512 CPU, float32 CPU contiguous, 1 <= B <=
// kLinearSgdMaxBatch, w a leaf requiring grad, v not requiring grad, grad mode on.
bool linear_sgd_ok(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& v);

// x @ w.T + b; its backward returns dx and db, and updates w and its velocity v in place with
// SGD (sgd.h: pytorch's rule, or the paper's if `paper`; wd > 0 decays w) from w's gradient,
// which is never stored: w gets no .grad.
at::Tensor linear_sgd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& v, double lr,
                      double momentum, double wd, bool paper);

}  // namespace alexnet_rs
