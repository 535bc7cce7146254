// kernels/emu/cuda_fp16.h: CUDA's __half for the host emulation (kernels/emu/cuda_runtime.h).
// Storage is the IEEE binary16 bit pattern; conversions round to nearest even as CUDA's
// __float2half / __double2half do (g++'s _Float16 conversions are IEEE round-to-nearest-even,
// directly from double without a double rounding through float). tests/python/test_cuda_emu.py
// checks them against torch.half casts.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t __x = 0;  // initialised, so that a __shared__ array needs no dynamic initialisation
  __half() = default;
  __half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    std::memcpy(&__x, &h, 2);
  }
  __half(double d) {
    const _Float16 h = static_cast<_Float16>(d);
    std::memcpy(&__x, &h, 2);
  }
  operator float() const {
    _Float16 h;
    std::memcpy(&h, &__x, 2);
    return static_cast<float>(h);
  }
};
typedef __half half;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return static_cast<float>(h); }
