// kernels/emu/cuda_bf16.h: CUDA's __nv_bfloat16 for the host emulation (cuda_runtime.h).
// bfloat16 is the upper 16 bits of a float. g++ 12 has no __bf16 type, so rounding is bit
// arithmetic: round to nearest even, NaN kept quiet (CUDA's __float2bfloat16 gives 0x7fff for a
// NaN; torch gives 0x7fc0: both NaN). double -> bfloat16 rounds once: the double is first
// rounded to float with round-to-odd, which keeps the second rounding exact (24 > 8 + 2 bits).
// tests/python/test_cuda_emu.py checks them against torch.bfloat16 casts.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace cuda_emu {
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
// double -> float rounding toward zero, then the sticky bit ORed into the last place.
inline float round_to_odd(double d) {
  if (std::isnan(d) || std::isinf(d)) return static_cast<float>(d);
  float f = static_cast<float>(d);  // nearest
  if (static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);  // toward zero
  if (std::isinf(f)) f = std::nextafter(f, 0.0f);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= 1u;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace cuda_emu

struct __nv_bfloat16 {
  uint16_t __x = 0;  // see cuda_fp16.h
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(cuda_emu::bf16_bits(f)) {}
  __nv_bfloat16(double d) : __x(cuda_emu::bf16_bits(cuda_emu::round_to_odd(d))) {}
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(__x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
