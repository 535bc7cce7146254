// kernels/ops.cpp: the `alexnet_rs` operator library registered with PyTorch's dispatcher.
//
// One TORCH_LIBRARY block per process (a second aborts it): it lives here, in the static
// library linked into both the `alexnet` binary and the Python extension, and nowhere else.
// Each op has CPU, Meta (shape-only, for FakeTensor / torch.compile / opcheck) and Autograd
// kernels (+ CUDA with the `cuda` feature). Ops: lrn (+ lrn_backward), grouped_conv2d (+ _backward). The Autograd kernel is a torch::autograd::Function
// whose backward calls the separate `*_backward` op through the dispatcher, so gradients work
// the same from Rust (tch), from PyTorch eager and under torch.compile.
#include "ops.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "grouped_conv.h"
#include "linear_sgd.h"
#include "lrn.h"
#include "lrn_pool.h"

namespace alexnet_rs {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, int64_t, double, double, double)>& lrn_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::lrn", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double, double, double)>();
  return op;
}

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double)>&
lrn_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("alexnet_rs::lrn_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double)>();
  return op;
}

using PoolFwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double, double, double, int64_t,
                                                      int64_t, bool);
using PoolBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, double, double,
                              int64_t, int64_t, bool);

const c10::TypedOperatorHandle<PoolFwdSig>& lrn_pool_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::relu_lrn_max_pool2d_with_indices", "")
                             .typed<PoolFwdSig>();
  return op;
}

const c10::TypedOperatorHandle<PoolBwdSig>& lrn_pool_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::relu_lrn_max_pool2d_backward", "")
                             .typed<PoolBwdSig>();
  return op;
}

using ConvSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                           at::IntArrayRef, int64_t);
using ConvBackwardSig = ConvGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                                  at::IntArrayRef, int64_t, std::array<bool, 3>);

const c10::TypedOperatorHandle<ConvSig>& conv_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("alexnet_rs::grouped_conv2d", "").typed<ConvSig>();
  return op;
}

const c10::TypedOperatorHandle<ConvBackwardSig>& conv_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::grouped_conv2d_backward", "")
                             .typed<ConvBackwardSig>();
  return op;
}

// ---- Meta kernels: output metadata only, with the same checks as the real kernels. ----

at::Tensor lrn_forward_meta(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  check_lrn_args(x, LrnParams{size, alpha, beta, k}, "alexnet_rs::lrn");
  return lrn_empty_output(x);
}

at::Tensor lrn_backward_meta(const at::Tensor& grad_out, const at::Tensor& x, int64_t size, double alpha,
                             double beta, double k) {
  check_lrn_backward_args(grad_out, x, LrnParams{size, alpha, beta, k});
  return lrn_empty_output(x);
}

at::Tensor grouped_conv2d_meta(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                               at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  return at::empty(check_conv_args(x, w, b, stride, padding, groups), x.options());
}

ConvGrads grouped_conv2d_backward_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                       at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups,
                                       std::array<bool, 3> mask) {
  check_conv_grad_out(grad_out, x, check_conv_args(x, w, std::nullopt, stride, padding, groups));
  return {mask[0] ? at::empty(x.sizes(), x.options()) : at::Tensor(),
          mask[1] ? at::empty(w.sizes(), w.options()) : at::Tensor(),
          mask[2] ? at::empty({w.size(0)}, w.options()) : at::Tensor()};
}

// ---- Autograd ----
//
// Our backward kernels are not differentiable themselves. Under create_graph=True (grad mode is
// on inside backward: gradient penalties, double backprop, gradgradcheck) the Autograd kernels
// return the gradient of a differentiable composition of ATen ops instead, so that second
// derivatives are exact; a plain backward (grad mode off, also in torch.compile's traced
// backward) runs our kernels.

bool differentiable_backward(const at::Tensor& x) {
  return at::GradMode::is_enabled() && x.requires_grad() && x.numel() > 0;
}

