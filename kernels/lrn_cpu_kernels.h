// kernels/lrn_cpu_kernels.h: the CPU LRN kernels (formula: lrn.h), free of torch headers so the
// same source compiles twice: for baseline x86-64 (lrn_cpu.cpp, every dtype) and for AVX2 + FMA
// (lrn_cpu_avx2.cpp, float and double), chosen at run time. Each copy lives in its own
// namespace, LRN_KERNEL_NS, and uses no library templates, so no inline function compiled for
// AVX2 can be picked by the linker for the baseline path.
//
// Layout: the input is viewed as (N, C, S), S = product of the spatial dims, stored either
// channel-major (contiguous: channel stride S) or channel-minor (channels_last: stride 1).
// Contiguous float/double input (the common case) takes the direct kernels below: chunks of
// positions swept channel by channel, read and written in place. Every other input (half,
// bfloat16, channels_last, strided) is gathered: work unit a tile of up to kTile consecutive
// spatial positions of one sample, all C channels, copied into C x kTile buffers of the op-math
// type (float for float/half/bfloat16), so every window sum over channels is a unit-stride,
// vectorisable loop over the tile's positions whatever the memory layout, and each element of x
// (and dy) is read from memory once. The four buffers of a tile stay in L2 (C = 256: 4 x 256
// KiB). Work units are spread over OpenMP threads (pip's torch is OpenMP too:
// torch.set_num_threads applies).
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

// The max-pool of the fused relu -> LRN -> max-pool op: square windows, no padding or dilation;
// Ho, Wo as F.max_pool2d sizes them (ceil_mode included; a clipped last window is read up to
// the edge).
struct PoolTask {
  int64_t H, W, Ho, Wo, kernel, stride;
};

namespace LRN_KERNEL_NS {
namespace {

// The gathered kernels' tile: 256 positions, each channel's row of a tile 1 KiB of contiguous
// memory (64 made strided reads slow); at 512 the backward's four buffers outgrow L2.
constexpr int64_t kTile = 256;

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

// The gradient's last step, at one element: dx = a - 2 alpha beta / size * v * s, where a = dy
// d^-beta, v = x and s is the sum of t = a x / d over the windows holding the element. kRelu (the
// fused op, v = relu(x)): 0 where relu(x) <= 0, as threshold_backward. With alpha or beta 0 the
// second term is 0 and s is not read: s is NaN where k = 0 and a window is all zeros (t = 0 / 0),
// and 0 * NaN made the gradient NaN there (PyTorch's is a: pow's backward drops a zero exponent).
template <typename T, bool kRelu>
inline T lrn_dx(T a, T v, T s, T two_an_beta) {
  const T r = two_an_beta == T(0) ? a : a - two_an_beta * v * s;
  return kRelu && v <= T(0) ? T(0) : r;
}

struct Layout {
  int64_t C, S;
  bool channels_last;
  int64_t at(int64_t c, int64_t s) const { return channels_last ? s * C + c : c * S + s; }
};

// Positions s0 .. s0 + ts - 1 into the first ts columns of a C x ld buffer (the kernels read no
// further: a partial tile costs its own positions only).
template <typename scalar_t, typename acc_t>
void gather(const scalar_t* src, acc_t* buf, const Layout& l, int64_t ld, int64_t s0, int64_t ts) {
  if (l.channels_last) {
    for (int64_t j = 0; j < ts; ++j)
      for (int64_t c = 0; c < l.C; ++c) buf[c * ld + j] = acc_t(src[l.at(c, s0 + j)]);
  } else {
    for (int64_t c = 0; c < l.C; ++c)
      for (int64_t j = 0; j < ts; ++j) buf[c * ld + j] = acc_t(src[l.at(c, s0 + j)]);
  }
}

template <typename scalar_t, typename acc_t>
void scatter(const acc_t* buf, scalar_t* dst, const Layout& l, int64_t ld, int64_t s0, int64_t ts) {
  if (l.channels_last) {
    for (int64_t j = 0; j < ts; ++j)
      for (int64_t c = 0; c < l.C; ++c) dst[l.at(c, s0 + j)] = scalar_t(buf[c * ld + j]);
  } else {
    for (int64_t c = 0; c < l.C; ++c)
      for (int64_t j = 0; j < ts; ++j) dst[l.at(c, s0 + j)] = scalar_t(buf[c * ld + j]);
  }
}

// f(j, s_j) for j < n with s_j the sum of channel rows lo..hi (clipped to 0..C-1), channel c's row
// at ring + (c % R) P (R = C: a C x P buffer). A window of the compile-time width W (5 in every
// AlexNet) that is not clipped is summed in registers, fused with f, so the loop vectorises with
// no stores between.
template <int W, typename T, typename F>
inline void ring_windowed(const T* ring, int64_t R, int64_t P, int64_t lo, int64_t hi, int64_t C, int64_t n,
                          F&& f) {
  if (W > 0 && lo >= 0 && hi < C && hi - lo + 1 == W) {
    const T* r[W > 0 ? W : 1];
    for (int w = 0; w < W; ++w) r[w] = ring + (lo + w < R ? lo + w : (lo + w) % R) * P;  // R = C: no division
    // f writes rows of other buffers than the ring: no dependence between iterations (GCC
    // otherwise gives up on proving that for this many pointers and leaves the loop scalar).
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      T s = 0;
      for (int w = 0; w < W; ++w) s += r[w][j];
      f(j, s);
    }
    return;
  }
  lo = imax(lo, 0);
  hi = imin(hi, C - 1);
  constexpr int64_t kPart = 256;
  T acc[kPart];
  for (int64_t j0 = 0; j0 < n; j0 += kPart) {
    const int64_t m = imin(kPart, n - j0);
    for (int64_t j = 0; j < m; ++j) acc[j] = 0;
    for (int64_t c = lo; c <= hi; ++c) {
      const T* row = ring + (c % R) * P + j0;
      for (int64_t j = 0; j < m; ++j) acc[j] += row[j];
    }
#pragma GCC ivdep
    for (int64_t j = 0; j < m; ++j) f(j0 + j, acc[j]);
  }
}

// The squares of the first ts columns of a C x ld buffer.
template <typename acc_t>
inline void squares(const acc_t* xb, acc_t* sq, int64_t C, int64_t ld, int64_t ts) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < ts; ++j) sq[c * ld + j] = xb[c * ld + j] * xb[c * ld + j];
}

