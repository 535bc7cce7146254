// kernels/lrn_common.cpp: argument checks and layout rules shared by the LRN backends.
#include "lrn.h"

#include <cmath>

namespace alexnet_rs {

void check_lrn_args(const at::Tensor& x, const LrnParams& p, const char* op) {
  TORCH_CHECK_VALUE(x.dim() >= 3, op, ": expected an input of 3 or more dimensions (N, C, ...), got a ",
                    x.dim(), "-D tensor of shape ", x.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(x.scalar_type()), op,
                   ": expected a float16, bfloat16, float32 or float64 input, got dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(p.size >= 1, op, ": size must be >= 1, got ", p.size);
  TORCH_CHECK_VALUE(std::isfinite(p.alpha) && std::isfinite(p.beta) && std::isfinite(p.k), op,
                    ": alpha, beta and k must be finite, got alpha=", p.alpha, " beta=", p.beta,
                    " k=", p.k);
}

void check_lrn_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const LrnParams& p) {
  check_lrn_args(x, p, "alexnet_rs::lrn_backward");
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "alexnet_rs::lrn_backward: grad_out shape ",
                    grad_out.sizes(), " differs from x shape ", x.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), "alexnet_rs::lrn_backward: grad_out dtype ",
                   grad_out.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), "alexnet_rs::lrn_backward: grad_out is on ",
                    grad_out.device(), " but x is on ", x.device());
}

at::MemoryFormat lrn_memory_format(const at::Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d))
    return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

LrnLayout lrn_layout(const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  return LrnLayout{lrn_memory_format(x), N, C, N * C == 0 ? 0 : x.numel() / (N * C)};
}

at::Tensor lrn_empty_output(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(lrn_memory_format(x)));
}

}  // namespace alexnet_rs
