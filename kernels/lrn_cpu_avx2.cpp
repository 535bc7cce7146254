// kernels/lrn_cpu_avx2.cpp: the CPU LRN kernels compiled for AVX2 + FMA (build.rs adds -mavx2
// -mfma), for float and double. No torch header here: see lrn_cpu_kernels.h.
#define LRN_KERNEL_NS avx2
#include "lrn_cpu_kernels.h"

namespace alexnet_rs::avx2 {

void lrn_forward_f32(const float* x, float* y, const LrnTask& t) { lrn_forward<float, float>(x, y, t); }
void lrn_forward_f64(const double* x, double* y, const LrnTask& t) { lrn_forward<double, double>(x, y, t); }
void lrn_backward_f32(const float* dy, const float* x, float* dx, const LrnTask& t) {
  lrn_backward<float, float>(dy, x, dx, t);
}
void lrn_backward_f64(const double* dy, const double* x, double* dx, const LrnTask& t) {
  lrn_backward<double, double>(dy, x, dx, t);
}

}  // namespace alexnet_rs::avx2