// Runs fn(scratch, i) for every i < total, in parallel; each thread owns `elems` elements of T.
// Throws std::bad_alloc (after the parallel region) if a thread's scratch cannot be allocated.
template <typename T, typename F>
void for_each_unit(int64_t total, int64_t elems, F fn) {
  bool oom = false;
#pragma omp parallel if (total > 1)
  {
    T* scratch = static_cast<T*>(std::malloc(sizeof(T) * size_t(elems)));
    if (scratch == nullptr) {
#pragma omp atomic write
      oom = true;
    }
    // Every thread of the team meets the loop, with or without scratch: one that skipped it left
    // the others waiting at its closing barrier forever (a hang instead of the error).
#pragma omp for schedule(static)
    for (int64_t i = 0; i < total; ++i)
      if (scratch != nullptr) fn(scratch, i);
    std::free(scratch);
  }
  if (oom) throw std::bad_alloc();
}

// Runs fn(bufs, ld, n, s0, ts) over every tile, in parallel; each thread owns `nbuf` C x ld
// buffers, ld = min(kTile, S) (a plane smaller than a tile gets buffers of its own size).
template <typename acc_t, typename F>
void for_each_tile(const LrnTask& t, int nbuf, F fn) {
  const int64_t ld = imax(imin(kTile, t.S), 1), tiles = (t.S + ld - 1) / ld;
  for_each_unit<acc_t>(t.N * tiles, t.C * ld * nbuf, [&](acc_t* bufs, int64_t i) {
    const int64_t s0 = (i % tiles) * ld;
    fn(bufs, ld, i / tiles, s0, imin(ld, t.S - s0));
  });
}

template <typename scalar_t, typename acc_t, bool kBeta075, int W>
void forward_kernel(const scalar_t* x, scalar_t* y, const LrnTask& t) {
  const acc_t k = t.k, an = t.alpha / t.size, beta = t.beta;
  const int64_t C = t.C, pre = t.size / 2, post = (t.size - 1) / 2;
  const Layout l{t.C, t.S, t.channels_last};
  for_each_tile<acc_t>(t, 2, [&](acc_t* bufs, int64_t ld, int64_t n, int64_t s0, int64_t ts) {
    acc_t *xb = bufs, *sq = bufs + C * ld;
    const int64_t off = n * C * t.S;
    gather(x + off, xb, l, ld, s0, ts);
    squares(xb, sq, C, ld, ts);
    for (int64_t c = 0; c < C; ++c) {
      acc_t* row = xb + c * ld;  // y[c] overwrites x[c]: only row c reads it
      ring_windowed<W>(sq, C, ld, c - pre, c + post, C, ts,
                       [&](int64_t j, acc_t s) { row[j] *= neg_pow<acc_t, kBeta075>(k + an * s, beta); });
    }
    scatter(xb, y + off, l, ld, s0, ts);
  });
}

