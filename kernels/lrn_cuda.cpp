// kernels/lrn_cuda.cpp: torch glue for the CUDA LRN kernels in lrn.cu (checks, layout,
// allocation, the current stream). Compiled only with the `cuda` feature.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_api.h"
#include "cuda_glue.h"
#include "lrn.h"

namespace alexnet_rs {

int cuda_dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kAlexnetF32;
    case at::kDouble: return kAlexnetF64;
    case at::kHalf: return kAlexnetF16;
    case at::kBFloat16: return kAlexnetBF16;
    default: TORCH_CHECK_TYPE(false, "alexnet_rs (CUDA): unsupported dtype ", t.scalar_type());
  }
}

namespace {

AlexnetLrnShape shape_of(const LrnLayout& l) { return AlexnetLrnShape{l.N, l.C, l.S, l.channels_last() ? 1 : 0}; }

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "alexnet_rs::lrn (CUDA): ", name, " must be a CUDA tensor, got ", t.device());
}

}  // namespace

at::Tensor lrn_forward_cuda(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  check_lrn_args(x, LrnParams{size, alpha, beta, k}, "alexnet_rs::lrn");
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const LrnLayout l = lrn_layout(x);
  const at::Tensor xc = x.contiguous(l.fmt);
  at::Tensor y = lrn_empty_output(x);
  const char* err = alexnet_rs_lrn_cuda_forward(cuda_dtype_code(x), xc.const_data_ptr(), y.mutable_data_ptr(),
                                                shape_of(l), size, alpha, beta, k,
                                                c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "alexnet_rs::lrn (CUDA) launch failed: ", err);
  return y;
}

at::Tensor lrn_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, int64_t size, double alpha,
                             double beta, double k) {
  check_lrn_backward_args(grad_out, x, LrnParams{size, alpha, beta, k});
  check_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const LrnLayout l = lrn_layout(x);
  const at::Tensor xc = x.contiguous(l.fmt);
  const at::Tensor gc = grad_out.contiguous(l.fmt);  // may arrive expanded (stride 0)
  at::Tensor dx = lrn_empty_output(x);
  const char* err = alexnet_rs_lrn_cuda_backward(cuda_dtype_code(x), gc.const_data_ptr(), xc.const_data_ptr(),
                                                 dx.mutable_data_ptr(), shape_of(l), size, alpha, beta, k,
                                                 c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == nullptr, "alexnet_rs::lrn_backward (CUDA) launch failed: ", err);
  return dx;
}

}  // namespace alexnet_rs
