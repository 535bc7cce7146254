// kernels/linear_sgd_cpu.cpp: a fully connected layer whose backward applies the SGD update to
// its weight on the way (the Rust training loop's "update in backward", src/optim.rs).
//
// Unfused, one training step streams an FC weight matrix five times after the forward (fc6:
// 4096 x 9216, 151 MB): the input-gradient GEMM dy @ W reads W, the weight-gradient GEMM
// dy^T @ x writes g, the SGD pass reads W, g, v and writes W, v. At small batches those passes
// are memory-bound. Here the backward reads W and v once and writes them once: per block of four
// rows it forms the rows' gradient g = dy^T x (rank B, in registers; g is never stored), adds
// the rows' share of dx = dy @ W with the old weights, and updates v and W as the SGD pass would
// (sgd.h). The weight gets no `.grad`; the bias's gradient is the ordinary one.
//
// Work split: each thread takes a contiguous range of rows and accumulates its share of dx in a
// private tile, summed in thread order at the end (deterministic for a given thread count). The
// columns are cut into tiles small enough that the packed input tile and a thread's dx tile stay
// in L2. Reading x's rows in place, K floats apart (36 KiB at fc6), was half as fast: the packed
// rows are padded by 16 floats, so that they are not a multiple of 4 KiB apart either. Above a batch of 32 ATen's GEMMs are
// faster (BENCHMARKS.md) and the layer is not fused (alexnet_rs_linear_sgd_ok); so is it on CPUs
// without AVX-512 (see run_rows).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "linear_sgd.h"
#include "ops.h"
#include "sgd.h"