template <typename scalar_t, typename acc_t, bool kBeta075, int W>
void backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const LrnTask& t) {
  const acc_t k = t.k, an = t.alpha / t.size, beta = t.beta, two_an_beta = 2 * an * beta;
  const int64_t C = t.C, pre = t.size / 2, post = (t.size - 1) / 2;
  const Layout l{t.C, t.S, t.channels_last};
  for_each_tile<acc_t>(t, 4, [&](acc_t* bufs, int64_t ld, int64_t n, int64_t s0, int64_t ts) {
    acc_t *xb = bufs, *gb = bufs + C * ld, *sq = bufs + 2 * C * ld, *tb = bufs + 3 * C * ld;
    const int64_t off = n * C * t.S;
    gather(x + off, xb, l, ld, s0, ts);
    gather(dy + off, gb, l, ld, s0, ts);
    squares(xb, sq, C, ld, ts);
    // Pass 1: a[c] = dy[c] d[c]^-beta (into gb), t[c] = a[c] x[c] / d[c] = dy y / d (into tb).
    for (int64_t c = 0; c < C; ++c) {
      acc_t* g = gb + c * ld;
      const acc_t* xr = xb + c * ld;
      acc_t* tr = tb + c * ld;
      ring_windowed<W>(sq, C, ld, c - pre, c + post, C, ts, [&](int64_t j, acc_t s) {
        const acc_t d = k + an * s;
        g[j] *= neg_pow<acc_t, kBeta075>(d, beta);
        tr[j] = g[j] * xr[j] / d;
      });
    }
    // Pass 2: dx[c] (lrn_dx) over x[c].
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* g = gb + c * ld;
      acc_t* xr = xb + c * ld;  // dx[c] overwrites x[c]
      ring_windowed<W>(tb, C, ld, c - post, c + pre, C, ts,
                       [&](int64_t j, acc_t s) { xr[j] = lrn_dx<acc_t, false>(g[j], xr[j], s, two_an_beta); });
    }
    scatter(xb, dx + off, l, ld, s0, ts);
  });
}

// ---- Contiguous inputs of the op-math type (float, double): no gather or scatter. ----
// Work unit: a chunk of up to P consecutive positions of one sample, swept channel by channel.
// Each channel's row of the chunk is read from x (and dy) and written to y (dx) at its place;
// when the chunk is the whole plane (every AlexNet shape) the sweep reads and writes each
// sample's block front to back, one sequential stream per tensor, which the hardware prefetcher
// follows (tiles of 256 positions across all channels instead read 1 KiB pieces 12 KiB apart, and
// the backward at [32, 96, 55, 55] waited on memory most of its time). Only the rows a channel
// window still needs are kept: rings of R = min(size, C) rows of P, slot c % R for channel c, in
// L2. Every window sum adds its rows in increasing channel order starting from 0, as the
// gathered kernels do: the same bits. kRelu: the input is relu(x) (the fused op), and the
// gradient is masked by it.

template <typename T>
inline T relu_of(T v) {
  return v < T(0) ? T(0) : v;  // NaN stays NaN, as torch.relu
}

// At least 1: the fused pool without LRN (size 0) still sizes its chunks by it (max_chunk).
inline int64_t ring_rows(const LrnTask& t) { return imax(1, imin(t.size, t.C)); }

// The chunk length for rings of `nbuf` x R rows: at most 4096 positions and 64 Ki elements of
// scratch (256 KiB of float), a multiple of 16 (whole cache lines per row).
inline int64_t max_chunk(int64_t R, int nbuf) {
  const int64_t fit = (int64_t(1) << 16) / (nbuf * R) / 16 * 16;
  return imax(16, imin(4096, fit));
}

// Squares of channel c's n positions into its ring slot.
template <typename T, bool kRelu>
inline void square_into(const T* xr, T* ring, int64_t R, int64_t P, int64_t c, int64_t n) {
  T* q = ring + (c % R) * P;
  for (int64_t j = 0; j < n; ++j) {
    const T v = kRelu ? relu_of(xr[j]) : xr[j];
    q[j] = v * v;
  }
}

// The start of both one-pass steps at position j: the square of the newest row (xn, channel
// c + post) into its ring slot qn, and the window sum of squares, rows c - pre .. c + post - 1
// (qw) then the new one, in increasing channel order as ring_windowed adds them.
template <typename T, int W, bool kRelu>
inline T square_and_window(const T* xn, T* qn, const T* const* qw, int64_t j) {
  const T vn = kRelu ? relu_of(xn[j]) : xn[j];
  const T q = vn * vn;
  qn[j] = q;
  T s = 0;
  for (int w = 0; w + 1 < W; ++w) s += qw[w][j];
  return s + q;
}

// forward_chunk's steps at channel c for a window of W rows inside 0..C-1, in one pass over the
// positions: the squares of row c + post into the ring, then y[c]. Same operations, same order.
template <typename T, bool kBeta075, int W, bool kRelu>
inline void forward_step(const T* x, T* y, int64_t S, int64_t n, T* ring, int64_t R, int64_t P, int64_t c,
                         const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta;
  const int64_t pre = W / 2, post = (W - 1) / 2;
  const T* qw[W];  // squares of rows c - pre .. c + post - 1 (the last entry unused)
  for (int w = 0; w + 1 < W; ++w) qw[w] = ring + ((c - pre + w) % R) * P;
  T* qn = ring + ((c + post) % R) * P;
  const T *xn = x + (c + post) * S, *xr = x + c * S;
  T* yr = y + c * S;
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const T s = square_and_window<T, W, kRelu>(xn, qn, qw, j);
    const T v = kRelu ? relu_of(xr[j]) : xr[j];
    yr[j] = v * neg_pow<T, kBeta075>(k + an * s, beta);
  }
}

