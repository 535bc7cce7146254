// kernels/emu/mma.h: the WMMA API (nvcuda::wmma) for the host emulation, 16x16x16 tiles of
// __half / __nv_bfloat16 operands with float accumulators, row- or column-major.
//
// The element-to-lane mapping of a real fragment is unspecified, and our kernels never index
// fragment elements, so here a fragment holds the whole tile. load_matrix_sync, mma_sync and
// store_matrix_sync are warp-collective: the emulator waits until every lane of the warp has
// made the call, checks that all lanes passed the same pointer, `ldm`, layout and fragment
// variables (a divergent call is a fault), then does the work once, on the first lane's
// fragments, which stand for the warp's. fill_fragment is lane-local (each lane fills its own;
// a lane-dependent fill value would go unnoticed).
//
// Rules checked on every load/store, as the CUDA C++ Programming Guide states them (WMMA,
// "Element Types and Matrix Sizes" / load_matrix_sync): `mptr` must be 256-bit (32-byte)
// aligned, and `ldm` a multiple of 16 bytes (8 elements of __half/__nv_bfloat16, 4 of float).
// A violation faults the launch with cudaErrorMisalignedAddress.
//
// mma_sync computes D = A * B + C with float products and float sums, k in order (products of
// two 16-bit operands are exact in float; tensor cores may round the sums differently, which the
// sweep's tolerances allow for).
#pragma once
#include <cstdint>
#include <cstdio>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <typename Use, int M, int N, int K> struct Dims;
template <int M, int N, int K> struct Dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct Dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct Dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation implements the 16x16x16 shape only");

 public:
  static constexpr int rows = detail::Dims<Use, M, N, K>::rows, cols = detail::Dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];  // the whole tile, row-major (see above)
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const T& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

namespace detail {

template <typename T>
void check_ptr_ldm(const char* fn, const void* p, unsigned ldm) {
  char msg[256];
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    snprintf(msg, sizeof msg, "wmma::%s: pointer %p is not 256-bit aligned", fn, p);
    cuda_emu::fault(cudaErrorMisalignedAddress, msg);
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    snprintf(msg, sizeof msg, "wmma::%s: ldm %u is not a multiple of 16 bytes (%zu-byte elements)", fn, ldm,
             sizeof(T));
    cuda_emu::fault(cudaErrorMisalignedAddress, msg);
  }
}

// Offset of element (r, c) of a matrix with leading dimension ldm.
inline size_t offset(unsigned ldm, bool row_major, int r, int c) {
  return row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
}

// The collectives run once per warp, on the first lane's fragments: the agreement check makes
// every lane name the same fragment variables, so the first lane's copy stands for all of them.
template <typename F>
void run_load(const cuda_emu::WarpOp& op) {
  using T = std::remove_reference_t<decltype(F::x[0])>;
  const T* src = static_cast<const T*>(op.mem);
  F& f = *static_cast<F*>(const_cast<void*>(op.frags[0]));
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = src[offset(op.ldm, op.layout == mem_row_major, r, c)];
}

template <typename F>
void run_store(const cuda_emu::WarpOp& op) {
  using T = std::remove_reference_t<decltype(F::x[0])>;
  const F& f = *static_cast<const F*>(op.frags[0]);
  T* dst = static_cast<T*>(const_cast<void*>(op.mem));
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) dst[offset(op.ldm, op.layout == mem_row_major, r, c)] = f.x[r * F::cols + c];
}

template <typename FD, typename FA, typename FB, typename FC>
void run_mma(const cuda_emu::WarpOp& op) {
  const FA& a = *static_cast<const FA*>(op.frags[1]);
  const FB& b = *static_cast<const FB*>(op.frags[2]);
  const FC& c = *static_cast<const FC*>(op.frags[3]);
  float fa[16][16], fb[16][16];  // operands widened once (16-bit -> float is exact)
  for (int i = 0; i < 256; ++i) {
    fa[i / 16][i % 16] = static_cast<float>(a.x[i]);
    fb[i / 16][i % 16] = static_cast<float>(b.x[i]);
  }
  FD d;  // d may be c
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = static_cast<float>(c.x[i * 16 + j]);
      for (int k = 0; k < 16; ++k) acc += fa[i][k] * fb[k][j];
      d.x[i * 16 + j] = acc;
    }
  *static_cast<FD*>(const_cast<void*>(op.frags[0])) = d;
}

template <typename L> constexpr layout_t layout_of = std::is_same_v<L, col_major> ? mem_col_major : mem_row_major;

}  // namespace detail

// matrix_a / matrix_b: the layout is part of the fragment type.
template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<L, void>, "accumulator loads take a layout_t argument");
  detail::check_ptr_ldm<T>("load_matrix_sync", p, ldm);
  cuda_emu::WarpOp op{"load_matrix_sync", detail::run_load<fragment<Use, M, N, K, T, L>>, p, ldm,
                      detail::layout_of<L>, {&f, nullptr, nullptr, nullptr}, {}};
  cuda_emu::warp_collective(op);
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::check_ptr_ldm<T>("load_matrix_sync", p, ldm);
  cuda_emu::WarpOp op{"load_matrix_sync", detail::run_load<fragment<accumulator, M, N, K, T>>, p, ldm, layout,
                      {&f, nullptr, nullptr, nullptr}, {}};
  cuda_emu::warp_collective(op);
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::check_ptr_ldm<T>("store_matrix_sync", p, ldm);
  cuda_emu::WarpOp op{"store_matrix_sync", detail::run_store<fragment<accumulator, M, N, K, T>>, p, ldm, layout,
                      {&f, nullptr, nullptr, nullptr}, {}};
  cuda_emu::warp_collective(op);
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  static_assert(std::is_same_v<TA, TB>, "matrix_a and matrix_b must have the same element type");
  using FD = fragment<accumulator, M, N, K, TC>;
  cuda_emu::WarpOp op{"mma_sync",
                      detail::run_mma<FD, fragment<matrix_a, M, N, K, TA, LA>, fragment<matrix_b, M, N, K, TB, LB>, FD>,
                      nullptr,
                      0,
                      0,
                      {&d, &a, &b, &c},
                      {}};
  cuda_emu::warp_collective(op);
}

}  // namespace wmma
}  // namespace nvcuda
