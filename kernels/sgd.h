// kernels/sgd.h: the per-element SGD update (src/optim.rs has the rules), shared by the one-pass
// update (sgd_cpu.cpp) and the fully connected layers' update inside backward (linear_sgd_cpu.cpp).
// T is float or a GCC vector of floats; the operations are the unfused ops' float32 operations
// in their order (the compiler may contract a multiply-add into one FMA).
#pragma once

#include <ATen/MemoryOverlap.h>

#include <initializer_list>

namespace alexnet_rs {

// Whether no two of `ts` share memory (ATen's overlap test; "too hard to tell" counts as shared):
// the fused updates write some while reading others.
inline bool apart(std::initializer_list<const at::Tensor*> ts) {
  for (auto a = ts.begin(); a != ts.end(); ++a)
    for (auto b = a + 1; b != ts.end(); ++b)
      if (at::get_overlap_status(**a, **b) != at::MemOverlapStatus::No) return false;
  return true;
}

// The scalars as the unfused path rounds them: f32 of the f64 products.
struct SgdScalars {
  float m;    // momentum
  float c_w;  // pytorch: wd; paper: -wd lr
  float c_g;  // -lr
  bool paper;
  bool decay;  // wd > 0 (biases: no decay term at all, as the unfused path skips its op)

  static SgdScalars make(double lr, double momentum, double wd, bool paper) {
    return {(float)momentum, paper ? (float)(-wd * lr) : (float)wd, -(float)lr, paper, wd > 0};
  }
};

// pytorch: v = m v + g + wd w;  w -= lr v        paper: v = m v - wd lr w - lr g;  w += v
template <typename T>
inline __attribute__((always_inline)) void sgd_update(T& w, T& v, const T& g, const SgdScalars& s) {
  T vi = v * s.m;
  if (s.paper) {
    if (s.decay) vi = vi + w * s.c_w;
    vi = vi + g * s.c_g;
    v = vi;
    w = w + vi;
  } else {
    vi = vi + g;
    if (s.decay) vi = vi + w * s.c_w;
    v = vi;
    w = w + vi * s.c_g;
  }
}

}  // namespace alexnet_rs