// One chunk of n positions (x, y point at its first position; channel stride S). ring: R x P.
template <typename T, bool kBeta075, int W, bool kRelu>
inline void forward_chunk(const T* x, T* y, int64_t S, int64_t n, T* ring, int64_t P, const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta;
  const int64_t C = t.C, R = ring_rows(t), pre = t.size / 2, post = (t.size - 1) / 2;
  int64_t next = 0;  // the next channel whose squares enter the ring
  for (int64_t c = 0; c < C; ++c) {
    if (W > 0 && c >= pre && c + post < C) {  // the window inside 0..C-1: squares of row c + post
      forward_step<T, kBeta075, (W > 0 ? W : 1), kRelu>(x, y, S, n, ring, R, P, c, t);  // in the same pass
      next = c + post + 1;
      continue;
    }
    for (; next < C && next <= c + post; ++next) square_into<T, kRelu>(x + next * S, ring, R, P, next, n);
    const T* xr = x + c * S;
    T* yr = y + c * S;
    ring_windowed<W>(ring, R, P, c - pre, c + post, C, n, [&](int64_t j, T s) {
      const T v = kRelu ? relu_of(xr[j]) : xr[j];
      yr[j] = v * neg_pow<T, kBeta075>(k + an * s, beta);
    });
  }
}

// backward_chunk's three steps at channel c for a window of W rows that lies inside 0..C-1 and
// whose t window for channel c - pre does too, in one pass over the positions: the squares of row
// c + post, a[c] and t[c], then dx[c - pre]. Same operations, same order, fewer loads and stores.
template <typename T, bool kBeta075, int W, bool kRelu>
inline void backward_step(const T* dy, const T* x, T* dx, int64_t S, int64_t n, T* sq, T* ar, T* tr, int64_t R,
                          int64_t P, int64_t c, const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta, two_an_beta = 2 * an * beta;
  const int64_t pre = W / 2, post = (W - 1) / 2;
  const T* qw[W];  // squares of rows c - pre .. c + post - 1 (the last entry unused)
  const T* tw[W];  // t of rows c - pre - post .. c - 1 (the last entry unused)
  for (int w = 0; w + 1 < W; ++w) {
    qw[w] = sq + ((c - pre + w) % R) * P;
    tw[w] = tr + ((c - pre - post + w) % R) * P;
  }
  T* qn = sq + ((c + post) % R) * P;
  T *a = ar + (c % R) * P, *tc = tr + (c % R) * P;
  const T* af = ar + ((c - pre) % R) * P;
  const T *xn = x + (c + post) * S, *xr = x + c * S, *xf = x + (c - pre) * S, *g = dy + c * S;
  T* dr = dx + (c - pre) * S;
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const T d = k + an * square_and_window<T, W, kRelu>(xn, qn, qw, j);
    const T v = kRelu ? relu_of(xr[j]) : xr[j];
    const T av = g[j] * neg_pow<T, kBeta075>(d, beta);
    const T tv = av * v / d;
    a[j] = av;
    tc[j] = tv;
    T u = 0;
    for (int w = 0; w + 1 < W; ++w) u += tw[w][j];
    u += tv;
    const T vf = kRelu ? relu_of(xf[j]) : xf[j];
    dr[j] = lrn_dx<T, kRelu>(af[j], vf, u, two_an_beta);
  }
}

// One chunk, backward. rings: 3 x R x P (squares, a, t). Channel c's a and t (pass 1) need the
// squares of c - pre .. c + post; dx of channel c - pre (pass 2) then has every t it sums.
template <typename T, bool kBeta075, int W, bool kRelu>
inline void backward_chunk(const T* dy, const T* x, T* dx, int64_t S, int64_t n, T* rings, int64_t P,
                           const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta, two_an_beta = 2 * an * beta;
  const int64_t C = t.C, R = ring_rows(t), pre = t.size / 2, post = (t.size - 1) / 2;
  T *sq = rings, *ar = rings + R * P, *tr = rings + 2 * R * P;
  // dx of channel c (lrn_dx).
  auto finish = [&](int64_t c) {
    const T* xr = x + c * S;
    const T* a = ar + (c % R) * P;
    T* dr = dx + c * S;
    ring_windowed<W>(tr, R, P, c - post, c + pre, C, n, [&](int64_t j, T s) {
      const T v = kRelu ? relu_of(xr[j]) : xr[j];
      dr[j] = lrn_dx<T, kRelu>(a[j], v, s, two_an_beta);
    });
  };
  int64_t next = 0;
  for (int64_t c = 0; c < C; ++c) {
    if (W > 0 && c >= pre + post && c + post < C) {  // every row inside: one pass (below)
      backward_step<T, kBeta075, (W > 0 ? W : 1), kRelu>(dy, x, dx, S, n, sq, ar, tr, R, P, c, t);
      next = c + post + 1;
      continue;
    }
    for (; next < C && next <= c + post; ++next) square_into<T, kRelu>(x + next * S, sq, R, P, next, n);
    // a[c] = dy[c] d[c]^-beta, t[c] = a[c] x[c] / d[c].
    const T *xr = x + c * S, *g = dy + c * S;
    T *a = ar + (c % R) * P, *tc = tr + (c % R) * P;
    ring_windowed<W>(sq, R, P, c - pre, c + post, C, n, [&](int64_t j, T s) {
      const T d = k + an * s;
      const T v = kRelu ? relu_of(xr[j]) : xr[j];
      const T av = g[j] * neg_pow<T, kBeta075>(d, beta);
      a[j] = av;
      tc[j] = av * v / d;
    });
    if (c >= pre) finish(c - pre);
  }
  for (int64_t c = imax(C - pre, 0); c < C; ++c) finish(c);
}