// F.local_response_norm in ATen ops: the window sum of squares as an average pool over the
// channel axis, zero-padded size / 2 before and (size - 1) / 2 after. Padding past C - 1 rows on a
// side is never read by a window that holds a channel: it is clipped, and the average over the
// shorter window rescaled to the sum / size (size 10^6 padded 10^6 zero rows per position).
at::Tensor lrn_composite(const at::Tensor& x, const LrnParams& p) {
  const int64_t n = x.size(0), c = x.size(1), rest = n * c == 0 ? 0 : x.numel() / (n * c);
  const int64_t most = std::max<int64_t>(c - 1, 0);
  const int64_t pre = std::min(p.size / 2, most), post = std::min((p.size - 1) / 2, most), len = pre + post + 1;
  const at::Tensor sq = at::constant_pad_nd((x * x).reshape({n, 1, c, rest}), {0, 0, pre, post});
  at::Tensor div = at::avg_pool2d(sq, {len, 1}, {1, 1}).reshape(x.sizes());
  if (len != p.size) div = div * (double(len) / double(p.size));
  return x / (div * p.alpha + p.k).pow(p.beta);
}

// d<y, g>/dx with its own graph (a nested backward that stops at x).
at::Tensor grad_of(const at::Tensor& y, const at::Tensor& x, const at::Tensor& g) {
  return torch::autograd::grad({y}, {x}, {g}, /*retain_graph=*/true, /*create_graph=*/true)[0];
}


