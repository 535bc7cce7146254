// kernels/lrn.cu: cross-channel LRN forward and backward on CUDA (formula: lrn.h).
//
// One thread per output element, grid-stride. Element i of the (N, C, S) tensor sits at
// channel c = (i / S) % C with channel stride S (contiguous) or c = i % C with stride 1
// (channels_last); its window x[c-pre .. c+post] is read at offsets (c' - c) * stride. Adjacent
// threads touch adjacent addresses in both layouts, so every window read is coalesced, and the
// size-1 re-reads of a neighbour's x come from L1/L2: DRAM sees x read once and y written once.
//
// Backward recomputes each d[c] it needs (size window sums of size terms) instead of storing
// d or the scale from the forward pass: storing would add a full tensor write in forward and a
// read in backward (+33% DRAM traffic in fp32), while the recompute is L1-resident arithmetic.
// Arithmetic is in float (double for float64), loads and stores in the tensor's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_api.h"
#include "cuda_common.cuh"

namespace {

using alexnet_rs_cuda::Acc;
using alexnet_rs_cuda::load;
using alexnet_rs_cuda::store;

template <typename A> __device__ __forceinline__ A neg_pow(A d, A beta) {
  if (beta == A(0.75)) {  // every AlexNet preset: d^-0.75 = d^-0.5 * d^-0.25
    const A r = A(1) / sqrt(d);
    return r * sqrt(r);
  }
  return pow(d, -beta);
}

struct Geometry {
  int64_t total, C, S, cstride;
  bool cl;
  int64_t pre, post;
  __device__ int64_t channel(int64_t i) const { return cl ? i % C : (i / S) % C; }
};

// d[c] for the element at index i (channel c): k + alpha/size * window sum of x^2.
template <typename T, typename A>
__device__ __forceinline__ A window_d(const T* x, int64_t i, int64_t c, const Geometry& g, A an, A k) {
  const int64_t lo = max(int64_t(0), c - g.pre), hi = min(g.C - 1, c + g.post);
  A acc = 0;
  for (int64_t cc = lo; cc <= hi; ++cc) {
    const A v = load(x + i + (cc - c) * g.cstride);
    acc += v * v;
  }
  return k + an * acc;
}

template <typename T>
__global__ void lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Geometry g, typename Acc<T>::type an,
                                   typename Acc<T>::type beta, typename Acc<T>::type k) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < g.total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = g.channel(i);
    const A d = window_d<T, A>(x, i, c, g, an, k);
    store(y + i, load(x + i) * neg_pow(d, beta));
  }
}

template <typename T>
__global__ void lrn_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, Geometry g,
                                    typename Acc<T>::type an, typename Acc<T>::type beta, typename Acc<T>::type k) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < g.total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = g.channel(i);
    // The windows that contain channel j are those of channels j-post .. j+pre.
    const int64_t lo = max(int64_t(0), j - g.post), hi = min(g.C - 1, j + g.pre);
    A sum = 0, own = 0;
    for (int64_t c = lo; c <= hi; ++c) {
      const int64_t ic = i + (c - j) * g.cstride;
      const A d = window_d<T, A>(x, ic, c, g, an, k);
      const A p = neg_pow(d, beta);
      if (c == j) own = p;
      sum += load(dy + ic) * load(x + ic) * p / d;
    }
    // With alpha or beta 0 the second term is 0 and sum is not read (NaN where k = 0 and a window
    // is all zeros), as lrn_dx in lrn_cpu_kernels.h.
    const A two_an_beta = A(2) * an * beta, a = load(dy + i) * own;
    store(dx + i, two_an_beta == A(0) ? a : a - two_an_beta * load(x + i) * sum);
  }
}

Geometry geometry(AlexnetLrnShape s, int64_t size) {
  return Geometry{s.N * s.C * s.S, s.C, s.S, s.channels_last ? 1 : s.S, s.channels_last != 0, size / 2, (size - 1) / 2};
}

// Grid-stride loops cover any size with at most this many blocks. The host emulation builds with
// a small cap (-DALEXNET_LRN_MAX_BLOCKS=...) so that its sweep runs sizes that need several sweeps.
#ifndef ALEXNET_LRN_MAX_BLOCKS
#define ALEXNET_LRN_MAX_BLOCKS (65535 * 32)
#endif

unsigned blocks_for(int64_t total) {
  const int64_t b = (total + 255) / 256;
  return static_cast<unsigned>(b < ALEXNET_LRN_MAX_BLOCKS ? b : ALEXNET_LRN_MAX_BLOCKS);
}

template <typename T>
const char* launch_forward(const void* x, void* y, AlexnetLrnShape s, int64_t size, double alpha, double beta, double k,
                           cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const Geometry g = geometry(s, size);
  if (g.total == 0) return nullptr;
  ALEXNET_LAUNCH(blocks_for(g.total), 256, 0, stream, lrn_forward_kernel<T>)(static_cast<const T*>(x),
                                                                             static_cast<T*>(y), g, A(alpha / size),
                                                                             A(beta), A(k));
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

template <typename T>
const char* launch_backward(const void* dy, const void* x, void* dx, AlexnetLrnShape s, int64_t size, double alpha,
                            double beta, double k, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const Geometry g = geometry(s, size);
  if (g.total == 0) return nullptr;
  ALEXNET_LAUNCH(blocks_for(g.total), 256, 0, stream, lrn_backward_kernel<T>)(
      static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dx), g, A(alpha / size), A(beta), A(k));
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

extern "C" const char* alexnet_rs_lrn_cuda_forward(int dtype, const void* x, void* y, AlexnetLrnShape shape,
                                                   int64_t size, double alpha, double beta, double k, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kAlexnetF32: return launch_forward<float>(x, y, shape, size, alpha, beta, k, st);
    case kAlexnetF64: return launch_forward<double>(x, y, shape, size, alpha, beta, k, st);
    case kAlexnetF16: return launch_forward<__half>(x, y, shape, size, alpha, beta, k, st);
    case kAlexnetBF16: return launch_forward<__nv_bfloat16>(x, y, shape, size, alpha, beta, k, st);
    default: return "alexnet_rs::lrn (CUDA): unsupported dtype";
  }
}

extern "C" const char* alexnet_rs_lrn_cuda_backward(int dtype, const void* dy, const void* x, void* dx,
                                                    AlexnetLrnShape shape, int64_t size, double alpha, double beta,
                                                    double k, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kAlexnetF32: return launch_backward<float>(dy, x, dx, shape, size, alpha, beta, k, st);
    case kAlexnetF64: return launch_backward<double>(dy, x, dx, shape, size, alpha, beta, k, st);
    case kAlexnetF16: return launch_backward<__half>(dy, x, dx, shape, size, alpha, beta, k, st);
    case kAlexnetBF16: return launch_backward<__nv_bfloat16>(dy, x, dx, shape, size, alpha, beta, k, st);
    default: return "alexnet_rs::lrn_backward (CUDA): unsupported dtype";
  }
}