// Runs fn(rings, n, s0, len, P) over every chunk of every sample, in parallel; each thread owns
// nbuf x R x P elements. Chunks are whole planes where the rings allow, cut smaller only so that
// every thread gets two or more.
template <typename T, typename F>
void for_each_chunk(const LrnTask& t, int nbuf, F fn) {
  const int64_t R = ring_rows(t), cap = max_chunk(R, nbuf);
  const int64_t want = (2 * int64_t(omp_get_max_threads()) + t.N - 1) / t.N;  // chunks per sample
  const int64_t per = imax((t.S + cap - 1) / cap, imin(want, (t.S + 15) / 16));
  const int64_t P = imin(cap, (t.S + per - 1) / per + 15) / 16 * 16;
  const int64_t chunks = (t.S + P - 1) / P;
  for_each_unit<T>(t.N * chunks, nbuf * R * P, [&](T* rings, int64_t i) {
    const int64_t s0 = (i % chunks) * P;
    fn(rings, i / chunks, s0, imin(P, t.S - s0), P);
  });
}

template <typename T, bool kBeta075, int W>
void forward_direct(const T* x, T* y, const LrnTask& t) {
  for_each_chunk<T>(t, 1, [&](T* ring, int64_t n, int64_t s0, int64_t len, int64_t P) {
    const int64_t off = n * t.C * t.S + s0;
    forward_chunk<T, kBeta075, W, false>(x + off, y + off, t.S, len, ring, P, t);
  });
}

template <typename T, bool kBeta075, int W>
void backward_direct(const T* dy, const T* x, T* dx, const LrnTask& t) {
  for_each_chunk<T>(t, 3, [&](T* rings, int64_t n, int64_t s0, int64_t len, int64_t P) {
    const int64_t off = n * t.C * t.S + s0;
    backward_chunk<T, kBeta075, W, false>(dy + off, x + off, dx + off, t.S, len, rings, P, t);
  });
}

// ---- The fused relu -> [LRN] -> max-pool op (contiguous NCHW here, channels_last further
// down; float or double). ----
// Work unit: one sample, on one thread (samples spread over threads). Its LRN output (C x H x W)
// goes to a per-thread scratch that stays in L2 (conv1: 1.2 MB, conv2: 0.7 MB) and is pooled
// from there; the pool records, as F.max_pool2d, the flat index (h W + w) of each window's
// first maximum in row-major order (a NaN wins, the last one). Without LRN (size 0) the pool
// reads x directly (and applies the ReLU to its result). Backward: the pooled gradient is
// scattered to those indices (summed in output order, as max_pool2d's backward) into the
// scratch, then LRN backward reads it and x (ReLU'd on the fly) and writes dx masked by
// relu(x) > 0: one pass over x and dx.

// kRelu: the pool is of relu(x), but the scan compares x itself and the ReLU comes after: where
// the window's maximum is above 0 it is the same value at the same first position; where it is
// <= 0 (no NaN) every relu value is 0 and max_pool2d keeps the window's first element. (A ReLU
// inside the scan's loop kept GCC from vectorising it: 5x slower.)
template <typename T, bool kRelu>
inline void pool_result(T best, int32_t at, int32_t first, T* out, int64_t* idx) {
  const bool clip = kRelu && best <= T(0);
  *out = clip ? T(0) : best;
  *idx = clip ? first : at;
}

// One plane. Per output row, every window position (row-major, as max_pool2d scans) is one sweep
// over the row's outputs, so the compare-and-select runs across outputs in vector lanes; each
// output still sees its window in max_pool2d's order ("v > best, or v is NaN"). Windows clipped
// by the edge (ceil_mode) are done one by one. Indices are int32 here (H W < 2^31 checked by the
// caller), stored as int64.
template <typename T, bool kRelu>
inline void max_pool_plane(const T* in, T* out, int64_t* idx, const PoolTask& p) {
  constexpr int64_t kChunk = 64;
  const int64_t s = p.stride, k = p.kernel;
  const int64_t full = p.W >= k ? imin(p.Wo, (p.W - k) / s + 1) : 0;  // outputs with unclipped columns
  T best[kChunk];
  int32_t bi[kChunk];
  for (int64_t ho = 0; ho < p.Ho; ++ho) {
    const int64_t h0 = ho * s, h1 = imin(h0 + k, p.H);
    for (int64_t c0 = 0; c0 < full; c0 += kChunk) {
      const int64_t n = imin(kChunk, full - c0);
      for (int64_t j = 0; j < n; ++j) {
        best[j] = -T(__builtin_inf());
        bi[j] = int32_t(h0 * p.W + (c0 + j) * s);
      }
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t kw = 0; kw < k; ++kw) {
          const int64_t base = h * p.W + c0 * s + kw;
          const T* r = in + base;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const T v = r[j * s];
            const bool take = (v > best[j]) | (v != v);  // no short circuit: stays branch-free
            best[j] = take ? v : best[j];
            bi[j] = take ? int32_t(base + j * s) : bi[j];
          }
        }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t o = ho * p.Wo + c0 + j;
        pool_result<T, kRelu>(best[j], bi[j], int32_t(h0 * p.W + (c0 + j) * s), out + o, idx + o);
      }
    }
    for (int64_t wo = full; wo < p.Wo; ++wo) {
      const int64_t w0 = wo * s, w1 = imin(w0 + k, p.W);
      T b = -T(__builtin_inf());
      int32_t at = int32_t(h0 * p.W + w0);
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const T v = in[h * p.W + w];
          if (v > b || v != v) {
            b = v;
            at = int32_t(h * p.W + w);
          }
        }
      pool_result<T, kRelu>(b, at, int32_t(h0 * p.W + w0), out + ho * p.Wo + wo, idx + ho * p.Wo + wo);
    }
  }
}

