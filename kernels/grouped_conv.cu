// kernels/grouped_conv.cu: grouped 2-D convolution on CUDA as implicit GEMM: forward,
// backward-data and backward-weight (NCHW, dilation 1), one GEMM kernel for all three.
//
// Each pass is, per group g, a GEMM C[M, N] = sum_k A[m, k] B[k, n] whose operands are never
// materialised: an index map turns (m, k) and (k, n) into addresses in the NCHW tensors, and
// out-of-range taps (padding, strides that skip an input pixel) read as 0.
//
//   pass      M        N               K               A           B (gathered)
//   forward   Cout/g   batch*OH*OW     Cin/g*KH*KW     weight      input patches
//   bwd data  Cin/g    batch*H*W       Cout/g*KH*KW    weight^T    grad_out taps
//   bwd wgt   Cout/g   Cin/g*KH*KW     batch*OH*OW     grad_out    input patches
//
// Tiling: a 64x64 block of C per 256-thread block (group g0 + blockIdx.z, row tile t0 +
// blockIdx.y: `run` launches in slices of the grid's limits), K in steps of 16 staged through
// shared memory, 4x4 outputs per thread. Split-K: the weight gradient's C is small (a filter
// bank: conv1 is 2 x 6 tiles) and its K large (every output pixel of the batch), so its K is cut
// into chunks, one block per (tile, chunk) (blockIdx.x = chunk * column tiles + column tile),
// each writing its partial sums to a workspace in the accumulation type; `sum_chunks` then adds
// them in chunk order (deterministic) and stores dw. bfloat16/float16 operands are converted to float as they
// are staged and the WMMA path multiplies them on tensor cores (16x16x16 fragments, float
// accumulators); float32 and float64 use the SIMT path (float64 accumulates in double). Bias: forward adds it; its gradient (a plain reduction) is left to ATen in the glue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "cuda_api.h"
#include "cuda_common.cuh"

