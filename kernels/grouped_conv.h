// Declarations of the grouped-convolution op's backends (CPU: grouped_conv_cpu.cpp, which calls
// ATen; CUDA: grouped_conv.cu + grouped_conv_cuda.cpp, our own implicit-GEMM kernels).
//
//   alexnet_rs::grouped_conv2d(x, w, b?, stride[2], padding[2], groups) -> y
//   alexnet_rs::grouped_conv2d_backward(dy, x, w, stride, padding, groups, mask[3]) -> (dx, dw, db)
//
// NCHW, dilation 1. Outputs are always contiguous (NCHW), whatever the inputs' layout, so the
// Meta kernel can state output strides without knowing the device.
#pragma once
#include <ATen/ATen.h>

#include "dtypes.h"

#include <array>
#include <optional>
#include <tuple>

namespace alexnet_rs {

using ConvGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Checks shapes, dtypes, devices, groups, stride and padding; returns the output shape.
std::array<int64_t, 4> check_conv_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups);

at::Tensor grouped_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                              at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups);
// grad_out of a backward: the forward's output shape `out` (check_conv_args), x's dtype and device.
void check_conv_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const std::array<int64_t, 4>& out);
ConvGrads grouped_conv2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                      at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
                                      std::array<bool, 3> mask);
#ifdef ALEXNET_WITH_CUDA
at::Tensor grouped_conv2d_cuda(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                               at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups);
ConvGrads grouped_conv2d_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
                                       std::array<bool, 3> mask);
#endif

}  // namespace alexnet_rs
