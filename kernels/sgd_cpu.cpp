// kernels/sgd_cpu.cpp: SGD with momentum and weight decay as ONE pass over a float32 CPU
// parameter, its gradient and its velocity (src/optim.rs has the rules).
//
// The same update as five in-place ATen ops (mul_, add_, addcmul_, addcmul_, and zero_ of the
// gradient) reads and writes each 4-byte element about fifteen times; this reads p, g and v once
// and writes p and v once. At AlexNet's 61 M parameters that is the difference between ~3.7 GB
// and ~1.2 GB of memory traffic per step. The arithmetic is the unfused ops' float32 operations
// in their order (tests/optim.rs compares the two). Any layout works as long as the three
// tensors share their strides and are dense (e.g. channels_last weights and momentum).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include "ops.h"
#include "sgd.h"

namespace alexnet_rs {
namespace {

// The rule and whether to decay are constants here, so each instantiation is a plain loop.
template <bool kPaper, bool kWd>
void sgd(float* p, const float* g, float* v, int64_t n, const SgdScalars& scalars) {
  at::parallel_for(0, n, 1 << 16, [&](int64_t b, int64_t e) {
    SgdScalars s = scalars;
    s.paper = kPaper;
    s.decay = kWd;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) sgd_update(p[i], v[i], g[i], s);
  });
}

}  // namespace
}  // namespace alexnet_rs

extern "C" {

// Whether alexnet_rs_sgd_fused may update *p and *v: dense float32 CPU tensors of one layout, not
// inference tensors (their version counters cannot be bumped), p, its gradient and v apart in memory. Never throws: a tensor it cannot
// inspect (a sparse gradient has no strides) does not qualify.
int32_t alexnet_rs_sgd_fused_ok(const at::Tensor* p, const at::Tensor* v) noexcept {
  try {
    const at::Tensor g = p->grad();
    const auto ok = [&](const at::Tensor& t) {
      return t.defined() && t.layout() == at::kStrided && t.device().is_cpu() && t.scalar_type() == at::kFloat &&
             t.sizes() == p->sizes() && t.strides() == p->strides() && t.is_non_overlapping_and_dense() &&
             !t.is_conj() && !t.is_neg() && !t.is_inference();
    };
    // The pass writes v and p as it reads g: no two of them may share memory.
    return ok(*p) && ok(g) && ok(*v) && alexnet_rs::apart({p, &g, v}) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// Updates *p and *v from p's gradient (alexnet_rs_sgd_fused_ok must hold), then drops the
// gradient (p.grad becomes undefined, as zero_grad(set_to_none=True)): the next backward hands
// its freshly computed gradient to p without the accumulation pass into a zeroed buffer.
void alexnet_rs_sgd_fused(const at::Tensor* p, const at::Tensor* v, double lr, double momentum, double wd,
                          int32_t paper) noexcept {
  at::Tensor param = *p;  // shallow handle
  at::Tensor g = param.grad();
  at::Tensor vel = *v;
  float* pp = param.mutable_data_ptr<float>();
  const float* gp = g.const_data_ptr<float>();
  float* vp = vel.mutable_data_ptr<float>();
  const int64_t n = param.numel();
  const auto s = alexnet_rs::SgdScalars::make(lr, momentum, wd, paper != 0);
  if (s.paper) {
    s.decay ? alexnet_rs::sgd<true, true>(pp, gp, vp, n, s) : alexnet_rs::sgd<true, false>(pp, gp, vp, n, s);
  } else {
    s.decay ? alexnet_rs::sgd<false, true>(pp, gp, vp, n, s) : alexnet_rs::sgd<false, false>(pp, gp, vp, n, s);
  }
  // Writes through raw pointers: bump the version counters, as in-place ops would.
  param.unsafeGetTensorImpl()->bump_version();
  vel.unsafeGetTensorImpl()->bump_version();
  param.mutable_grad().reset();
}

}  // extern "C"