namespace {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

using alexnet_rs_cuda::Acc;
using alexnet_rs_cuda::load;
using alexnet_rs_cuda::store;

// ---- The three index maps. Each gives the GEMM sizes and reads A(m, k), B(k, n), writes C. ----

template <typename T>
struct Forward {  // y = conv(x, w) + b
  const T *x, *w, *b;
  T* y;
  AlexnetConvShape s;
  __device__ int64_t M() const { return s.Cout / s.groups; }
  __device__ int64_t N() const { return s.N * s.OH * s.OW; }
  __device__ int64_t K() const { return s.Cin / s.groups * s.KH * s.KW; }
  __device__ typename Acc<T>::type a(int g, int64_t m, int64_t k) const {
    return load(w + (g * M() + m) * K() + k);  // weight (Cout, Cin/g, KH, KW): row m, column k
  }
  __device__ typename Acc<T>::type bmat(int g, int64_t k, int64_t n) const {
    const int64_t kw = k % s.KW, kh = (k / s.KW) % s.KH, ci = k / (s.KW * s.KH);
    const int64_t ow = n % s.OW, oh = (n / s.OW) % s.OH, nb = n / (s.OW * s.OH);
    const int64_t ih = oh * s.SH - s.PH + kh, iw = ow * s.SW - s.PW + kw;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return 0;
    const int64_t c = g * (s.Cin / s.groups) + ci;
    return load(x + ((nb * s.Cin + c) * s.H + ih) * s.W + iw);
  }
  __device__ void c(int g, int64_t m, int64_t n, typename Acc<T>::type v, int64_t /*chunk*/) const {
    const int64_t ow = n % s.OW, oh = (n / s.OW) % s.OH, nb = n / (s.OW * s.OH);
    const int64_t co = g * M() + m;
    if (b != nullptr) v += load(b + co);
    store(y + ((nb * s.Cout + co) * s.OH + oh) * s.OW + ow, v);
  }
};

template <typename T>
struct BackwardData {  // dx = conv_transpose(dy, w)
  const T *dy, *w;
  T* dx;
  AlexnetConvShape s;
  __device__ int64_t M() const { return s.Cin / s.groups; }
  __device__ int64_t N() const { return s.N * s.H * s.W; }
  __device__ int64_t K() const { return s.Cout / s.groups * s.KH * s.KW; }
  __device__ typename Acc<T>::type a(int g, int64_t m, int64_t k) const {
    const int64_t kk = k % (s.KH * s.KW), co = k / (s.KH * s.KW);
    return load(w + ((g * (s.Cout / s.groups) + co) * M() + m) * (s.KH * s.KW) + kk);
  }
  __device__ typename Acc<T>::type bmat(int g, int64_t k, int64_t n) const {
    const int64_t kw = k % s.KW, kh = (k / s.KW) % s.KH, co = k / (s.KW * s.KH);
    const int64_t iw = n % s.W, ih = (n / s.W) % s.H, nb = n / (s.W * s.H);
    const int64_t th = ih + s.PH - kh, tw = iw + s.PW - kw;  // = oh * SH, ow * SW
    if (th < 0 || tw < 0 || th % s.SH != 0 || tw % s.SW != 0) return 0;
    const int64_t oh = th / s.SH, ow = tw / s.SW;
    if (oh >= s.OH || ow >= s.OW) return 0;
    const int64_t c = g * (s.Cout / s.groups) + co;
    return load(dy + ((nb * s.Cout + c) * s.OH + oh) * s.OW + ow);
  }
  __device__ void c(int g, int64_t m, int64_t n, typename Acc<T>::type v, int64_t /*chunk*/) const {
    const int64_t iw = n % s.W, ih = (n / s.W) % s.H, nb = n / (s.W * s.H);
    store(dx + ((nb * s.Cin + g * M() + m) * s.H + ih) * s.W + iw, v);
  }
};

template <typename T>
struct BackwardWeight {  // dw = correlate(dy, x)
  const T *dy, *x;
  T* dw;
  typename Acc<T>::type* part;  // split-K: partial sums (chunks, groups * M * N), or null: dw itself
  AlexnetConvShape s;
  __device__ int64_t M() const { return s.Cout / s.groups; }
  __device__ int64_t N() const { return s.Cin / s.groups * s.KH * s.KW; }
  __device__ int64_t K() const { return s.N * s.OH * s.OW; }
  __device__ typename Acc<T>::type a(int g, int64_t m, int64_t k) const {
    const int64_t ow = k % s.OW, oh = (k / s.OW) % s.OH, nb = k / (s.OW * s.OH);
    return load(dy + ((nb * s.Cout + g * M() + m) * s.OH + oh) * s.OW + ow);
  }
  __device__ typename Acc<T>::type bmat(int g, int64_t k, int64_t n) const {
    const int64_t kw = n % s.KW, kh = (n / s.KW) % s.KH, ci = n / (s.KW * s.KH);
    const int64_t ow = k % s.OW, oh = (k / s.OW) % s.OH, nb = k / (s.OW * s.OH);
    const int64_t ih = oh * s.SH - s.PH + kh, iw = ow * s.SW - s.PW + kw;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return 0;
    return load(x + ((nb * s.Cin + g * (s.Cin / s.groups) + ci) * s.H + ih) * s.W + iw);
  }
  __device__ void c(int g, int64_t m, int64_t n, typename Acc<T>::type v, int64_t chunk) const {
    const int64_t i = (g * M() + m) * N() + n;
    if (part != nullptr)
      part[chunk * s.groups * M() * N() + i] = v;
    else
      store(dw + i, v);
  }
};

// ---- SIMT GEMM: float32 / float64 ----

template <typename T, typename P>
__global__ void __launch_bounds__(THREADS) gemm_simt(P p, int64_t t0, int g0, int64_t chunk) {
  using A = typename Acc<T>::type;
  __shared__ A As[BK][BM + 1];
  __shared__ A Bs[BK][BN + 1];
  const int g = g0 + int(blockIdx.z);
  const int64_t M = p.M(), N = p.N(), tiles_n = (N + BN - 1) / BN;
  const int64_t m0 = (t0 + blockIdx.y) * BM, n0 = (blockIdx.x % tiles_n) * BN, kc = blockIdx.x / tiles_n;
  const int64_t k_begin = kc * chunk, K = min(p.K(), k_begin + chunk);  // this block's K: [k_begin, K)
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads, 4 x 4 outputs each
  A acc[4][4] = {};
  for (int64_t k0 = k_begin; k0 < K; k0 += BK) {
    for (int i = threadIdx.x; i < BM * BK; i += THREADS) {
      const int mm = i / BK, kk = i % BK;  // A: consecutive threads walk k (weight rows)
      const int64_t m = m0 + mm, k = k0 + kk;
      As[kk][mm] = (m < M && k < K) ? p.a(g, m, k) : A(0);
      const int nn = i % BN, kb = i / BN;  // B: consecutive threads walk n (pixels)
      const int64_t n = n0 + nn, kB = k0 + kb;
      Bs[kb][nn] = (n < N && kB < K) ? p.bmat(g, kB, n) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      A av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) p.c(g, m, n, acc[i][j], kc);
    }
}

// ---- Tensor-core GEMM (WMMA): bfloat16 / float16 operands, float accumulators ----

template <typename T, typename P>
__global__ void __launch_bounds__(THREADS) gemm_wmma(P p, int64_t t0, int g0, int64_t chunk) {
  using namespace nvcuda;
  // 8 warps tile the 64x64 block as 4 (m) x 2 (n) warp tiles of 16x32 = two 16x16 fragments.
  __shared__ __align__(32) T As[BM][BK];  // row-major M x K
  __shared__ __align__(32) T Bs[BK][BN];  // row-major K x N
  __shared__ __align__(32) float Cs[BM][BN];
  const int g = g0 + int(blockIdx.z);
  const int64_t M = p.M(), N = p.N(), tiles_n = (N + BN - 1) / BN;
  const int64_t m0 = (t0 + blockIdx.y) * BM, n0 = (blockIdx.x % tiles_n) * BN, kc = blockIdx.x / tiles_n;
  const int64_t k_begin = kc * chunk, K = min(p.K(), k_begin + chunk);  // this block's K: [k_begin, K)
  const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int64_t k0 = k_begin; k0 < K; k0 += BK) {
    for (int i = threadIdx.x; i < BM * BK; i += THREADS) {
      const int mm = i / BK, kk = i % BK;
      const int64_t m = m0 + mm, k = k0 + kk;
      store(&As[mm][kk], (m < M && k < K) ? p.a(g, m, k) : 0.0f);
      const int nn = i % BN, kb = i / BN;
      const int64_t n = n0 + nn, kB = k0 + kb;
      store(&Bs[kb][nn], (n < N && kB < K) ? p.bmat(g, kB, n) : 0.0f);
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, &As[wm * 16][0], BK);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, &Bs[0][wn * 32 + j * 16], BN);
      wmma::mma_sync(acc[j], fa, fb, acc[j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 2; ++j)
    wmma::store_matrix_sync(&Cs[wm * 16][wn * 32 + j * 16], acc[j], BN, wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < BM * BN; i += THREADS) {
    const int64_t m = m0 + i / BN, n = n0 + i % BN;
    if (m < M && n < N) p.c(g, m, n, Cs[i / BN][i % BN], kc);
  }
}

template <typename T> constexpr bool kTensorCores = false;
template <> constexpr bool kTensorCores<__half> = true;
template <> constexpr bool kTensorCores<__nv_bfloat16> = true;

// A grid's y and z dimensions are at most 65535: more row tiles or groups (a depthwise layer of
// 65536 channels) launch in slices of that many. The host emulation builds with a small cap
// (-DALEXNET_CONV_MAX_GRID_YZ=...) so that its sweep launches in slices.
#ifndef ALEXNET_CONV_MAX_GRID_YZ
#define ALEXNET_CONV_MAX_GRID_YZ 65535
#endif

// Split-K (weight gradient only): enough chunks to give the GPU about this many blocks, each
// chunk at least this long (a multiple of BK). The host emulation builds with small values so that
// its sweep splits (ALEXNET_CONV_SPLIT_BLOCKS / ALEXNET_CONV_SPLIT_MIN_K).
#ifndef ALEXNET_CONV_SPLIT_BLOCKS
#define ALEXNET_CONV_SPLIT_BLOCKS 1024
#endif
#ifndef ALEXNET_CONV_SPLIT_MIN_K
#define ALEXNET_CONV_SPLIT_MIN_K 4096
#endif
static_assert(ALEXNET_CONV_SPLIT_MIN_K % BK == 0, "split-K chunks are whole BK steps");

struct Chunks {
  int64_t count, length;  // K = [i * length, (i + 1) * length) for i < count, the last one cut at K
};

Chunks weight_chunks(const AlexnetConvShape& s) {
  const int64_t M = s.Cout / s.groups, N = s.Cin / s.groups * s.KH * s.KW, K = s.N * s.OH * s.OW;
  const int64_t tiles = (M + BM - 1) / BM * ((N + BN - 1) / BN) * s.groups;
  if (tiles == 0 || tiles >= ALEXNET_CONV_SPLIT_BLOCKS || K <= ALEXNET_CONV_SPLIT_MIN_K) return {1, K};
  const int64_t want = (ALEXNET_CONV_SPLIT_BLOCKS + tiles - 1) / tiles, most = K / ALEXNET_CONV_SPLIT_MIN_K;
  const int64_t count = want < most ? want : most;
  const int64_t length = ((K + count - 1) / count + BK - 1) / BK * BK;
  return {(K + length - 1) / length, length};
}

// dw[i] = the sum of the chunks' partial sums, in chunk order.
template <typename T>
__global__ void sum_chunks(const typename Acc<T>::type* part, T* dw, int64_t n, int64_t chunks) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    typename Acc<T>::type v = 0;
    for (int64_t c = 0; c < chunks; ++c) v += part[c * n + i];
    store(dw + i, v);
  }
}

