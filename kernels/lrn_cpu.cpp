// kernels/lrn_cpu.cpp: fused, multi-threaded CPU LRN, forward and backward (formula: lrn.h).
//
// Layout: the input is viewed as (N, C, S), S = product of the spatial dims, stored either
// channel-major (contiguous: channel stride S) or channel-minor (channels_last: stride 1).
// Work unit: a tile of up to kTile consecutive spatial positions of one sample, all C
// channels. The tile is gathered into C x kTile buffers of the op-math type (float for
// float/half/bfloat16), so every window sum over channels is a unit-stride, vectorisable loop
// over the tile's positions whatever the memory layout, and each element of x (and dy) is read
// from memory once. The four buffers of a tile stay in L2 (C = 256: 4 x 64 KiB). Tiles are
// spread over threads with at::parallel_for (OpenMP in pip's torch).
#include "lrn.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace alexnet_rs {

namespace {

constexpr int64_t kTile = 64;

// d^-beta. beta = 0.75 (every AlexNet preset) becomes two square roots, which vectorise.
template <typename acc_t, bool kBeta075>
inline acc_t neg_pow(acc_t d, acc_t beta) {
  if constexpr (kBeta075) {
    const acc_t r = std::sqrt(d);
    return acc_t(1) / (r * std::sqrt(r));
  } else {
    return std::pow(d, -beta);
  }
}

// Index maps of one sample's (C, S) block in either layout.
struct Layout {
  int64_t C, S;
  bool channels_last;
  int64_t at(int64_t c, int64_t s) const { return channels_last ? s * C + c : c * S + s; }
};

template <typename scalar_t, typename acc_t>
void gather(const scalar_t* src, acc_t* buf, const Layout& l, int64_t s0, int64_t ts) {
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

// Sizes a tile buffer; a partial tile's unused columns are zeroed so they stay finite.
template <typename acc_t>
void prepare(std::vector<acc_t>& buf, int64_t C, int64_t ts) {
  buf.resize(C * kTile);
  if (ts < kTile) std::fill(buf.begin(), buf.end(), acc_t(0));
}

// For j < n: f(j, s_j) with s_j the sum of rows lo..hi (clipped to 0..C-1) of the C x kTile
// buffer at column j. A window of the compile-time width W (5 in every AlexNet) that is not
// clipped is summed in registers, fused with f, so the loop vectorises with no stores between.
template <int W, typename acc_t, typename F>
inline void windowed(const acc_t* buf, int64_t lo, int64_t hi, int64_t C, int64_t n, F&& f) {
  if (W > 0 && lo >= 0 && hi < C && hi - lo + 1 == W) {
    const acc_t* r = buf + lo * kTile;
    for (int64_t j = 0; j < n; ++j) {
      acc_t s = 0;
      for (int w = 0; w < W; ++w) s += r[w * kTile + j];
      f(j, s);
    }
    return;
  }
  acc_t acc[kTile];
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, C - 1);
  for (int64_t j = 0; j < n; ++j) acc[j] = 0;
  for (int64_t r = lo; r <= hi; ++r)
    for (int64_t j = 0; j < n; ++j) acc[j] += buf[r * kTile + j];
  for (int64_t j = 0; j < n; ++j) f(j, acc[j]);
}

// Runs fn(n, s0, ts) over every tile of the N samples, in parallel.
template <typename F>
void for_each_tile(int64_t N, int64_t S, F fn) {
  const int64_t tiles = (S + kTile - 1) / kTile;
  at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s0 = (t % tiles) * kTile;
      fn(t / tiles, s0, std::min(kTile, S - s0));
    }
  });
}

template <typename scalar_t, bool kBeta075, int W>
void forward_kernel(const scalar_t* x, scalar_t* y, int64_t N, const Layout& l, const LrnParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = p.k, an = p.alpha / p.size, beta = p.beta;
  const int64_t C = l.C, pre = p.pre(), post = p.post();
  for_each_tile(N, l.S, [&](int64_t n, int64_t s0, int64_t ts) {
    thread_local std::vector<acc_t> xb, sq;
    prepare(xb, C, ts);
    sq.resize(C * kTile);
    const int64_t off = n * C * l.S;
    gather(x + off, xb.data(), l, s0, ts);
    for (int64_t i = 0; i < C * kTile; ++i) sq[i] = xb[i] * xb[i];
    for (int64_t c = 0; c < C; ++c) {
      acc_t* row = xb.data() + c * kTile;  // y[c] overwrites x[c]: only row c reads it
      windowed<W>(sq.data(), c - pre, c + post, C, kTile,
                  [&](int64_t j, acc_t s) { row[j] *= neg_pow<acc_t, kBeta075>(k + an * s, beta); });
    }
    scatter(xb.data(), y + off, l, s0, ts);
  });
}

