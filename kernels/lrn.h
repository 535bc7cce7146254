// Shared declarations of the LRN op's backends (CPU in lrn_cpu.cpp, CUDA in lrn_cuda.cpp).
//
// Cross-channel local response normalisation, the formula of the original cuda-convnet code,
// Caffe, cuDNN and torch.nn.functional.local_response_norm (alpha divided by size):
//
//   y[c] = x[c] * d[c]^-beta,   d[c] = k + alpha/size * sum_{c' = c-pre}^{c+post} x[c']^2
//
// with pre = size/2 and post = (size-1)/2, i.e. F.local_response_norm's channel padding
// (size//2, (size-1)//2), so even sizes give the same asymmetric window as PyTorch.
//
// Backward (recomputes d from x rather than storing it):
//   dx[j] = dy[j] d[j]^-beta - (2 alpha beta / size) x[j] * sum_{c = j-post}^{j+pre} dy[c] y[c] / d[c]
#pragma once
#include <ATen/ATen.h>

#include "dtypes.h"

namespace alexnet_rs {

struct LrnParams {
  int64_t size;
  double alpha, beta, k;
  int64_t pre() const { return size / 2; }
  int64_t post() const { return (size - 1) / 2; }
};

// Argument checks shared by every backend (TypeError for dtype, ValueError for shape/size).
void check_lrn_args(const at::Tensor& x, const LrnParams& p, const char* op);
void check_lrn_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const LrnParams& p);
// The layout an output takes: channels_last(_3d) when x is in it (and not also plain
// contiguous), else contiguous. Meta and real kernels agree on it.
at::MemoryFormat lrn_memory_format(const at::Tensor& x);

// x viewed as (N, C, S), S = product of the spatial dims, in the memory format above.
struct LrnLayout {
  at::MemoryFormat fmt;
  int64_t N, C, S;
  bool channels_last() const { return fmt != at::MemoryFormat::Contiguous; }
};
LrnLayout lrn_layout(const at::Tensor& x);
// An empty output of x's shape in that layout.
at::Tensor lrn_empty_output(const at::Tensor& x);

at::Tensor lrn_forward_cpu(const at::Tensor& x, int64_t size, double alpha, double beta, double k);
at::Tensor lrn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, int64_t size,
                            double alpha, double beta, double k);
#ifdef ALEXNET_WITH_CUDA
at::Tensor lrn_forward_cuda(const at::Tensor& x, int64_t size, double alpha, double beta, double k);
at::Tensor lrn_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, int64_t size,
                             double alpha, double beta, double k);
#endif

}  // namespace alexnet_rs