template <typename T, typename P>
const char* run(P p, int64_t M, int64_t N, int groups, Chunks k, cudaStream_t stream) {
  if (M == 0 || N == 0) return nullptr;
  const int64_t cap = ALEXNET_CONV_MAX_GRID_YZ, tiles = (M + BM - 1) / BM;
  for (int64_t g0 = 0; g0 < groups; g0 += cap) {
    for (int64_t t0 = 0; t0 < tiles; t0 += cap) {
      const dim3 grid(static_cast<unsigned>((N + BN - 1) / BN * k.count),
                      static_cast<unsigned>(tiles - t0 < cap ? tiles - t0 : cap),
                      static_cast<unsigned>(groups - g0 < cap ? groups - g0 : cap));
      if constexpr (kTensorCores<T>)
        ALEXNET_LAUNCH(grid, THREADS, 0, stream, gemm_wmma<T, P>)(p, t0, static_cast<int>(g0), k.length);
      else
        ALEXNET_LAUNCH(grid, THREADS, 0, stream, gemm_simt<T, P>)(p, t0, static_cast<int>(g0), k.length);
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return cudaGetErrorString(e);
    }
  }
  return nullptr;
}

template <typename T>
const char* forward(const void* x, const void* w, const void* b, void* y, AlexnetConvShape s, cudaStream_t st) {
  Forward<T> p{static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(y), s};
  return run<T>(p, s.Cout / s.groups, s.N * s.OH * s.OW, s.groups, {1, s.Cin / s.groups * s.KH * s.KW}, st);
}

