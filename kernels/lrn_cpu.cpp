// kernels/lrn_cpu.cpp: the CPU kernels of alexnet_rs::lrn / lrn_backward (torch glue). The
// kernels themselves are in lrn_cpu_kernels.h, built here for baseline x86-64 (every dtype) and
// in lrn_cpu_avx2.cpp for AVX2 + FMA (float, double), picked at run time by CPU features.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <sys/mman.h>

#include <cstdint>

#include "lrn.h"
#include "lrn_pool.h"
#define LRN_KERNEL_NS base
#include "lrn_cpu_kernels.h"

namespace alexnet_rs {

#ifdef ALEXNET_WITH_AVX2
namespace avx2 {  // lrn_cpu_avx2.cpp
void lrn_forward_f32(const float* x, float* y, const LrnTask& t);
void lrn_forward_f64(const double* x, double* y, const LrnTask& t);
void lrn_backward_f32(const float* dy, const float* x, float* dx, const LrnTask& t);
void lrn_backward_f64(const double* dy, const double* x, double* dx, const LrnTask& t);
void relu_lrn_pool_forward_f32(const float* x, float* out, int64_t* idx, const LrnTask& t, const PoolTask& p);
void relu_lrn_pool_forward_f64(const double* x, double* out, int64_t* idx, const LrnTask& t, const PoolTask& p);
void relu_lrn_pool_backward_f32(const float* g, const int64_t* idx, const float* x, float* dx, const LrnTask& t,
                                const PoolTask& p);
void relu_lrn_pool_backward_f64(const double* g, const int64_t* idx, const double* x, double* dx, const LrnTask& t,
                                const PoolTask& p);
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

// A fresh output of ours (not yet touched) larger than a few MiB: ask Linux to back it with 2 MiB
// pages where transparent huge pages are on ("madvise" mode, the usual default). glibc serves
// such blocks with a new mapping each time, and filling it page-faults every 4 KiB page: at conv1
// (37 MB per output) that was about half of the LRN's time (BENCHMARKS.md). Only the 2 MiB-aligned
// interior of this one block is advised: nothing else in the process changes. A failed madvise
// (THP off, old kernel) changes nothing either.
at::Tensor huge_pages(at::Tensor t) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const auto b = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (b + kHuge - 1) & ~(kHuge - 1), hi = (b + t.nbytes()) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  return t;
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
  at::Tensor y = huge_pages(lrn_empty_output(x));
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
  at::Tensor dx = huge_pages(lrn_empty_output(x));
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

namespace {

// Whether the fused CPU kernel takes x: float or double, contiguous NCHW or channels_last, planes
// indexable by int32.
bool fused_takes(const at::Tensor& x) {
  return (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)) &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) &&
         x.size(2) * x.size(3) < (int64_t(1) << 31);
}

LrnPoolParams pool_params(int64_t size, double alpha, double beta, double k, int64_t kernel, int64_t stride,
                          bool ceil_mode) {
  return LrnPoolParams{LrnParams{size, alpha, beta, k}, kernel, stride, ceil_mode};
}

PoolTask pool_task(const at::Tensor& x, const LrnPoolParams& p, int64_t ho, int64_t wo) {
  return PoolTask{x.size(2), x.size(3), ho, wo, p.kernel, p.stride};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_cpu(const at::Tensor& x, int64_t size, double alpha,
                                                           double beta, double k, int64_t kernel, int64_t stride,
                                                           bool ceil_mode) {
  const auto p = pool_params(size, alpha, beta, k, kernel, stride, ceil_mode);
  const char* op = "alexnet_rs::relu_lrn_max_pool2d";
  const auto [ho, wo] = check_lrn_pool_args(x, p, op);
  check_cpu(x, op, "x");
  if (!fused_takes(x)) return relu_lrn_max_pool2d_composite(x, p);
  const LrnLayout l = lrn_layout(x);  // outputs in x's layout, as the Meta kernel says
  at::Tensor y = at::empty({x.size(0), x.size(1), ho, wo}, x.options().memory_format(l.fmt));
  at::Tensor idx = at::empty({x.size(0), x.size(1), ho, wo}, x.options().dtype(at::kLong).memory_format(l.fmt));
  if (y.numel() == 0) return {y, idx};
  const LrnTask t = task_of(l, p.lrn);
  const PoolTask pt = pool_task(x, p, ho, wo);
  int64_t* ip = idx.mutable_data_ptr<int64_t>();
  if (x.scalar_type() == at::kFloat) {
#ifdef ALEXNET_WITH_AVX2
    if (has_avx2())
      avx2::relu_lrn_pool_forward_f32(x.const_data_ptr<float>(), y.mutable_data_ptr<float>(), ip, t, pt);
    else
#endif
      base::relu_lrn_pool_forward<float>(x.const_data_ptr<float>(), y.mutable_data_ptr<float>(), ip, t, pt);
  } else {
#ifdef ALEXNET_WITH_AVX2
    if (has_avx2())
      avx2::relu_lrn_pool_forward_f64(x.const_data_ptr<double>(), y.mutable_data_ptr<double>(), ip, t, pt);
    else
#endif
      base::relu_lrn_pool_forward<double>(x.const_data_ptr<double>(), y.mutable_data_ptr<double>(), ip, t, pt);
  }
  return {y, idx};
}

at::Tensor relu_lrn_max_pool2d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& indices, int64_t size, double alpha, double beta,
                                            double k, int64_t kernel, int64_t stride, bool ceil_mode) {
  const auto p = pool_params(size, alpha, beta, k, kernel, stride, ceil_mode);
  const char* op = "alexnet_rs::relu_lrn_max_pool2d_backward";
  check_lrn_pool_backward_args(grad_out, x, indices, p);
  check_cpu(x, op, "x");
  check_lrn_pool_indices(x, indices, op);
  if (!fused_takes(x)) return relu_lrn_max_pool2d_backward_composite(grad_out, x, indices, p);
  // The incoming gradient may be expanded (stride 0) or in another layout: match x's.
  const LrnLayout l = lrn_layout(x);
  const at::Tensor g = grad_out.contiguous(l.fmt), ic = indices.contiguous(l.fmt);
  at::Tensor dx = huge_pages(lrn_empty_output(x));
  if (x.numel() == 0) return dx;
  if (g.numel() == 0) return dx.zero_();
  const LrnTask t = task_of(l, p.lrn);
  const PoolTask pt = pool_task(x, p, g.size(2), g.size(3));
  const int64_t* ip = ic.const_data_ptr<int64_t>();
  if (x.scalar_type() == at::kFloat) {
#ifdef ALEXNET_WITH_AVX2
    if (has_avx2())
      avx2::relu_lrn_pool_backward_f32(g.const_data_ptr<float>(), ip, x.const_data_ptr<float>(),
                                       dx.mutable_data_ptr<float>(), t, pt);
    else
#endif
      base::relu_lrn_pool_backward<float>(g.const_data_ptr<float>(), ip, x.const_data_ptr<float>(),
                                          dx.mutable_data_ptr<float>(), t, pt);
  } else {
#ifdef ALEXNET_WITH_AVX2
    if (has_avx2())
      avx2::relu_lrn_pool_backward_f64(g.const_data_ptr<double>(), ip, x.const_data_ptr<double>(),
                                       dx.mutable_data_ptr<double>(), t, pt);
    else
#endif
      base::relu_lrn_pool_backward<double>(g.const_data_ptr<double>(), ip, x.const_data_ptr<double>(),
                                           dx.mutable_data_ptr<double>(), t, pt);
  }
  return dx;
}

}  // namespace alexnet_rs