// ---- The fused op on channels_last input (N, H, W, C in memory), float or double. ----
// Per position the C channels are contiguous. The LRN window sums run along a copy of the
// position's row padded with zeros (size - 1 in all), so the loop over channels vectorises with
// unaligned loads and needs no clipped case; the pool compares whole channel rows of its window
// positions. Each element sees the same operations in the same order as in the NCHW kernel above
// (a padding zero added first changes no sum), and the pool scans its windows in the same order.

// The window of a channels_last row: channels c - pre .. c + post, with pre and post clipped to
// C - 1 (beyond that they only add padding zeros: a size of 10^6 cost 10^6 additions per element
// and as many padding elements per thread), n = pre + post + 1 elements.
struct RowWindow {
  int64_t pre, post, n;
};
inline RowWindow row_window(const LrnTask& t) {
  const int64_t last = imax(t.C - 1, 0), pre = imin(t.size / 2, last), post = imin((t.size - 1) / 2, last);
  return {pre, post, pre + post + 1};
}

// f(c, s_c) for c < C, with s_c = p[c] + ... + p[c + n - 1] (W: n known at compile time).
template <int W, typename T, typename F>
inline void row_windowed(const T* p, int64_t C, int64_t window, F&& f) {
  const int64_t n = W > 0 ? W : window;
  for (int64_t c = 0; c < C; ++c) {
    T s = 0;
    for (int64_t w = 0; w < n; ++w) s += p[c + w];
    f(c, s);
  }
}

// One position's C channels: y = lrn(relu(x)). q: C + n - 1 elements (row_window), whose first
// pre and last post are zero.
template <typename T, bool kBeta075, int W>
inline void lrn_row_forward(const T* x, T* y, int64_t C, T* q, const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta;
  const RowWindow r = row_window(t);
  T* qc = q + r.pre;
  for (int64_t c = 0; c < C; ++c) {
    const T v = relu_of(x[c]);
    qc[c] = v * v;
  }
  row_windowed<W>(q, C, r.n, [&](int64_t c, T s) { y[c] = relu_of(x[c]) * neg_pow<T, kBeta075>(k + an * s, beta); });
}

// One position's C channels: dx from dl (the gradient at the LRN output) and x, masked by
// relu(x) > 0. bufs: q (C + n - 1, zero padded as above), a (C), tp (C + n - 1: post zeros,
// then t, then pre zeros).
template <typename T, bool kBeta075, int W>
inline void lrn_row_backward(const T* dl, const T* x, T* dx, int64_t C, T* bufs, const LrnTask& t) {
  const T k = t.k, an = t.alpha / t.size, beta = t.beta, two_an_beta = 2 * an * beta;
  const RowWindow r = row_window(t);
  const int64_t pre = r.pre, post = r.post, padded = C + r.n - 1;
  T *q = bufs, *a = bufs + padded, *tp = bufs + padded + C;
  for (int64_t c = 0; c < C; ++c) {
    const T v = relu_of(x[c]);
    q[pre + c] = v * v;
  }
  row_windowed<W>(q, C, r.n, [&](int64_t c, T s) {
    const T d = k + an * s;
    const T ac = dl[c] * neg_pow<T, kBeta075>(d, beta);
    a[c] = ac;
    tp[post + c] = ac * relu_of(x[c]) / d;
  });
  row_windowed<W>(tp, C, r.n, [&](int64_t c, T s) {
    dx[c] = lrn_dx<T, true>(a[c], relu_of(x[c]), s, two_an_beta);
  });
}

// Max-pool of one sample (H, W, C) into (Ho, Wo, C), with max_pool2d's per-plane flat indices.
// best, bi: C elements each.
template <typename T, bool kRelu>
inline void max_pool_cl(const T* in, T* out, int64_t* idx, int64_t C, const PoolTask& p, T* best, int32_t* bi) {
  for (int64_t ho = 0; ho < p.Ho; ++ho)
    for (int64_t wo = 0; wo < p.Wo; ++wo) {
      const int64_t h0 = ho * p.stride, w0 = wo * p.stride;
      const int64_t h1 = imin(h0 + p.kernel, p.H), w1 = imin(w0 + p.kernel, p.W);
      for (int64_t c = 0; c < C; ++c) {
        best[c] = -T(__builtin_inf());
        bi[c] = int32_t(h0 * p.W + w0);
      }
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          const T* r = in + (h * p.W + w) * C;
          const int32_t at = int32_t(h * p.W + w);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T v = r[c];
            const bool take = (v > best[c]) | (v != v);  // no short circuit: stays branch-free
            best[c] = take ? v : best[c];
            bi[c] = take ? at : bi[c];
          }
        }
      const int64_t o = (ho * p.Wo + wo) * C;
      for (int64_t c = 0; c < C; ++c)
        pool_result<T, kRelu>(best[c], bi[c], int32_t(h0 * p.W + w0), out + o + c, idx + o + c);
    }
}