template <typename T>
const char* backward_data(const void* dy, const void* w, void* dx, AlexnetConvShape s, cudaStream_t st) {
  BackwardData<T> p{static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dx), s};
  return run<T>(p, s.Cin / s.groups, s.N * s.H * s.W, s.groups, {1, s.Cout / s.groups * s.KH * s.KW}, st);
}

template <typename T>
const char* backward_weight(const void* dy, const void* x, void* dw, void* workspace, AlexnetConvShape s,
                            cudaStream_t st) {
  using A = typename Acc<T>::type;
  const Chunks k = weight_chunks(s);
  if (k.count > 1 && workspace == nullptr) return "backward-weight needs the workspace its size function names";
  A* part = k.count > 1 ? static_cast<A*>(workspace) : nullptr;
  BackwardWeight<T> p{static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<T*>(dw), part, s};
  const char* err = run<T>(p, s.Cout / s.groups, s.Cin / s.groups * s.KH * s.KW, s.groups, k, st);
  if (err != nullptr || part == nullptr) return err;
  const int64_t n = s.Cout * (s.Cin / s.groups) * s.KH * s.KW, blocks = (n + THREADS - 1) / THREADS;
  ALEXNET_LAUNCH(static_cast<unsigned>(blocks < 4096 ? blocks : 4096), THREADS, 0, st, sum_chunks<T>)
  (part, static_cast<T*>(dw), n, k.count);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

#define ALEXNET_DISPATCH(dtype, call)                      \
  switch (dtype) {                                         \
    case kAlexnetF32: { using T = float; return call; }    \
    case kAlexnetF64: { using T = double; return call; }   \
    case kAlexnetF16: { using T = __half; return call; }   \
    case kAlexnetBF16: { using T = __nv_bfloat16; return call; } \
    default: return "alexnet_rs::grouped_conv2d (CUDA): unsupported dtype"; \
  }

}  // namespace

extern "C" const char* alexnet_rs_conv_cuda_forward(int dtype, const void* x, const void* w, const void* b, void* y,
                                                    AlexnetConvShape s, void* stream) {
  ALEXNET_DISPATCH(dtype, (forward<T>(x, w, b, y, s, static_cast<cudaStream_t>(stream))))
}

extern "C" const char* alexnet_rs_conv_cuda_backward_data(int dtype, const void* dy, const void* w, void* dx,
                                                          AlexnetConvShape s, void* stream) {
  ALEXNET_DISPATCH(dtype, (backward_data<T>(dy, w, dx, s, static_cast<cudaStream_t>(stream))))
}

extern "C" int64_t alexnet_rs_conv_cuda_backward_weight_workspace(int dtype, AlexnetConvShape s) {
  const Chunks k = weight_chunks(s);
  const int64_t acc_bytes = dtype == kAlexnetF64 ? sizeof(double) : sizeof(float);  // Acc<T>
  return k.count > 1 ? k.count * s.Cout * (s.Cin / s.groups) * s.KH * s.KW * acc_bytes : 0;
}

extern "C" const char* alexnet_rs_conv_cuda_backward_weight(int dtype, const void* dy, const void* x, void* dw,
                                                            void* workspace, AlexnetConvShape s, void* stream) {
  ALEXNET_DISPATCH(dtype, (backward_weight<T>(dy, x, dw, workspace, s, static_cast<cudaStream_t>(stream))))
}
