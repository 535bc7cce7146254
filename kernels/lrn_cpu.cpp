// kernels/lrn_cpu.cpp: the CPU kernels of alexnet_rs::lrn / lrn_backward (torch glue). The
// kernels themselves are in lrn_cpu_kernels.h, built here for baseline x86-64 (every dtype) and
// in lrn_cpu_avx2.cpp for AVX2 + FMA (float, double), picked at run time by CPU features.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "lrn.h"
#define LRN_KERNEL_NS base
#include "lrn_cpu_kernels.h"

namespace alexnet_rs {

#ifdef ALEXNET_WITH_AVX2
namespace avx2 {  // lrn_cpu_avx2.cpp
void lrn_forward_f32(const float* x, float* y, const LrnTask& t);
void lrn_forward_f64(const double* x, double* y, const LrnTask& t);
void lrn_backward_f32(const float* dy, const float* x, float* dx, const LrnTask& t);
void lrn_backward_f64(const double* dy, const double* x, double* dx, const LrnTask& t);
}  // namespace avx2
#endif

namespace {

bool has_avx2() {
#ifdef ALEXNET_WITH_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

LrnTask task_of(const LrnLayout& l, const LrnParams& p) {
  return LrnTask{l.N, l.C, l.S, l.channels_last(), p.size, p.alpha, p.beta, p.k};
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

}  // namespace

at::Tensor lrn_forward_cpu(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  const LrnParams p{size, alpha, beta, k};
  check_lrn_args(x, p, "alexnet_rs::lrn");
  check_cpu(x, "alexnet_rs::lrn", "x");
  const LrnLayout l = lrn_layout(x);
  const at::Tensor xc = x.contiguous(l.fmt);
  at::Tensor y = lrn_empty_output(x);
  if (x.numel() == 0) return y;
  const LrnTask t = task_of(l, p);
#ifdef ALEXNET_WITH_AVX2
  if (has_avx2() && x.scalar_type() == at::kFloat) {
    avx2::lrn_forward_f32(xc.const_data_ptr<float>(), y.mutable_data_ptr<float>(), t);
  } else if (has_avx2() && x.scalar_type() == at::kDouble) {
    avx2::lrn_forward_f64(xc.const_data_ptr<double>(), y.mutable_data_ptr<double>(), t);
  } else
#endif
  {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lrn_forward_cpu", [&] {
      base::lrn_forward<scalar_t, at::opmath_type<scalar_t>>(xc.const_data_ptr<scalar_t>(),
                                                             y.mutable_data_ptr<scalar_t>(), t);
    });
  }
  return y;
}

at::Tensor lrn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, int64_t size, double alpha,
                            double beta, double k) {
  const LrnParams p{size, alpha, beta, k};
  check_lrn_backward_args(grad_out, x, p);
  check_cpu(x, "alexnet_rs::lrn_backward", "x");
  check_cpu(grad_out, "alexnet_rs::lrn_backward", "grad_out");
  const LrnLayout l = lrn_layout(x);
  const at::Tensor xc = x.contiguous(l.fmt);
  // The incoming gradient may be expanded (stride 0) or in another layout: match x's.
  const at::Tensor gc = grad_out.contiguous(l.fmt);
  at::Tensor dx = lrn_empty_output(x);
  if (x.numel() == 0) return dx;
  const LrnTask t = task_of(l, p);
#ifdef ALEXNET_WITH_AVX2
  if (has_avx2() && x.scalar_type() == at::kFloat) {
    avx2::lrn_backward_f32(gc.const_data_ptr<float>(), xc.const_data_ptr<float>(), dx.mutable_data_ptr<float>(), t);
  } else if (has_avx2() && x.scalar_type() == at::kDouble) {
    avx2::lrn_backward_f64(gc.const_data_ptr<double>(), xc.const_data_ptr<double>(), dx.mutable_data_ptr<double>(),
                           t);
  } else
#endif
  {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lrn_backward_cpu", [&] {
      base::lrn_backward<scalar_t, at::opmath_type<scalar_t>>(
          gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), t);
    });
  }
  return dx;
}

}  // namespace alexnet_rs
