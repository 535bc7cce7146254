// tests/cuda_emu/selftest.cu: small kernels that show the host emulation (kernels/emu/) models
// what it claims: barriers that order shared-memory traffic, shared memory private to a block,
// launch-configuration errors, barrier divergence, 3-D indices, WMMA tiles and their rules, and
// CUDA's half/bfloat16 conversions. Built into the same library as our kernels
// (tests/cuda_emu/emu.py); driven by tests/python/test_cuda_emu.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "cuda_common.cuh"

namespace {

const char* status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// out[t] = t' where t' = blockDim - 1 - t: each thread reads what another thread wrote.
__global__ void reverse_kernel(float* out, int with_barrier) {
  __shared__ float s[1024];
  const unsigned t = threadIdx.x;
  s[t] = float(t);
  if (with_barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[blockDim.x - 1 - t];
}

__global__ void noop_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) *out = 1;
}

// Threads 0..15 return before a barrier the others wait at.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Only block 0 writes the shared variable; every block reads it.
__global__ void shared_per_block_kernel(float* out) {
  __shared__ float s;
  if (blockIdx.x == 0 && threadIdx.x == 0) s = 42.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

__global__ void index_kernel(unsigned* out) {
  const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const unsigned i = b * blockDim.x * blockDim.y * blockDim.z + t;
  out[4 * i + 0] = b;
  out[4 * i + 1] = t;
  out[4 * i + 2] = blockDim.x * blockDim.y * blockDim.z;
  out[4 * i + 3] = gridDim.x * gridDim.y * gridDim.z;
}

// D = A B + C on one 16x16x16 tile, one warp; `offset` shifts A's pointer (alignment checks).
template <typename T, typename LA, typename LB>
__global__ void wmma_kernel(const T* a, const T* b, const float* c, float* d, unsigned lda, unsigned ldb,
                            unsigned ldc, int c_col, int d_col, int offset) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, a + offset, lda);
  wmma::load_matrix_sync(fb, b, ldb);
  wmma::load_matrix_sync(acc, c, ldc, c_col ? wmma::mem_col_major : wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, ldc, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

// The lanes of a warp pass different pointers to a warp-collective load.
template <typename T>
__global__ void wmma_divergent_kernel(const T* a, float* d) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + (threadIdx.x % 2) * 16, 16);
  d[threadIdx.x] = 0.0f;
}

// Half the warp exits before a warp-collective load the other half makes.
__global__ void wmma_partial_warp_kernel(const __half* a, float* d) {
  using namespace nvcuda;
  if (threadIdx.x < 16) return;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a, 16);
  d[threadIdx.x] = 0.0f;
}

template <typename T>
const char* wmma(const void* a, const void* b, const float* c, float* d, unsigned lda, unsigned ldb, unsigned ldc,
                 int a_col, int b_col, int c_col, int d_col, int offset) {
  using namespace nvcuda::wmma;
  const T* ta = static_cast<const T*>(a);
  const T* tb = static_cast<const T*>(b);
  if (!a_col && !b_col)
    ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_kernel<T, row_major, row_major>)(ta, tb, c, d, lda, ldb, ldc, c_col, d_col, offset);
  else if (!a_col && b_col)
    ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_kernel<T, row_major, col_major>)(ta, tb, c, d, lda, ldb, ldc, c_col, d_col, offset);
  else if (a_col && !b_col)
    ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_kernel<T, col_major, row_major>)(ta, tb, c, d, lda, ldb, ldc, c_col, d_col, offset);
  else
    ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_kernel<T, col_major, col_major>)(ta, tb, c, d, lda, ldb, ldc, c_col, d_col, offset);
  return status();
}

template <typename T, typename F>
void convert(const F* in, uint16_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T h(in[i]);
    out[i] = h.__x;
  }
}

template <typename T>
void widen(const uint16_t* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T h;
    h.__x = in[i];
    out[i] = static_cast<float>(h);
  }
}

}  // namespace

extern "C" {

const char* emu_reverse(float* out, unsigned blocks, unsigned threads, int with_barrier) {
  ALEXNET_LAUNCH(blocks, threads, 0, nullptr, reverse_kernel)(out, with_barrier);
  return status();
}

int emu_launch_config(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t smem,
                      int* ran) {
  *ran = 0;
  ALEXNET_LAUNCH(dim3(gx, gy, gz), dim3(bx, by, bz), smem, nullptr, noop_kernel)(ran);
  return static_cast<int>(cudaGetLastError());
}

const char* emu_divergent_barrier(float* out) {
  ALEXNET_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)(out);
  return status();
}

const char* emu_shared_per_block(float* out, unsigned blocks) {
  ALEXNET_LAUNCH(blocks, 64, 0, nullptr, shared_per_block_kernel)(out);
  return status();
}

const char* emu_indices(unsigned* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {
  ALEXNET_LAUNCH(dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr, index_kernel)(out);
  return status();
}

// dtype: 2 = half, 3 = bfloat16 (cuda_api.h's codes).
const char* emu_wmma(int dtype, const void* a, const void* b, const float* c, float* d, unsigned lda, unsigned ldb,
                     unsigned ldc, int a_col, int b_col, int c_col, int d_col, int offset) {
  if (dtype == 2) return wmma<__half>(a, b, c, d, lda, ldb, ldc, a_col, b_col, c_col, d_col, offset);
  return wmma<__nv_bfloat16>(a, b, c, d, lda, ldb, ldc, a_col, b_col, c_col, d_col, offset);
}

const char* emu_wmma_divergent(const void* a, float* d) {
  ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_divergent_kernel<__half>)(static_cast<const __half*>(a), d);
  return status();
}

const char* emu_wmma_partial_warp(const void* a, float* d) {
  ALEXNET_LAUNCH(1, 32, 0, nullptr, wmma_partial_warp_kernel)(static_cast<const __half*>(a), d);
  return status();
}

void emu_float_to_half(const float* in, uint16_t* out, int64_t n) { convert<__half>(in, out, n); }
void emu_double_to_half(const double* in, uint16_t* out, int64_t n) { convert<__half>(in, out, n); }
void emu_half_to_float(const uint16_t* in, float* out, int64_t n) { widen<__half>(in, out, n); }
void emu_float_to_bf16(const float* in, uint16_t* out, int64_t n) { convert<__nv_bfloat16>(in, out, n); }
void emu_double_to_bf16(const double* in, uint16_t* out, int64_t n) { convert<__nv_bfloat16>(in, out, n); }
void emu_bf16_to_float(const uint16_t* in, float* out, int64_t n) { widen<__nv_bfloat16>(in, out, n); }
}