class LrnFunction : public torch::autograd::Function<LrnFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t size, double alpha, double beta,
                            double k) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x});
    ctx->saved_data["size"] = size;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["k"] = k;
    return lrn_op().call(x, size, alpha, beta, k);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    if (differentiable_backward(x)) {
      const LrnParams p{ctx->saved_data["size"].toInt(), ctx->saved_data["alpha"].toDouble(),
                        ctx->saved_data["beta"].toDouble(), ctx->saved_data["k"].toDouble()};
      return {grad_of(lrn_composite(x, p), x, grads[0]), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const at::Tensor dx = lrn_backward_op().call(grads[0], x, ctx->saved_data["size"].toInt(),
                                                 ctx->saved_data["alpha"].toDouble(),
                                                 ctx->saved_data["beta"].toDouble(), ctx->saved_data["k"].toDouble());
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class LrnPoolFunction : public torch::autograd::Function<LrnPoolFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t size, double alpha, double beta,
                            double k, int64_t kernel, int64_t stride, bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, indices] = lrn_pool_op().call(x, size, alpha, beta, k, kernel, stride, ceil_mode);
    ctx->save_for_backward({x, indices});
    ctx->saved_data["size"] = size;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["k"] = k;
    ctx->saved_data["kernel"] = kernel;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->mark_non_differentiable({indices});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    if (differentiable_backward(saved[0])) {
      const LrnParams p{d.at("size").toInt(), d.at("alpha").toDouble(), d.at("beta").toDouble(), d.at("k").toDouble()};
      const at::Tensor r = at::relu(saved[0]);
      // Each window's value at the maximum the forward picked (its indices), not a new max-pool:
      // in bfloat16 the composite LRN rounds differently and a re-pool picked other elements.
      const at::Tensor l = p.size > 0 ? lrn_composite(r, p) : r;
      const at::Tensor& idx = saved[1];
      const at::Tensor y = l.flatten(2).gather(2, idx.flatten(2)).reshape(idx.sizes());
      return {grad_of(y, saved[0], grads[0]), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(),                   at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const at::Tensor dx = lrn_pool_backward_op().call(
        grads[0], saved[0], saved[1], d.at("size").toInt(), d.at("alpha").toDouble(), d.at("beta").toDouble(),
        d.at("k").toDouble(), d.at("kernel").toInt(), d.at("stride").toInt(), d.at("ceil_mode").toBool());
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor lrn_pool_autograd(const at::Tensor& x, int64_t size, double alpha, double beta, double k, int64_t kernel,
                             int64_t stride, bool ceil_mode) {
  return LrnPoolFunction::apply(x, size, alpha, beta, k, kernel, stride, ceil_mode);
}

// Below autograd (inference, tracing): the values only.
at::Tensor lrn_pool_values(const at::Tensor& x, int64_t size, double alpha, double beta, double k, int64_t kernel,
                           int64_t stride, bool ceil_mode) {
  return std::get<0>(lrn_pool_op().call(x, size, alpha, beta, k, kernel, stride, ceil_mode));
}

class GroupedConvFunction : public torch::autograd::Function<GroupedConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& b, at::IntArrayRef stride, at::IntArrayRef padding,
                            int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = b.has_value() && b->defined();
    return conv_op().call(x, w, b, stride, padding, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)};
    const int64_t groups = ctx->saved_data["groups"].toInt();
    if (at::GradMode::is_enabled()) {  // create_graph: ATen's differentiable convolution_backward
      const std::vector<int64_t> bias_sizes{saved[1].size(0)};
      auto [dx, dw, db] = at::convolution_backward(grads[0], saved[0], saved[1], bias_sizes, stride, padding, {1, 1},
                                                   false, {0, 0}, groups, mask);
      return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [dx, dw, db] = conv_backward_op().call(grads[0], saved[0], saved[1], stride, padding, groups, mask);
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor grouped_conv2d_autograd(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                   at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  return GroupedConvFunction::apply(x, w, b, stride, padding, groups);
}

// Autocast: run our convolution in the autocast dtype (bfloat16/float16), as autocast does for
// aten::conv2d. LRN needs no autocast kernel: it runs in whatever dtype the convolution gives it.
template <c10::DeviceType kDevice>
at::Tensor grouped_conv2d_autocast(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                   at::IntArrayRef stride, at::IntArrayRef padding, int64_t groups) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  const auto dt = at::autocast::get_autocast_dtype(kDevice);
  return conv_op().call(at::autocast::cached_cast(dt, x, kDevice), at::autocast::cached_cast(dt, w, kDevice),
                        at::autocast::cached_cast(dt, b, kDevice), stride, padding, groups);
}

at::Tensor lrn_autograd(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  return LrnFunction::apply(x, size, alpha, beta, k);
}

// ---- C ABI helpers ----

char* dup_message(const char* msg) {
  const size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, msg, n + 1);
  return out;
}

// Runs f, storing its tensor in *out; turns any exception into a message and an error kind.
template <typename F>
char* guarded(at::Tensor** out, int32_t* kind, F f) noexcept {
  *out = nullptr;
  *kind = 0;
  try {
    *out = new at::Tensor(f());
    return nullptr;
  } catch (const c10::TypeError& e) {
    *kind = 1;
    return dup_message(e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    *kind = 2;
    return dup_message(e.what_without_backtrace());
  } catch (const c10::Error& e) {
    *kind = 3;
    return dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *kind = 3;
    return dup_message(e.what());
  } catch (...) {
    *kind = 3;
    return dup_message("unknown C++ exception");
  }
}

}  // namespace
}  // namespace alexnet_rs

