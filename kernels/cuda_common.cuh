// Device helpers shared by the CUDA kernels: the accumulation type of each storage dtype (float
// for float/half/bfloat16, double for double) and loads/stores that convert through it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

// The one seam between our kernel source and the host emulation (kernels/emu/): kernels launch
// as ALEXNET_LAUNCH(grid, block, smem, stream, kernel)(args...), which is
// kernel<<<grid, block, smem, stream>>>(args...) under nvcc and an emulated launch under g++.
#ifdef CUDA_EMU
#define ALEXNET_LAUNCH(grid, block, smem, stream, ...) CUDA_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#else
#define ALEXNET_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace alexnet_rs_cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load(const T* p) {
  return static_cast<typename Acc<T>::type>(*p);
}
template <> __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T> __device__ __forceinline__ void store(T* p, typename Acc<T>::type v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }
template <> __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

}  // namespace alexnet_rs_cuda
