// kernels/grouped_conv_cuda.cpp: torch glue for the implicit-GEMM kernels in grouped_conv.cu
// (checks, NCHW-contiguous operands, allocation, the current stream). `cuda` feature only.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_api.h"
#include "cuda_glue.h"
#include "grouped_conv.h"

namespace alexnet_rs {

namespace {

AlexnetConvShape conv_shape(const at::Tensor& x, const at::Tensor& w, std::array<int64_t, 4> out,
                            at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  // The C interface's groups is an int (only empty tensors can have more channels).
  TORCH_CHECK_VALUE(groups <= INT32_MAX, "alexnet_rs::grouped_conv2d (CUDA): groups must be at most ", INT32_MAX,
                    ", got ", groups);
  return AlexnetConvShape{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), out[2],
                          out[3], stride[0], stride[1], padding[0], padding[1], static_cast<int>(groups)};
}

void check(const char* err, const char* what) { TORCH_CHECK(err == nullptr, what, " (CUDA) launch failed: ", err); }

}  // namespace

at::Tensor grouped_conv2d_cuda(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                               at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  const auto out = check_conv_args(x, w, b, stride, padding, groups);
  TORCH_CHECK_VALUE(x.is_cuda(), "alexnet_rs::grouped_conv2d (CUDA): x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc = (b.has_value() && b->defined()) ? b->contiguous() : at::Tensor();
  at::Tensor y = at::empty(out, x.options());
  check(alexnet_rs_conv_cuda_forward(cuda_dtype_code(x), xc.const_data_ptr(), wc.const_data_ptr(),
                                     bc.defined() ? bc.const_data_ptr() : nullptr, y.mutable_data_ptr(),
                                     conv_shape(xc, wc, out, stride, padding, groups),
                                     c10::cuda::getCurrentCUDAStream().stream()),
        "alexnet_rs::grouped_conv2d");
  return y;
}

ConvGrads grouped_conv2d_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
                                       std::array<bool, 3> mask) {
  const auto out = check_conv_args(x, w, std::nullopt, stride, padding, groups);
  check_conv_grad_out(grad_out, x, out);  // the kernels read grad_out as this shape
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = w.contiguous(), gc = grad_out.contiguous();
  const auto shape = conv_shape(xc, wc, out, stride, padding, groups);
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor dx, dw, db;
  if (mask[0]) {
    dx = at::empty_like(xc);
    check(alexnet_rs_conv_cuda_backward_data(cuda_dtype_code(x), gc.const_data_ptr(), wc.const_data_ptr(),
                                             dx.mutable_data_ptr(), shape, stream),
          "alexnet_rs::grouped_conv2d_backward (data)");
  }
  if (mask[1]) {
    dw = at::empty_like(wc);
    const int64_t bytes = alexnet_rs_conv_cuda_backward_weight_workspace(cuda_dtype_code(x), shape);
    at::Tensor workspace = bytes > 0 ? at::empty({bytes}, x.options().dtype(at::kByte)) : at::Tensor();
    check(alexnet_rs_conv_cuda_backward_weight(cuda_dtype_code(x), gc.const_data_ptr(), xc.const_data_ptr(),
                                               dw.mutable_data_ptr(),
                                               workspace.defined() ? workspace.mutable_data_ptr() : nullptr, shape,
                                               stream),
          "alexnet_rs::grouped_conv2d_backward (weight)");
  }
  if (mask[2]) db = gc.sum({0, 2, 3});  // a plain reduction: ATen's
  return {dx, dw, db};
}

}  // namespace alexnet_rs
