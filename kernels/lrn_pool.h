// The fused relu -> LRN -> max-pool op, the order of AlexNet's conv1 and conv2 stages (and, with
// size 0, relu -> max-pool: conv5, and every pooled stage of the torchvision preset):
//
//   alexnet_rs::relu_lrn_max_pool2d(x, size, alpha, beta, k, kernel, stride, ceil_mode) -> y
//     = F.max_pool2d(F.local_response_norm(relu(x), size, alpha, beta, k), kernel, stride, 0, 1,
//                    ceil_mode)                                   (size 0: no normalisation)
//   ..._with_indices(same) -> (y, indices)   indices as max_pool2d's (flat h * W + w per plane)
//   ..._backward(grad_y, x, indices, same) -> grad_x
//
// The Autograd kernel (ops.cpp) saves x and the indices. CPU: one fused kernel for float/double
// input, contiguous NCHW or channels_last (lrn_cpu_kernels.h); other inputs, and CUDA (no fused
// CUDA kernel yet), run the composition of our lrn op with ATen's relu and max-pool (lrn_pool.cpp). Outputs take
// x's layout: channels_last if x is (and not also contiguous), else contiguous.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "lrn.h"

namespace alexnet_rs {

struct LrnPoolParams {
  LrnParams lrn;  // size 0: no LRN
  int64_t kernel, stride;
  bool ceil_mode;
};

// F.max_pool2d's output size (no padding, dilation 1).
int64_t pool_out_size(int64_t in, int64_t kernel, int64_t stride, bool ceil_mode);
// Checks the arguments (ValueError / TypeError), returns the output's (Ho, Wo).
std::pair<int64_t, int64_t> check_lrn_pool_args(const at::Tensor& x, const LrnPoolParams& p, const char* op);
void check_lrn_pool_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& indices,
                                  const LrnPoolParams& p);
// The backward's indices are written through: each must index x's H x W plane (ValueError). One
// pass over them (a quarter of x's size); on CUDA also a device-to-host copy of two numbers. Not
// in check_lrn_pool_backward_args: the Meta kernel has no values to read.
void check_lrn_pool_indices(const at::Tensor& x, const at::Tensor& indices, const char* op);

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_meta(const at::Tensor& x, int64_t size, double alpha,
                                                            double beta, double k, int64_t kernel, int64_t stride,
                                                            bool ceil_mode);
at::Tensor relu_lrn_max_pool2d_backward_meta(const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& indices, int64_t size, double alpha, double beta,
                                             double k, int64_t kernel, int64_t stride, bool ceil_mode);
// The composition of stock ops and our lrn op (any device, dtype and layout).
std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_composite(const at::Tensor& x, const LrnPoolParams& p);
at::Tensor relu_lrn_max_pool2d_backward_composite(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& indices, const LrnPoolParams& p);

// CPU (fused kernel, or the composition); CUDA (the composition).
std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_cpu(const at::Tensor& x, int64_t size, double alpha,
                                                           double beta, double k, int64_t kernel, int64_t stride,
                                                           bool ceil_mode);
at::Tensor relu_lrn_max_pool2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& indices, int64_t size, double alpha, double beta,
                                            double k, int64_t kernel, int64_t stride, bool ceil_mode);
std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_fallback(const at::Tensor& x, int64_t size, double alpha,
                                                                double beta, double k, int64_t kernel,
                                                                int64_t stride, bool ceil_mode);
at::Tensor relu_lrn_max_pool2d_backward_fallback(const at::Tensor& grad_out, const at::Tensor& x,
                                                 const at::Tensor& indices, int64_t size, double alpha, double beta,
                                                 double k, int64_t kernel, int64_t stride, bool ceil_mode);

}  // namespace alexnet_rs