namespace alexnet_rs {
namespace {

// 16 floats, one AVX-512 register.
typedef float Vec16 __attribute__((vector_size(64)));

struct RowsTask {
  const float* xs;  // [B][ld]: the input's columns k0 .. k0 + kn, packed
  float* acc;       // [B][ld]: this thread's share of dx for those columns
  const float* dT;  // [N][B]: dy transposed, so a row's B factors are contiguous
  float* w;         // W and v at column k0 (row stride k)
  float* v;
  int64_t batch, k, ld, kn;
  SgdScalars s;
};

// Vectors go by reference only (GCC warns that passing a 64-byte vector by value has another ABI
// with AVX-512 than without).
template <typename T>
inline __attribute__((always_inline)) void load(T& t, const float* p) {
  std::memcpy(&t, p, sizeof(T));
}

template <typename T>
inline __attribute__((always_inline)) void store(float* p, const T& t) {
  std::memcpy(p, &t, sizeof(T));
}

// Rows j .. j + R - 1, columns c .. c + lanes(T) - 1 (T: Vec16 or float for the tail).
template <int R, typename T>
inline __attribute__((always_inline)) void rows_at(const RowsTask& a, int64_t j, int64_t c) {
  T w[R], g[R];
  for (int r = 0; r < R; ++r) {
    load(w[r], a.w + (j + r) * a.k + c);
    g[r] = T{};
  }
  const float* d = a.dT + j * a.batch;
  for (int64_t b = 0; b < a.batch; ++b) {
    T x, acc;
    load(x, a.xs + b * a.ld + c);
    load(acc, a.acc + b * a.ld + c);
    for (int r = 0; r < R; ++r) {
      const float e = d[r * a.batch + b];
      g[r] = g[r] + e * x;      // g[j][c] = sum_b dy[b][j] x[b][c]
      acc = acc + e * w[r];  // dx[b][c] += dy[b][j] W[j][c], with the old W
    }
    store(a.acc + b * a.ld + c, acc);
  }
  for (int r = 0; r < R; ++r) {
    T v;
    load(v, a.v + (j + r) * a.k + c);
    sgd_update(w[r], v, g[r], a.s);
    store(a.v + (j + r) * a.k + c, v);
    store(a.w + (j + r) * a.k + c, w[r]);
  }
}

template <int R>
inline __attribute__((always_inline)) void rows(const RowsTask& a, int64_t j) {
  int64_t c = 0;
  for (; c + 16 <= a.kn; c += 16) rows_at<R, Vec16>(a, j, c);
  for (; c < a.kn; ++c) rows_at<R, float>(a, j, c);
}

// One thread's rows [j0, j1), for AVX-512 CPUs only: the same code built for AVX2 + FMA (8-float
// vectors) measured no faster than the unfused GEMMs and update pass (42-44 against ~42 ms at
// fc6, batch 16), and for SSE slower (67 ms), so other CPUs keep the unfused path.
__attribute__((target("avx512f"))) void run_rows(const RowsTask& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) rows<4>(a, j);
  for (; j < j1; ++j) rows<1>(a, j);
}

// dx = dy @ W (the old W); W and v updated with g = dy^T x. All float32 CPU, contiguous.
at::Tensor backward_and_update(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w, const at::Tensor& v,
                               const SgdScalars& s) {
  const int64_t batch = x.size(0), k = x.size(1), n = w.size(0);
  const at::Tensor dT = dy.t().contiguous();
  const at::Tensor dx = at::empty({batch, k}, x.options());
  // Column tiles: the packed input tile and one thread's dx tile at most 1 MiB each (L2).
  const int64_t max_cols = std::max<int64_t>(256, (int64_t{1} << 18) / batch);
  const int64_t tiles = (k + max_cols - 1) / max_cols;
  const int64_t cols = ((k + tiles - 1) / tiles + 15) / 16 * 16;
  const int64_t ld = cols + 16;
  const int64_t threads = at::get_num_threads();
  const at::Tensor xs = at::empty({batch, ld}, x.options());
  const at::Tensor acc = at::empty({threads, batch, ld}, x.options());
  const float* xp = x.const_data_ptr<float>();
  float* dxp = dx.mutable_data_ptr<float>();
  float* xsp = xs.mutable_data_ptr<float>();
  float* accp = acc.mutable_data_ptr<float>();
  std::vector<char> used(threads);
  RowsTask task{xsp, nullptr, dT.const_data_ptr<float>(), nullptr, nullptr, batch, k, ld, 0, s};
  const int64_t blocks = (n + 3) / 4;
  for (int64_t k0 = 0; k0 < k; k0 += cols) {
    const int64_t kn = std::min(cols, k - k0);
    for (int64_t b = 0; b < batch; ++b) std::memcpy(xsp + b * ld, xp + b * k + k0, sizeof(float) * kn);
    task.w = w.mutable_data_ptr<float>() + k0;
    task.v = v.mutable_data_ptr<float>() + k0;
    task.kn = kn;
    // One contiguous range of row blocks per thread; each zeroes and fills its own dx tile and
    // marks it as used (a thread with no rows leaves its tile out of the sum).
    std::fill(used.begin(), used.end(), 0);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      const int64_t t = std::min<int64_t>(at::get_thread_num(), threads - 1);
      RowsTask mine = task;
      mine.acc = accp + t * batch * ld;
      std::memset(mine.acc, 0, sizeof(float) * batch * ld);
      used[t] = 1;
      run_rows(mine, b0 * 4, std::min(n, b1 * 4));
    });
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        float* out = dxp + b * k + k0;
        std::memset(out, 0, sizeof(float) * kn);
        for (int64_t t = 0; t < threads; ++t) {
          if (!used[t]) continue;
          const float* part = accp + (t * batch + b) * ld;
          for (int64_t c = 0; c < kn; ++c) out[c] += part[c];
        }
      }
    });
  }
  // Written through raw pointers: bump the version counters, as in-place ops would.
  w.unsafeGetTensorImpl()->bump_version();
  v.unsafeGetTensorImpl()->bump_version();
  return dx;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LinearSgdFunction : public torch::autograd::Function<LinearSgdFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            const at::Tensor& v, double lr, double momentum, double wd, bool paper) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, w, v});
    ctx->saved_data["lr"] = lr;
    ctx->saved_data["momentum"] = momentum;
    ctx->saved_data["wd"] = wd;
    ctx->saved_data["paper"] = paper;
    return at::addmm(b, x, w.t());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor dy = grads[0].contiguous();
    const auto s = SgdScalars::make(ctx->saved_data["lr"].toDouble(), ctx->saved_data["momentum"].toDouble(),
                                    ctx->saved_data["wd"].toDouble(), ctx->saved_data["paper"].toBool());
    at::Tensor dx = backward_and_update(dy, saved[0], saved[1], saved[2], s);
    // No gradient for W (already updated) or v; the bias's as F.linear's.
    return {dx, at::Tensor(), dy.sum(0), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_sgd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& v, double lr,
                      double momentum, double wd, bool paper) {
  TORCH_CHECK_VALUE(linear_sgd_ok(x, w, b, v), "linear_sgd: x, w, b, v do not qualify (alexnet_rs_linear_sgd_ok)");
  return LinearSgdFunction::apply(x, w, b, v, lr, momentum, wd, paper);
}

bool linear_sgd_ok(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& v) {
  const auto f32 = [](const at::Tensor& t, int64_t dim) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == dim &&
           t.is_contiguous() && !t.is_conj() && !t.is_neg();
  };
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && at::GradMode::is_enabled() && f32(x, 2) && f32(w, 2) && f32(b, 1) && f32(v, 2) && x.size(0) >= 1 &&
         x.size(0) <= kLinearSgdMaxBatch && x.size(1) >= 1 && x.size(1) == w.size(1) && w.size(0) >= 1 &&
         b.size(0) == w.size(0) && v.sizes() == w.sizes() && w.requires_grad() && w.is_leaf() && !v.requires_grad() &&
         apart({&x, &w, &b, &v});
}

}  // namespace alexnet_rs

extern "C" int32_t alexnet_rs_linear_sgd_ok(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b,
                                            const at::Tensor* v) noexcept {
  try {
    return alexnet_rs::linear_sgd_ok(*x, *w, *b, *v) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}