template <typename scalar_t, bool kBeta075, int W>
void backward_kernel(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t N, const Layout& l,
                     const LrnParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t k = p.k, an = p.alpha / p.size, beta = p.beta, two_an_beta = 2 * an * beta;
  const int64_t C = l.C, pre = p.pre(), post = p.post();
  for_each_tile(N, l.S, [&](int64_t n, int64_t s0, int64_t ts) {
    thread_local std::vector<acc_t> xb, gb, sq, tb;
    prepare(xb, C, ts);
    prepare(gb, C, ts);
    sq.resize(C * kTile);
    tb.resize(C * kTile);
    const int64_t off = n * C * l.S;
    gather(x + off, xb.data(), l, s0, ts);
    gather(dy + off, gb.data(), l, s0, ts);
    for (int64_t i = 0; i < C * kTile; ++i) sq[i] = xb[i] * xb[i];
    // Pass 1: a[c] = dy[c] d[c]^-beta (into gb), t[c] = a[c] x[c] / d[c] = dy y / d (into tb).
    for (int64_t c = 0; c < C; ++c) {
      acc_t* g = gb.data() + c * kTile;
      const acc_t* xr = xb.data() + c * kTile;
      acc_t* t = tb.data() + c * kTile;
      windowed<W>(sq.data(), c - pre, c + post, C, kTile, [&](int64_t j, acc_t s) {
        const acc_t d = k + an * s;
        g[j] *= neg_pow<acc_t, kBeta075>(d, beta);
        t[j] = g[j] * xr[j] / d;
      });
    }
    // Pass 2: dx[c] = a[c] - 2 alpha beta / size * x[c] * sum of t over the windows holding c.
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* g = gb.data() + c * kTile;
      acc_t* xr = xb.data() + c * kTile;  // dx[c] overwrites x[c]
      windowed<W>(tb.data(), c - post, c + pre, C, kTile,
                  [&](int64_t j, acc_t s) { xr[j] = g[j] - two_an_beta * xr[j] * s; });
    }
    scatter(xb.data(), dx + off, l, s0, ts);
  });
}

// Instantiates f<scalar_t, kBeta075, W>() for the runtime beta and size (W = 0: any size).
template <typename scalar_t, template <typename, bool, int> class K, typename... Args>
void dispatch_variant(const LrnParams& p, Args&&... args) {
  const bool b075 = p.beta == 0.75;
  if (p.size == 5) {
    b075 ? K<scalar_t, true, 5>::run(args...) : K<scalar_t, false, 5>::run(args...);
  } else {
    b075 ? K<scalar_t, true, 0>::run(args...) : K<scalar_t, false, 0>::run(args...);
  }
}

template <typename scalar_t, bool B, int W>
struct Forward {
  template <typename... A>
  static void run(A&&... a) { forward_kernel<scalar_t, B, W>(a...); }
};

template <typename scalar_t, bool B, int W>
struct Backward {
  template <typename... A>
  static void run(A&&... a) { backward_kernel<scalar_t, B, W>(a...); }
};

Layout layout_of(const LrnLayout& l) { return Layout{l.C, l.S, l.channels_last()}; }

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

}  // namespace

at::Tensor lrn_forward_cpu(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  const LrnParams p{size, alpha, beta, k};
  check_lrn_args(x, p, "alexnet_rs::lrn");
  check_cpu(x, "alexnet_rs::lrn", "x");
  const LrnLayout ll = lrn_layout(x);
  const at::Tensor xc = x.contiguous(ll.fmt);
  at::Tensor y = lrn_empty_output(x);
  if (x.numel() == 0) return y;
  const Layout l = layout_of(ll);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lrn_forward_cpu", [&] {
    dispatch_variant<scalar_t, Forward>(p, xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), x.size(0), l, p);
  });
  return y;
}

at::Tensor lrn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, int64_t size, double alpha,
                            double beta, double k) {
  const LrnParams p{size, alpha, beta, k};
  check_lrn_backward_args(grad_out, x, p);
  check_cpu(x, "alexnet_rs::lrn_backward", "x");
  check_cpu(grad_out, "alexnet_rs::lrn_backward", "grad_out");
  const LrnLayout ll = lrn_layout(x);
  const at::Tensor xc = x.contiguous(ll.fmt);
  // The incoming gradient may be expanded (stride 0) or in another layout: match x's.
  const at::Tensor gc = grad_out.contiguous(ll.fmt);
  at::Tensor dx = lrn_empty_output(x);
  if (x.numel() == 0) return dx;
  const Layout l = layout_of(ll);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lrn_backward_cpu", [&] {
    const auto* g = gc.const_data_ptr<scalar_t>();
    const auto* xp = xc.const_data_ptr<scalar_t>();
    auto* out = dx.mutable_data_ptr<scalar_t>();
    dispatch_variant<scalar_t, Backward>(p, g, xp, out, x.size(0), l, p);
  });
  return dx;
}

}  // namespace alexnet_rs
