// kernels/lrn_pool.cpp: argument checks, Meta kernels and the stock-op composition of the fused
// relu -> LRN -> max-pool op (lrn_pool.h). The composition is the CUDA kernel (no fused CUDA
// kernel yet) and the CPU path for inputs the fused CPU kernel does not take.
#include "lrn_pool.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>

namespace alexnet_rs {
namespace {

// a / b rounded towards negative infinity (b > 0), as ATen's div_rtn.
int64_t div_floor(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

at::Tensor call_lrn(const at::Tensor& x, const LrnParams& p) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("alexnet_rs::lrn", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, double, double, double)>();
  return op.call(x, p.size, p.alpha, p.beta, p.k);
}

at::Tensor call_lrn_backward(const at::Tensor& g, const at::Tensor& x, const LrnParams& p) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("alexnet_rs::lrn_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double)>();
  return op.call(g, x, p.size, p.alpha, p.beta, p.k);
}

LrnPoolParams params(int64_t size, double alpha, double beta, double k, int64_t kernel, int64_t stride,
                     bool ceil_mode) {
  return LrnPoolParams{LrnParams{size, alpha, beta, k}, kernel, stride, ceil_mode};
}

}  // namespace

int64_t pool_out_size(int64_t in, int64_t kernel, int64_t stride, bool ceil_mode) {
  int64_t out = div_floor(in - kernel + (ceil_mode ? stride - 1 : 0), stride) + 1;
  // The last window must start inside the input (PyTorch's rule for ceil_mode).
  if (ceil_mode && (out - 1) * stride >= in) --out;
  return out;
}

std::pair<int64_t, int64_t> check_lrn_pool_args(const at::Tensor& x, const LrnPoolParams& p, const char* op) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": expected a 4-D input (N, C, H, W), got a ", x.dim(), "-D tensor of shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(kernel_dtype(x.scalar_type()), op,
                   ": expected a float16, bfloat16, float32 or float64 input, got dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(p.lrn.size >= 0, op, ": size must be >= 0 (0: no normalisation), got ", p.lrn.size);
  if (p.lrn.size > 0) check_lrn_args(x, p.lrn, op);
  // Bounded so that the output size's arithmetic cannot overflow (pool_out_size).
  constexpr int64_t kMax = int64_t(1) << 31;
  TORCH_CHECK_VALUE(p.kernel >= 1 && p.stride >= 1 && p.kernel <= kMax && p.stride <= kMax, op,
                    ": kernel and stride must be in 1..=", kMax, ", got kernel ", p.kernel, " stride ", p.stride);
  const int64_t ho = pool_out_size(x.size(2), p.kernel, p.stride, p.ceil_mode);
  const int64_t wo = pool_out_size(x.size(3), p.kernel, p.stride, p.ceil_mode);
  TORCH_CHECK_VALUE(ho >= 1 && wo >= 1, op, ": input of ", x.size(2), "x", x.size(3), " pixels is smaller than the ",
                    p.kernel, "x", p.kernel, " pooling window");
  return {ho, wo};
}

void check_lrn_pool_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& indices,
                                  const LrnPoolParams& p) {
  const char* op = "alexnet_rs::relu_lrn_max_pool2d_backward";
  const auto [ho, wo] = check_lrn_pool_args(x, p, op);
  const std::vector<int64_t> expect{x.size(0), x.size(1), ho, wo};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expect) && indices.sizes() == at::IntArrayRef(expect), op,
                    ": grad_out ", grad_out.sizes(), " and indices ", indices.sizes(), " must have the output shape ",
                    at::IntArrayRef(expect));
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(), op, ": grad_out dtype ", grad_out.scalar_type(),
                   " differs from x dtype ", x.scalar_type());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device() && indices.device() == x.device(), op,
                    ": grad_out, x and indices must be on one device");
}