TORCH_LIBRARY(alexnet_rs, m) {
  m.def("lrn(Tensor x, int size, float alpha, float beta, float k) -> Tensor");
  m.def("lrn_backward(Tensor grad_out, Tensor x, int size, float alpha, float beta, float k) -> Tensor");
  m.def("grouped_conv2d(Tensor x, Tensor w, Tensor? b, int[2] stride, int[2] padding, int groups) -> Tensor");
  m.def(
      "grouped_conv2d_backward(Tensor grad_out, Tensor x, Tensor w, int[2] stride, int[2] padding, int groups, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "relu_lrn_max_pool2d(Tensor x, int size, float alpha, float beta, float k, int kernel, int stride, "
      "bool ceil_mode=False) -> Tensor");
  m.def(
      "relu_lrn_max_pool2d_with_indices(Tensor x, int size, float alpha, float beta, float k, int kernel, int stride, "
      "bool ceil_mode=False) -> (Tensor, Tensor)");
  m.def(
      "relu_lrn_max_pool2d_backward(Tensor grad_out, Tensor x, Tensor indices, int size, float alpha, float beta, "
      "float k, int kernel, int stride, bool ceil_mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(alexnet_rs, CompositeExplicitAutograd, m) {
  m.impl("relu_lrn_max_pool2d", &alexnet_rs::lrn_pool_values);
}

TORCH_LIBRARY_IMPL(alexnet_rs, CPU, m) {
  m.impl("lrn", &alexnet_rs::lrn_forward_cpu);
  m.impl("lrn_backward", &alexnet_rs::lrn_backward_cpu);
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_cpu);
  m.impl("grouped_conv2d_backward", &alexnet_rs::grouped_conv2d_backward_cpu);
  m.impl("relu_lrn_max_pool2d_with_indices", &alexnet_rs::relu_lrn_max_pool2d_cpu);
  m.impl("relu_lrn_max_pool2d_backward", &alexnet_rs::relu_lrn_max_pool2d_backward_cpu);
}

TORCH_LIBRARY_IMPL(alexnet_rs, Meta, m) {
  m.impl("lrn", &alexnet_rs::lrn_forward_meta);
  m.impl("lrn_backward", &alexnet_rs::lrn_backward_meta);
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_meta);
  m.impl("grouped_conv2d_backward", &alexnet_rs::grouped_conv2d_backward_meta);
  m.impl("relu_lrn_max_pool2d_with_indices", &alexnet_rs::relu_lrn_max_pool2d_meta);
  m.impl("relu_lrn_max_pool2d_backward", &alexnet_rs::relu_lrn_max_pool2d_backward_meta);
}

TORCH_LIBRARY_IMPL(alexnet_rs, Autograd, m) {
  m.impl("lrn", &alexnet_rs::lrn_autograd);
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_autograd);
  m.impl("relu_lrn_max_pool2d", &alexnet_rs::lrn_pool_autograd);
  // The backward ops and the pool's forward with indices have no derivative of their own: a
  // backward through them is torch's "not implemented" error (it gave None gradients in silence,
  // with only a warning). Our Autograd kernels call them with grad mode off.
  for (const char* op : {"lrn_backward", "grouped_conv2d_backward", "relu_lrn_max_pool2d_with_indices",
                         "relu_lrn_max_pool2d_backward"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}

TORCH_LIBRARY_IMPL(alexnet_rs, AutocastCPU, m) {
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(alexnet_rs, AutocastCUDA, m) {
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_autocast<c10::DeviceType::CUDA>);
}

#ifdef ALEXNET_WITH_CUDA
TORCH_LIBRARY_IMPL(alexnet_rs, CUDA, m) {
  m.impl("lrn", &alexnet_rs::lrn_forward_cuda);
  m.impl("lrn_backward", &alexnet_rs::lrn_backward_cuda);
  m.impl("grouped_conv2d", &alexnet_rs::grouped_conv2d_cuda);
  m.impl("grouped_conv2d_backward", &alexnet_rs::grouped_conv2d_backward_cuda);
  // No fused CUDA kernel yet: the composition of relu, our lrn and ATen's max-pool (lrn_pool.cpp).
  m.impl("relu_lrn_max_pool2d_with_indices", &alexnet_rs::relu_lrn_max_pool2d_fallback);
  m.impl("relu_lrn_max_pool2d_backward", &alexnet_rs::relu_lrn_max_pool2d_backward_fallback);
}
#endif

extern "C" {

void alexnet_rs_free_error(char* message) { std::free(message); }

char* alexnet_rs_lrn(const at::Tensor* x, int64_t size, double alpha, double beta, double k, at::Tensor** out,
                     int32_t* kind) {
  return alexnet_rs::guarded(out, kind, [&] { return alexnet_rs::lrn_op().call(*x, size, alpha, beta, k); });
}

char* alexnet_rs_relu_lrn_max_pool2d(const at::Tensor* x, int64_t size, double alpha, double beta, double k,
                                     int64_t kernel, int64_t stride, int32_t ceil_mode, at::Tensor** out,
                                     int32_t* kind) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::relu_lrn_max_pool2d", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double, double, double, int64_t, int64_t,
                                               bool)>();
  return alexnet_rs::guarded(
      out, kind, [&] { return op.call(*x, size, alpha, beta, k, kernel, stride, ceil_mode != 0); });
}

