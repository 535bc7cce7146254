// kernels/lrn_cpu_kernels.h: the CPU LRN kernels (formula: lrn.h), free of torch headers so the
// same source compiles twice: for baseline x86-64 (lrn_cpu.cpp, every dtype) and for AVX2 + FMA
// (lrn_cpu_avx2.cpp, float and double), chosen at run time. Each copy lives in its own
// namespace, LRN_KERNEL_NS, and uses no library templates, so no inline function compiled for
// AVX2 can be picked by the linker for the baseline path.
//
// Layout: the input is viewed as (N, C, S), S = product of the spatial dims, stored either
// channel-major (contiguous: channel stride S) or channel-minor (channels_last: stride 1).
// Work unit: a tile of up to kTile consecutive spatial positions of one sample, all C
// channels. The tile is gathered into C x kTile buffers of the op-math type (float for
// float/half/bfloat16), so every window sum over channels is a unit-stride, vectorisable loop
// over the tile's positions whatever the memory layout, and each element of x (and dy) is read
// from memory once. The four buffers of a tile stay in L2 (C = 256: 4 x 64 KiB). Tiles are
// spread over OpenMP threads (pip's torch is OpenMP too: torch.set_num_threads applies).
#ifndef LRN_KERNEL_NS
#error "define LRN_KERNEL_NS before including lrn_cpu_kernels.h"
#endif
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace alexnet_rs {

// What a kernel needs to know; mirrors LrnParams + LrnLayout without torch types.
struct LrnTask {
  int64_t N, C, S;
  bool channels_last;
  int64_t size;
  double alpha, beta, k;
};

namespace LRN_KERNEL_NS {
namespace {

constexpr int64_t kTile = 64;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// d^-beta. For beta = 0.75 (every AlexNet preset): 1 / (sqrt(d) * sqrt(sqrt(d))), square roots
// and a division that vectorise (std::pow does not), and d = inf still gives 0.
template <typename acc_t, bool kBeta075>
inline acc_t neg_pow(acc_t d, acc_t beta) {
  if constexpr (kBeta075) {
    const acc_t r = std::sqrt(d);
    return acc_t(1) / (r * std::sqrt(r));
  } else {
    return std::pow(d, -beta);
  }
}

struct Layout {
  int64_t C, S;
  bool channels_last;
  int64_t at(int64_t c, int64_t s) const { return channels_last ? s * C + c : c * S + s; }
};

template <typename scalar_t, typename acc_t>
void gather(const scalar_t* src, acc_t* buf, const Layout& l, int64_t s0, int64_t ts) {
  if (ts < kTile)  // a partial tile's unused columns are zeroed so they stay finite
    for (int64_t i = 0; i < l.C * kTile; ++i) buf[i] = acc_t(0);
  if (l.channels_last) {
    for (int64_t j = 0; j < ts; ++j)
      for (int64_t c = 0; c < l.C; ++c) buf[c * kTile + j] = acc_t(src[l.at(c, s0 + j)]);
  } else {
    for (int64_t c = 0; c < l.C; ++c)
      for (int64_t j = 0; j < ts; ++j) buf[c * kTile + j] = acc_t(src[l.at(c, s0 + j)]);
  }
}

template <typename scalar_t, typename acc_t>
void scatter(const acc_t* buf, scalar_t* dst, const Layout& l, int64_t s0, int64_t ts) {
  if (l.channels_last) {
    for (int64_t j = 0; j < ts; ++j)
      for (int64_t c = 0; c < l.C; ++c) dst[l.at(c, s0 + j)] = scalar_t(buf[c * kTile + j]);
  } else {
    for (int64_t c = 0; c < l.C; ++c)
      for (int64_t j = 0; j < ts; ++j) dst[l.at(c, s0 + j)] = scalar_t(buf[c * kTile + j]);
  }
}

// For j < kTile: f(j, s_j) with s_j the sum of rows lo..hi (clipped to 0..C-1) of the C x kTile
// buffer at column j. A window of the compile-time width W (5 in every AlexNet) that is not
// clipped is summed in registers, fused with f, so the loop vectorises with no stores between.
template <int W, typename acc_t, typename F>
inline void windowed(const acc_t* buf, int64_t lo, int64_t hi, int64_t C, F&& f) {
  if (W > 0 && lo >= 0 && hi < C && hi - lo + 1 == W) {
    const acc_t* r = buf + lo * kTile;
    for (int64_t j = 0; j < kTile; ++j) {
      acc_t s = 0;
      for (int w = 0; w < W; ++w) s += r[w * kTile + j];
      f(j, s);
    }
    return;
  }
  acc_t acc[kTile];
  lo = imax(lo, 0);
  hi = imin(hi, C - 1);
  for (int64_t j = 0; j < kTile; ++j) acc[j] = 0;
  for (int64_t r = lo; r <= hi; ++r)
    for (int64_t j = 0; j < kTile; ++j) acc[j] += buf[r * kTile + j];
  for (int64_t j = 0; j < kTile; ++j) f(j, acc[j]);
}

// Runs fn(bufs, n, s0, ts) over every tile, in parallel; each thread owns `nbuf` C x kTile buffers.
template <typename acc_t, typename F>
void for_each_tile(const LrnTask& t, int nbuf, F fn) {
  const int64_t tiles = (t.S + kTile - 1) / kTile, total = t.N * tiles;
  const size_t bytes = sizeof(acc_t) * size_t(t.C * kTile * nbuf);
  bool oom = false;
#pragma omp parallel if (total > 1)
  {
    acc_t* bufs = static_cast<acc_t*>(std::malloc(bytes));
    if (bufs == nullptr) {
#pragma omp atomic write
      oom = true;
    } else {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < total; ++i) {
        const int64_t s0 = (i % tiles) * kTile;
        fn(bufs, i / tiles, s0, imin(kTile, t.S - s0));
      }
      std::free(bufs);
    }
  }
  if (oom) throw std::bad_alloc();
}

template <typename scalar_t, typename acc_t, bool kBeta075, int W>
void forward_kernel(const scalar_t* x, scalar_t* y, const LrnTask& t) {
  const acc_t k = t.k, an = t.alpha / t.size, beta = t.beta;
  const int64_t C = t.C, pre = t.size / 2, post = (t.size - 1) / 2;
  const Layout l{t.C, t.S, t.channels_last};
  for_each_tile<acc_t>(t, 2, [&](acc_t* bufs, int64_t n, int64_t s0, int64_t ts) {
    acc_t *xb = bufs, *sq = bufs + C * kTile;
    const int64_t off = n * C * t.S;
    gather(x + off, xb, l, s0, ts);
    for (int64_t i = 0; i < C * kTile; ++i) sq[i] = xb[i] * xb[i];
    for (int64_t c = 0; c < C; ++c) {
      acc_t* row = xb + c * kTile;  // y[c] overwrites x[c]: only row c reads it
      windowed<W>(sq, c - pre, c + post, C,
                  [&](int64_t j, acc_t s) { row[j] *= neg_pow<acc_t, kBeta075>(k + an * s, beta); });
    }
    scatter(xb, y + off, l, s0, ts);
  });
}

template <typename scalar_t, typename acc_t, bool kBeta075, int W>
void backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const LrnTask& t) {
  const acc_t k = t.k, an = t.alpha / t.size, beta = t.beta, two_an_beta = 2 * an * beta;
  const int64_t C = t.C, pre = t.size / 2, post = (t.size - 1) / 2;
  const Layout l{t.C, t.S, t.channels_last};
  for_each_tile<acc_t>(t, 4, [&](acc_t* bufs, int64_t n, int64_t s0, int64_t ts) {
    acc_t *xb = bufs, *gb = bufs + C * kTile, *sq = bufs + 2 * C * kTile, *tb = bufs + 3 * C * kTile;
    const int64_t off = n * C * t.S;
    gather(x + off, xb, l, s0, ts);
    gather(dy + off, gb, l, s0, ts);
    for (int64_t i = 0; i < C * kTile; ++i) sq[i] = xb[i] * xb[i];
    // Pass 1: a[c] = dy[c] d[c]^-beta (into gb), t[c] = a[c] x[c] / d[c] = dy y / d (into tb).
    for (int64_t c = 0; c < C; ++c) {
      acc_t* g = gb + c * kTile;
      const acc_t* xr = xb + c * kTile;
      acc_t* tr = tb + c * kTile;
      windowed<W>(sq, c - pre, c + post, C, [&](int64_t j, acc_t s) {
        const acc_t d = k + an * s;
        g[j] *= neg_pow<acc_t, kBeta075>(d, beta);
        tr[j] = g[j] * xr[j] / d;
      });
    }
    // Pass 2: dx[c] = a[c] - 2 alpha beta / size * x[c] * sum of t over the windows holding c.
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* g = gb + c * kTile;
      acc_t* xr = xb + c * kTile;  // dx[c] overwrites x[c]
      windowed<W>(tb, c - post, c + pre, C, [&](int64_t j, acc_t s) { xr[j] = g[j] - two_an_beta * xr[j] * s; });
    }
    scatter(xb, dx + off, l, s0, ts);
  });
}

}  // namespace

// Entry points: pick the instantiation for beta and size (W = 5 fused, else any size).
template <typename scalar_t, typename acc_t>
void lrn_forward(const scalar_t* x, scalar_t* y, const LrnTask& t) {
  const bool b = t.beta == 0.75;
  if (t.size == 5)
    b ? forward_kernel<scalar_t, acc_t, true, 5>(x, y, t) : forward_kernel<scalar_t, acc_t, false, 5>(x, y, t);
  else
    b ? forward_kernel<scalar_t, acc_t, true, 0>(x, y, t) : forward_kernel<scalar_t, acc_t, false, 0>(x, y, t);
}

template <typename scalar_t, typename acc_t>
void lrn_backward(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const LrnTask& t) {
  const bool b = t.beta == 0.75;
  if (t.size == 5)
    b ? backward_kernel<scalar_t, acc_t, true, 5>(dy, x, dx, t) : backward_kernel<scalar_t, acc_t, false, 5>(dy, x, dx, t);
  else
    b ? backward_kernel<scalar_t, acc_t, true, 0>(dy, x, dx, t) : backward_kernel<scalar_t, acc_t, false, 0>(dy, x, dx, t);
}

}  // namespace LRN_KERNEL_NS
}  // namespace alexnet_rs