// ---- Both layouts (kCl: channels_last), one sample per work unit. ----

template <typename T, bool kBeta075, int W, bool kLrn, bool kCl>
void rlp_forward(const T* x, T* out, int64_t* idx, const LrnTask& t, const PoolTask& p) {
  const int64_t C = t.C, S = t.S, P = p.Ho * p.Wo;
  // scratch: the LRN output (C S) and the LRN's squares (NCHW: a ring of R x chunk; channels_last:
  // one zero-padded row); channels_last also the pool's best (C) and indices (C int32 in C
  // elements).
  const int64_t R = ring_rows(t), chunk = imin(max_chunk(R, 1), S);
  const int64_t sq_elems = kCl ? C + row_window(t).n - 1 : R * chunk;
  for_each_unit<T>(t.N, (kLrn ? C * S + sq_elems : 0) + (kCl ? 2 * C : 1), [&](T* scratch, int64_t n) {
    const T* in = x + n * C * S;
    T* const os = out + n * C * P;
    int64_t* const is = idx + n * C * P;
    T* const sq = scratch + (kLrn ? C * S : 0);
    if constexpr (kLrn) {
      T* const L = scratch;
      if constexpr (kCl) {
        for (int64_t i = 0; i < sq_elems; ++i) sq[i] = T(0);
        for (int64_t s = 0; s < S; ++s) lrn_row_forward<T, kBeta075, W>(in + s * C, L + s * C, C, sq, t);
      } else {
        for (int64_t s0 = 0; s0 < S; s0 += chunk)
          forward_chunk<T, kBeta075, W, true>(in + s0, L + s0, S, imin(chunk, S - s0), sq, chunk, t);
      }
      in = L;  // pooled from the scratch; without LRN the pool reads x and applies the ReLU
    }
    if constexpr (kCl) {
      T* const best = sq + (kLrn ? sq_elems : 0);
      max_pool_cl<T, !kLrn>(in, os, is, C, p, best, reinterpret_cast<int32_t*>(best + C));
    } else {
      for (int64_t c = 0; c < C; ++c) max_pool_plane<T, !kLrn>(in + c * S, os + c * P, is + c * P, p);
    }
  });
}

template <typename T, bool kBeta075, int W, bool kLrn, bool kCl>
void rlp_backward(const T* gout, const int64_t* idx, const T* x, T* dx, const LrnTask& t, const PoolTask& p) {
  const int64_t C = t.C, S = t.S, P = p.Ho * p.Wo;
  const int64_t R = ring_rows(t), chunk = imin(max_chunk(R, 3), S);
  const int64_t bufs_elems = kCl ? 3 * (C + row_window(t).n - 1) : 3 * R * chunk;  // the LRN backward's buffers
  for_each_unit<T>(t.N, kLrn ? C * S + bufs_elems : 1, [&](T* scratch, int64_t n) {
    const T* xs = x + n * C * S;
    const T* gs = gout + n * C * P;
    const int64_t* is = idx + n * C * P;
    T* dxs = dx + n * C * S;
    // The pooled gradient, summed per channel in output order (as max_pool2d's backward); without
    // LRN straight into dx, then the ReLU mask.
    T* dl = kLrn ? scratch : dxs;
    for (int64_t i = 0; i < C * S; ++i) dl[i] = T(0);
    if constexpr (kCl) {
      for (int64_t o = 0; o < P; ++o)
        for (int64_t c = 0; c < C; ++c) dl[is[o * C + c] * C + c] += gs[o * C + c];
    } else {
      for (int64_t c = 0; c < C; ++c)
        for (int64_t o = 0; o < P; ++o) dl[c * S + is[c * P + o]] += gs[c * P + o];
    }
    if constexpr (kLrn) {
      T* bufs = scratch + C * S;
      if constexpr (kCl) {
        for (int64_t i = 0; i < bufs_elems; ++i) bufs[i] = T(0);
        for (int64_t s = 0; s < S; ++s)
          lrn_row_backward<T, kBeta075, W>(dl + s * C, xs + s * C, dxs + s * C, C, bufs, t);
      } else {
        for (int64_t s0 = 0; s0 < S; s0 += chunk)
          backward_chunk<T, kBeta075, W, true>(dl + s0, xs + s0, dxs + s0, S, imin(chunk, S - s0), bufs, chunk, t);
      }
    } else {
      for (int64_t i = 0; i < C * S; ++i)
        if (relu_of(xs[i]) <= T(0)) dxs[i] = T(0);
    }
  });
}