char* alexnet_rs_grouped_conv2d(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, int64_t stride_h,
                                int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t groups, at::Tensor** out,
                                int32_t* kind) {
  return alexnet_rs::guarded(out, kind, [&] {
    const std::optional<at::Tensor> bias = b != nullptr ? std::optional<at::Tensor>(*b) : std::nullopt;
    return alexnet_rs::conv_op().call(*x, *w, bias, {stride_h, stride_w}, {pad_h, pad_w}, groups);
  });
}

char* alexnet_rs_linear_sgd(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, const at::Tensor* v,
                            double lr, double momentum, double wd, int32_t paper, at::Tensor** out, int32_t* kind) {
  return alexnet_rs::guarded(out, kind,
                             [&] { return alexnet_rs::linear_sgd(*x, *w, *b, *v, lr, momentum, wd, paper != 0); });
}

char* alexnet_rs_channels_last(const at::Tensor* x, at::Tensor** out, int32_t* kind) {
  return alexnet_rs::guarded(out, kind, [&] {
    TORCH_CHECK_VALUE(x->dim() == 4, "channels_last needs a 4-D tensor, got ", x->dim(), "-D");
    return x->contiguous(at::MemoryFormat::ChannelsLast);
  });
}

char* alexnet_rs_seeded_fill(const at::Tensor* const* tensors, const int32_t* normal, int64_t n, uint64_t seed,
                             at::Tensor** out, int32_t* kind) {
  return alexnet_rs::guarded(out, kind, [&] {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_VALUE(tensors[i]->device().is_cpu(), "seeded_fill draws on the CPU");
      if (normal[i] != 0) {
        tensors[i]->normal_(0.0, 1.0, gen);
      } else {
        tensors[i]->uniform_(0.0, 1.0, gen);
      }
    }
    return at::empty({0});
  });
}

// No exception crosses into Rust: a layout without strides (sparse) is simply not channels_last.
int32_t alexnet_rs_is_channels_last(const at::Tensor* x) noexcept {
  try {
    return x->layout() == at::kStrided && x->dim() == 4 && x->is_contiguous(at::MemoryFormat::ChannelsLast) &&
                   !x->is_contiguous()
               ? 1
               : 0;
  } catch (...) {
    return 0;
  }
}

// Autocast scope for `cuda` (1) or the CPU (0) in bfloat16. enter returns the previous state
// (enabled flag in bit 0, dtype in the bits above) for exit to restore.
int64_t alexnet_rs_autocast_enter(int32_t cuda) noexcept {
  const auto dev = cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  const int64_t prev = (int64_t(at::autocast::get_autocast_dtype(dev)) << 1) | (at::autocast::is_autocast_enabled(dev) ? 1 : 0);
  at::autocast::set_autocast_dtype(dev, at::kBFloat16);
  at::autocast::set_autocast_enabled(dev, true);
  at::autocast::increment_nesting();
  return prev;
}

int32_t alexnet_rs_autocast_dtype(int32_t cuda) noexcept {
  const auto dev = cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  return at::autocast::is_autocast_enabled(dev) ? int32_t(at::autocast::get_autocast_dtype(dev)) : -1;
}

int32_t alexnet_rs_grad_enabled() noexcept { return at::GradMode::is_enabled() ? 1 : 0; }

void alexnet_rs_autocast_exit(int32_t cuda, int64_t prev) noexcept {
  const auto dev = cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(dev, (prev & 1) != 0);
  at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev >> 1));
}

}  // extern "C"
