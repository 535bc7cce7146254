// kernels/grouped_conv_cpu.cpp: argument checks of alexnet_rs::grouped_conv2d, and its CPU
// kernels, which call ATen's convolution (oneDNN / im2col+GEMM): on CPU the op exists so that the
// model runs one code path on every device, not to beat ATen there.
#include "grouped_conv.h"

namespace alexnet_rs {

std::array<int64_t, 4> check_conv_args(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  constexpr const char* op = "alexnet_rs::grouped_conv2d";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK_VALUE(w.dim() == 4, op, ": w must be (Cout, Cin/groups, KH, KW), got shape ", w.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(x.scalar_type()), op, ": x must be float16, bfloat16, float32 or float64, got dtype ",
                   x.scalar_type());
  TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": w dtype ", w.scalar_type(), " differs from x dtype ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(w.device() == x.device(), op, ": w is on ", w.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2, op, ": stride and padding must have 2 values");
  TORCH_CHECK_VALUE(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t cin = x.size(1), cout = w.size(0);
  TORCH_CHECK_VALUE(cin % groups == 0 && cout % groups == 0, op, ": groups=", groups,
                    " must divide the input channels (", cin, ") and the output channels (", cout, ")");
  TORCH_CHECK_VALUE(w.size(1) * groups == cin, op, ": w has ", w.size(1), " input channels per group, x has ", cin,
                    " channels in ", groups, " groups");
  if (b.has_value() && b->defined()) {
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == cout, op, ": b must be (", cout, "), got shape ", b->sizes());
    TORCH_CHECK_TYPE(b->scalar_type() == x.scalar_type(), op, ": b dtype ", b->scalar_type(), " differs from x dtype ",
                     x.scalar_type());
    TORCH_CHECK_VALUE(b->device() == x.device(), op, ": b is on ", b->device(), " but x is on ", x.device());
  }
  // What ATen's convolution refuses, refused here too: the Meta kernel (torch.compile) must not
  // promise a shape that the real kernels then fail on.
  TORCH_CHECK_VALUE(cout >= groups, op, ": w must have at least groups=", groups, " output channels, got shape ",
                    w.sizes());
  TORCH_CHECK_VALUE(w.size(2) >= 1 && w.size(3) >= 1, op, ": w's kernel must be at least 1x1, got shape ",
                    w.sizes());
  // No channels: ATen's convolution gives no output channels (not Cout planes of the bias), and
  // its backward then refuses that output's gradient.
  TORCH_CHECK_VALUE(cin >= 1, op, ": x has no channels, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) == 0 || (x.size(2) >= 1 && x.size(3) >= 1), op,
                    ": x has an empty plane (only an empty batch is allowed), got shape ", x.sizes());
  int64_t padded[2];
  for (int i = 0; i < 2; ++i) {
    const bool overflow = __builtin_mul_overflow(padding[i], int64_t{2}, &padded[i]) ||
                          __builtin_add_overflow(padded[i], x.size(2 + i), &padded[i]);
    TORCH_CHECK_VALUE(!overflow, op, ": padding ", padding, " is too large");
  }
  TORCH_CHECK_VALUE(padded[0] >= w.size(2) && padded[1] >= w.size(3), op, ": the padded input ", x.sizes(),
                    " is smaller than the kernel ", w.sizes());
  return {x.size(0), cout, (padded[0] - w.size(2)) / stride[0] + 1, (padded[1] - w.size(3)) / stride[1] + 1};
}

void check_conv_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const std::array<int64_t, 4>& out) {
  constexpr const char* op = "alexnet_rs::grouped_conv2d_backward";
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(out), op, ": grad_out must have the output's shape ",
                    at::IntArrayRef(out), ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), op, ": grad_out is on ", grad_out.device(), " but x is on ",
                    x.device());
}

at::Tensor grouped_conv2d_cpu(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                              at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  check_conv_args(x, w, b, stride, padding, groups);
  return at::convolution(x, w, b, stride, padding, {1, 1}, false, {0, 0}, groups).contiguous();
}

ConvGrads grouped_conv2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                      at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
                                      std::array<bool, 3> mask) {
  check_conv_grad_out(grad_out, x, check_conv_args(x, w, std::nullopt, stride, padding, groups));
  auto [dx, dw, db] = at::convolution_backward(grad_out.contiguous(), x, w, at::IntArrayRef{w.size(0)}, stride,
                                               padding, {1, 1}, false, {0, 0}, groups, mask);
  // Only what `mask` asks for (ATen's backend may compute more), as the Meta kernel says.
  return {mask[0] ? dx.contiguous() : at::Tensor(), mask[1] ? dw.contiguous() : at::Tensor(),
          mask[2] ? db : at::Tensor()};
}

}  // namespace alexnet_rs
