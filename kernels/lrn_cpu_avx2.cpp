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

void relu_lrn_pool_forward_f32(const float* x, float* out, int64_t* idx, const LrnTask& t, const PoolTask& p) {
  relu_lrn_pool_forward<float>(x, out, idx, t, p);
}
void relu_lrn_pool_forward_f64(const double* x, double* out, int64_t* idx, const LrnTask& t, const PoolTask& p) {
  relu_lrn_pool_forward<double>(x, out, idx, t, p);
}
void relu_lrn_pool_backward_f32(const float* g, const int64_t* idx, const float* x, float* dx, const LrnTask& t,
                                const PoolTask& p) {
  relu_lrn_pool_backward<float>(g, idx, x, dx, t, p);
}
void relu_lrn_pool_backward_f64(const double* g, const int64_t* idx, const double* x, double* dx, const LrnTask& t,
                                const PoolTask& p) {
  relu_lrn_pool_backward<double>(g, idx, x, dx, t, p);
}

}  // namespace alexnet_rs::avx2