void check_lrn_pool_indices(const at::Tensor& x, const at::Tensor& indices, const char* op) {
  // One outside the plane wrote outside dx: a segfault on the CPU (ours, as ATen's
  // max_pool2d_with_indices_backward), an illegal address that ends the CUDA context on a GPU.
  if (indices.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(indices);
  const int64_t first = lo.item<int64_t>(), last = hi.item<int64_t>();
  TORCH_CHECK_VALUE(first >= 0 && last < x.size(2) * x.size(3), op, ": indices must index the ", x.size(2), "x",
                    x.size(3), " plane (0 to ", x.size(2) * x.size(3) - 1, "), got ", first, " to ", last);
}

// The outputs, (N, C, ho, wo) in x's memory format, and their int64 indices (not yet written).
std::tuple<at::Tensor, at::Tensor> lrn_pool_outputs(const at::Tensor& x, int64_t ho, int64_t wo) {
  const auto fmt = lrn_memory_format(x);
  return {at::empty({x.size(0), x.size(1), ho, wo}, x.options().memory_format(fmt)),
          at::empty({x.size(0), x.size(1), ho, wo}, x.options().dtype(at::kLong).memory_format(fmt))};
}

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_meta(const at::Tensor& x, int64_t size, double alpha,
                                                            double beta, double k, int64_t kernel, int64_t stride,
                                                            bool ceil_mode) {
  const auto p = params(size, alpha, beta, k, kernel, stride, ceil_mode);
  const auto [ho, wo] = check_lrn_pool_args(x, p, "alexnet_rs::relu_lrn_max_pool2d");
  return lrn_pool_outputs(x, ho, wo);
}

at::Tensor relu_lrn_max_pool2d_backward_meta(const at::Tensor& grad_out, const at::Tensor& x,
                                             const at::Tensor& indices, int64_t size, double alpha, double beta,
                                             double k, int64_t kernel, int64_t stride, bool ceil_mode) {
  check_lrn_pool_backward_args(grad_out, x, indices, params(size, alpha, beta, k, kernel, stride, ceil_mode));
  return lrn_empty_output(x);
}

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_composite(const at::Tensor& x, const LrnPoolParams& p) {
  const auto [ho, wo] = check_lrn_pool_args(x, p, "alexnet_rs::relu_lrn_max_pool2d");
  // No elements: the shapes the fused kernel and Meta give (ATen's pool refuses zero channels).
  if (x.numel() == 0) return lrn_pool_outputs(x, ho, wo);
  const at::AutoDispatchBelowADInplaceOrView guard;  // no autograd graph inside an op
  const at::Tensor r = at::relu(x.contiguous(lrn_memory_format(x)));
  const at::Tensor l = p.lrn.size > 0 ? call_lrn(r, p.lrn) : r;
  return at::max_pool2d_with_indices(l, {p.kernel, p.kernel}, {p.stride, p.stride}, {0, 0}, {1, 1}, p.ceil_mode);
}

at::Tensor relu_lrn_max_pool2d_backward_composite(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& indices, const LrnPoolParams& p) {
  check_lrn_pool_backward_args(grad_out, x, indices, p);
  if (x.numel() == 0) return lrn_empty_output(x);
  const at::AutoDispatchBelowADInplaceOrView guard;
  const at::Tensor r = at::relu(x.contiguous(lrn_memory_format(x)));
  const at::Tensor dl = at::max_pool2d_with_indices_backward(grad_out, r, {p.kernel, p.kernel}, {p.stride, p.stride},
                                                             {0, 0}, {1, 1}, p.ceil_mode, indices);
  const at::Tensor dr = p.lrn.size > 0 ? call_lrn_backward(dl, r, p.lrn) : dl;
  return at::threshold_backward(dr, r, 0).contiguous(lrn_memory_format(x));
}

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_fallback(const at::Tensor& x, int64_t size, double alpha,
                                                                double beta, double k, int64_t kernel,
                                                                int64_t stride, bool ceil_mode) {
  return relu_lrn_max_pool2d_composite(x, params(size, alpha, beta, k, kernel, stride, ceil_mode));
}

at::Tensor relu_lrn_max_pool2d_backward_fallback(const at::Tensor& grad_out, const at::Tensor& x,
                                                 const at::Tensor& indices, int64_t size, double alpha, double beta,
                                                 double k, int64_t kernel, int64_t stride, bool ceil_mode) {
  const auto p = params(size, alpha, beta, k, kernel, stride, ceil_mode);
  check_lrn_pool_backward_args(grad_out, x, indices, p);
  check_lrn_pool_indices(x, indices, "alexnet_rs::relu_lrn_max_pool2d_backward");
  return relu_lrn_max_pool2d_backward_composite(grad_out, x, indices, p);
}

}  // namespace alexnet_rs