// The instantiation for the layout, the LRN size (0: none; W = 5 fused (channels_last: a row
// window of 5, unclipped); else any) and beta.
template <bool kCl>
bool window_of_5(const LrnTask& t) {
  return t.size == 5 && (!kCl || row_window(t).n == 5);
}

template <typename T, bool kCl>
void rlp_forward_for(const T* x, T* out, int64_t* idx, const LrnTask& t, const PoolTask& p) {
  const bool b = t.beta == 0.75;
  if (t.size == 0)
    rlp_forward<T, false, 0, false, kCl>(x, out, idx, t, p);
  else if (window_of_5<kCl>(t))
    b ? rlp_forward<T, true, 5, true, kCl>(x, out, idx, t, p) : rlp_forward<T, false, 5, true, kCl>(x, out, idx, t, p);
  else
    b ? rlp_forward<T, true, 0, true, kCl>(x, out, idx, t, p) : rlp_forward<T, false, 0, true, kCl>(x, out, idx, t, p);
}

template <typename T, bool kCl>
void rlp_backward_for(const T* g, const int64_t* idx, const T* x, T* dx, const LrnTask& t, const PoolTask& p) {
  const bool b = t.beta == 0.75;
  if (t.size == 0)
    rlp_backward<T, false, 0, false, kCl>(g, idx, x, dx, t, p);
  else if (window_of_5<kCl>(t))
    b ? rlp_backward<T, true, 5, true, kCl>(g, idx, x, dx, t, p)
      : rlp_backward<T, false, 5, true, kCl>(g, idx, x, dx, t, p);
  else
    b ? rlp_backward<T, true, 0, true, kCl>(g, idx, x, dx, t, p)
      : rlp_backward<T, false, 0, true, kCl>(g, idx, x, dx, t, p);
}

}  // namespace

// Entry points: pick the instantiation for beta and size (W = 5 fused, else any size).
// Contiguous inputs of the op-math type take the direct kernels, the rest gather and scatter.
template <typename A, typename B>
struct Same {
  static constexpr bool value = false;
};
template <typename A>
struct Same<A, A> {
  static constexpr bool value = true;
};

template <typename scalar_t, typename acc_t>
void lrn_forward(const scalar_t* x, scalar_t* y, const LrnTask& t) {
  const bool b = t.beta == 0.75;
  if constexpr (Same<scalar_t, acc_t>::value) {
    if (!t.channels_last) {
      if (t.size == 5)
        b ? forward_direct<acc_t, true, 5>(x, y, t) : forward_direct<acc_t, false, 5>(x, y, t);
      else
        b ? forward_direct<acc_t, true, 0>(x, y, t) : forward_direct<acc_t, false, 0>(x, y, t);
      return;
    }
  }
  if (t.size == 5)
    b ? forward_kernel<scalar_t, acc_t, true, 5>(x, y, t) : forward_kernel<scalar_t, acc_t, false, 5>(x, y, t);
  else
    b ? forward_kernel<scalar_t, acc_t, true, 0>(x, y, t) : forward_kernel<scalar_t, acc_t, false, 0>(x, y, t);
}

template <typename scalar_t, typename acc_t>
void lrn_backward(const scalar_t* dy, const scalar_t* x, scalar_t* dx, const LrnTask& t) {
  const bool b = t.beta == 0.75;
  if constexpr (Same<scalar_t, acc_t>::value) {
    if (!t.channels_last) {
      if (t.size == 5)
        b ? backward_direct<acc_t, true, 5>(dy, x, dx, t) : backward_direct<acc_t, false, 5>(dy, x, dx, t);
      else
        b ? backward_direct<acc_t, true, 0>(dy, x, dx, t) : backward_direct<acc_t, false, 0>(dy, x, dx, t);
      return;
    }
  }
  if (t.size == 5)
    b ? backward_kernel<scalar_t, acc_t, true, 5>(dy, x, dx, t) : backward_kernel<scalar_t, acc_t, false, 5>(dy, x, dx, t);
  else
    b ? backward_kernel<scalar_t, acc_t, true, 0>(dy, x, dx, t) : backward_kernel<scalar_t, acc_t, false, 0>(dy, x, dx, t);
}

// The fused relu -> LRN -> max-pool (t.size 0: relu -> max-pool), float/double, contiguous NCHW
// or channels_last (t.channels_last).
template <typename T>
void relu_lrn_pool_forward(const T* x, T* out, int64_t* idx, const LrnTask& t, const PoolTask& p) {
  t.channels_last ? rlp_forward_for<T, true>(x, out, idx, t, p) : rlp_forward_for<T, false>(x, out, idx, t, p);
}

template <typename T>
void relu_lrn_pool_backward(const T* gout, const int64_t* idx, const T* x, T* dx, const LrnTask& t,
                            const PoolTask& p) {
  t.channels_last ? rlp_backward_for<T, true>(gout, idx, x, dx, t, p)
                  : rlp_backward_for<T, false>(gout, idx, x, dx, t, p);
}

}  // namespace LRN_KERNEL_NS
}  // namespace alexnet_rs
