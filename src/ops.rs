//! Safe Rust entry points to our torch ops (`alexnet_rs::*`, kernels/ops.cpp).
//!
//! The ops go through PyTorch's dispatcher, so a call from Rust records the same autograd
//! graph as `torch.ops.alexnet_rs.*` does from Python. No C++ exception crosses into Rust: the
//! C side catches everything and returns a message, which becomes [`Error::Op`].
use crate::error::{Error, OpErrorKind, Result};
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

mod ffi {
    use super::*;
    extern "C" {
        pub fn alexnet_rs_free_error(message: *mut c_char);
        pub fn alexnet_rs_lrn(
            x: *const C_tensor,
            size: i64,
            alpha: f64,
            beta: f64,
            k: f64,
            out: *mut *mut C_tensor,
            kind: *mut i32,
        ) -> *mut c_char;
        pub fn alexnet_rs_relu_lrn_max_pool2d(
            x: *const C_tensor,
            size: i64,
            alpha: f64,
            beta: f64,
            k: f64,
            kernel: i64,
            stride: i64,
            ceil_mode: i32,
            out: *mut *mut C_tensor,
            kind: *mut i32,
        ) -> *mut c_char;
        pub fn alexnet_rs_grouped_conv2d(
            x: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            stride_h: i64,
            stride_w: i64,
            pad_h: i64,
            pad_w: i64,
            groups: i64,
            out: *mut *mut C_tensor,
            kind: *mut i32,
        ) -> *mut c_char;
        pub fn alexnet_rs_channels_last(x: *const C_tensor, out: *mut *mut C_tensor, kind: *mut i32) -> *mut c_char;
        pub fn alexnet_rs_is_channels_last(x: *const C_tensor) -> i32;
        pub fn alexnet_rs_seeded_fill(
            tensors: *const *const C_tensor,
            normal: *const i32,
            n: i64,
            seed: u64,
            out: *mut *mut C_tensor,
            kind: *mut i32,
        ) -> *mut c_char;
        pub fn alexnet_rs_autocast_enter(cuda: i32) -> i64;
        pub fn alexnet_rs_autocast_exit(cuda: i32, prev: i64);
        pub fn alexnet_rs_autocast_dtype(cuda: i32) -> i32;
        pub fn alexnet_rs_grad_enabled() -> i32;
        pub fn alexnet_rs_cpu_cache_enter() -> i32;
        pub fn alexnet_rs_cpu_cache_exit();
        pub fn alexnet_rs_cpu_cache_stats(out4: *mut i64);
        pub fn alexnet_rs_sgd_fused_ok(p: *const C_tensor, v: *const C_tensor) -> i32;
        pub fn alexnet_rs_sgd_fused(
            p: *const C_tensor,
            v: *const C_tensor,
            lr: f64,
            momentum: f64,
            wd: f64,
            paper: i32,
        );
        pub fn alexnet_rs_linear_sgd_ok(
            x: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            v: *const C_tensor,
        ) -> i32;
        pub fn alexnet_rs_linear_sgd(
            x: *const C_tensor,
            w: *const C_tensor,
            b: *const C_tensor,
            v: *const C_tensor,
            lr: f64,
            momentum: f64,
            wd: f64,
            paper: i32,
            out: *mut *mut C_tensor,
            kind: *mut i32,
        ) -> *mut c_char;
    }
}

/// Runs one C entry point that writes a tensor to `out` or returns an error message.
fn call(f: impl FnOnce(*mut *mut C_tensor, *mut i32) -> *mut c_char) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut kind = 0i32;
    let msg = f(&mut out, &mut kind);
    if msg.is_null() {
        if out.is_null() {
            // The C side's error message could not be allocated either.
            return Err(Error::Internal(
                "an op failed and its error message could not be allocated (out of memory)".into(),
            ));
        }
        // SAFETY: `out` is a heap `at::Tensor*` the C side allocated for us to own.
        return Ok(unsafe { Tensor::from_ptr(out) });
    }
    // SAFETY: a non-null return is a NUL-terminated malloc'd string that we free once.
    let message = unsafe {
        let m = CStr::from_ptr(msg).to_string_lossy().into_owned();
        ffi::alexnet_rs_free_error(msg);
        crate::error::clean_torch_message(&m)
    };
    let kind = match kind {
        1 => OpErrorKind::Type,
        2 => OpErrorKind::Value,
        _ => OpErrorKind::Other,
    };
    Err(Error::Op { kind, message })
}

/// Local response normalisation across channels, with the formula and window of
/// `torch.nn.functional.local_response_norm` (alpha divided by `size`; for even sizes the
/// window is `size/2` channels before and `(size-1)/2` after). `x` is `(N, C, ...)`, 3-D or more,
/// floating point. Differentiable (our fused backward kernel).
pub fn lrn(x: &Tensor, size: i64, alpha: f64, beta: f64, k: f64) -> Result<Tensor> {
    // SAFETY: `x` outlives the call; the C side only reads through the pointer.
    call(|out, kind| unsafe { ffi::alexnet_rs_lrn(x.as_ptr(), size, alpha, beta, k, out, kind) })
}

/// The LRN parameters of [`relu_lrn_max_pool2d`] (`None`: ReLU and max-pool only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnArgs {
    pub size: i64,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

/// `max_pool2d(lrn(relu(x)))` as one op (`alexnet_rs::relu_lrn_max_pool2d`, kernels/lrn_pool.h):
/// on the CPU one fused pass forward and one backward for float32/float64 input stored
/// contiguous NCHW or channels_last (the output takes the input's layout),
/// else (and on CUDA) the composition of the same ops. `x` is `(N, C, H, W)`; square `kernel`,
/// `stride`, no padding, F.max_pool2d's `ceil_mode`. Differentiable.
pub fn relu_lrn_max_pool2d(
    x: &Tensor,
    lrn: Option<LrnArgs>,
    kernel: i64,
    stride: i64,
    ceil_mode: bool,
) -> Result<Tensor> {
    let l = lrn.unwrap_or(LrnArgs {
        size: 0,
        alpha: 0.0,
        beta: 0.0,
        k: 0.0,
    });
    // SAFETY: `x` outlives the call; the C side only reads through the pointer.
    call(|out, kind| unsafe {
        ffi::alexnet_rs_relu_lrn_max_pool2d(
            x.as_ptr(),
            l.size,
            l.alpha,
            l.beta,
            l.k,
            kernel,
            stride,
            i32::from(ceil_mode),
            out,
            kind,
        )
    })
}

/// Grouped 2-D convolution (NCHW, dilation 1) through our op `alexnet_rs::grouped_conv2d`: our
/// implicit-GEMM kernels on CUDA; ATen's convolution on CPU. Differentiable. The output is
/// always contiguous.
pub fn grouped_conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: [i64; 2],
    padding: [i64; 2],
    groups: i64,
) -> Result<Tensor> {
    let b = b.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: the tensors outlive the call; the C side only reads through the pointers.
    call(|out, kind| unsafe {
        ffi::alexnet_rs_grouped_conv2d(
            x.as_ptr(),
            w.as_ptr(),
            b,
            stride[0],
            stride[1],
            padding[0],
            padding[1],
            groups,
            out,
            kind,
        )
    })
}

/// `x` (4-D) in the channels_last memory format (NHWC storage), which tch has no API for.
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    // SAFETY: `x` outlives the call; the C side only reads through the pointer.
    call(|out, kind| unsafe { ffi::alexnet_rs_channels_last(x.as_ptr(), out, kind) })
}

/// Fills the CPU tensors `draws` in place, in order, from a private generator seeded with `seed`:
/// standard normal where the flag is true, uniform on [0, 1) where false. The values are those of
/// `torch.manual_seed(seed)` followed by `torch.randn` / `torch.rand` of the same shapes, and
/// torch's global generator (which other threads may be using) is not touched.
pub fn seeded_fill(draws: &[(Tensor, bool)], seed: u64) -> Result<()> {
    let ptrs: Vec<*const C_tensor> = draws.iter().map(|(t, _)| t.as_ptr()).collect();
    let normal: Vec<i32> = draws.iter().map(|&(_, n)| i32::from(n)).collect();
    // SAFETY: the tensors outlive the call; the C side fills their storage in place (ATen's
    // in-place ops are const on the handle) and reads `normal`; both arrays have length `n`.
    call(|out, kind| unsafe {
        ffi::alexnet_rs_seeded_fill(ptrs.as_ptr(), normal.as_ptr(), ptrs.len() as i64, seed, out, kind)
    })
    .map(drop)
}

/// Whether `x` is stored channels_last (and not also plain contiguous).
pub fn is_channels_last(x: &Tensor) -> bool {
    // SAFETY: read-only query of a live tensor.
    unsafe { ffi::alexnet_rs_is_channels_last(x.as_ptr()) == 1 }
}

/// Runs `f` under bfloat16 autocast on CUDA (or the CPU): convolutions and matrix products in
/// bfloat16, reductions and the loss in float32, as `torch.autocast(dtype=torch.bfloat16)`.
pub fn autocast_bf16<T>(cuda: bool, f: impl FnOnce() -> T) -> T {
    struct Exit(i32, i64);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: pairs with the enter below, on the same thread.
            unsafe { ffi::alexnet_rs_autocast_exit(self.0, self.1) }
        }
    }
    let dev = i32::from(cuda);
    // SAFETY: sets thread-local autocast state; restored by Exit even if `f` panics.
    let _exit = Exit(dev, unsafe { ffi::alexnet_rs_autocast_enter(dev) });
    f()
}

/// Whether autocast is on for CUDA (`cuda`) or the CPU on this thread (ours or Python's
/// `torch.autocast`), and then the dtype it computes in, as c10's ScalarType number.
pub fn autocast_dtype(cuda: bool) -> Option<i32> {
    // SAFETY: a read of thread-local autocast state.
    let t = unsafe { ffi::alexnet_rs_autocast_dtype(i32::from(cuda)) };
    (t >= 0).then_some(t)
}

/// Whether autograd records operations on this thread (not inside `no_grad`).
pub fn grad_enabled() -> bool {
    // SAFETY: a read of thread-local autograd state.
    unsafe { ffi::alexnet_rs_grad_enabled() == 1 }
}

/// One SGD update of `p` (float32 on the CPU) and its velocity `v` from `p`'s gradient in a single
/// pass (kernels/sgd_cpu.cpp), then `p`'s gradient is dropped (undefined, as PyTorch's
/// `zero_grad(set_to_none=True)`), so the next backward hands its fresh gradient over without an
/// accumulation pass. `paper` picks the paper's rule (src/optim.rs). Returns false, doing
/// nothing, when the tensors do not qualify (not float32 CPU, no gradient, different strides):
/// the caller then runs the unfused ops.
pub fn sgd_fused(p: &Tensor, v: &Tensor, lr: f64, momentum: f64, weight_decay: f64, paper: bool) -> bool {
    // SAFETY: both tensors outlive the calls; the C side checks them before writing through
    // their data pointers, and catches nothing because it throws nothing.
    unsafe {
        if ffi::alexnet_rs_sgd_fused_ok(p.as_ptr(), v.as_ptr()) != 1 {
            return false;
        }
        ffi::alexnet_rs_sgd_fused(p.as_ptr(), v.as_ptr(), lr, momentum, weight_decay, i32::from(paper));
    }
    true
}

/// `x.matmul(w.t()) + b` (`x` of shape `(B, K)`, `w` `(N, K)`) whose backward, instead of a gradient
/// for `w`, applies the SGD update to `w` and its velocity `v` (kernels/linear_sgd_cpu.cpp: one
/// pass over `w` and `v` that also forms the input's gradient; `paper` picks the paper's rule,
/// `weight_decay` as [`sgd_fused`]). `w` gets no `.grad`; `b`'s gradient is the usual one.
/// `Ok(None)` when they do not qualify (an AVX-512 CPU, float32 contiguous tensors, 1 <= B <= 32,
/// `w` a leaf that requires grad, grad mode on): the caller then runs `F.linear` and the ordinary
/// update.
#[allow(clippy::too_many_arguments)]
pub fn linear_sgd(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    v: &Tensor,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    paper: bool,
) -> Result<Option<Tensor>> {
    // SAFETY: the tensors outlive the calls; the C side only reads through the pointers here
    // (the update happens in the backward of the graph the returned tensor heads).
    unsafe {
        if ffi::alexnet_rs_linear_sgd_ok(x.as_ptr(), w.as_ptr(), b.as_ptr(), v.as_ptr()) != 1 {
            return Ok(None);
        }
        let (xp, wp, bp, vp) = (x.as_ptr(), w.as_ptr(), b.as_ptr(), v.as_ptr());
        call(|out, kind| {
            ffi::alexnet_rs_linear_sgd(xp, wp, bp, vp, lr, momentum, weight_decay, i32::from(paper), out, kind)
        })
        .map(Some)
    }
}

/// While alive, CPU tensors of 1 MiB or more that this thread allocates come from our caching
/// allocator (kernels/cpu_cache.cpp): freed blocks are kept and handed out again for the same
/// size instead of going back to glibc, which maps and unmaps large blocks and page-faults them
/// in every training step. Other threads, and this one after the scope, use PyTorch's allocator
/// unchanged; when the last scope in the process ends the cached blocks are freed.
pub struct CpuCacheScope {
    active: bool,
    // The scope is per thread: not Send.
    _thread: std::marker::PhantomData<*const ()>,
}

impl CpuCacheScope {
    pub fn new() -> CpuCacheScope {
        // SAFETY: no arguments; pairs with the exit in Drop on this thread.
        CpuCacheScope {
            active: unsafe { ffi::alexnet_rs_cpu_cache_enter() } == 1,
            _thread: std::marker::PhantomData,
        }
    }

    /// Whether the cache is in use (false only if another allocator outranked ours).
    pub fn active(&self) -> bool {
        self.active
    }
}

impl Default for CpuCacheScope {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CpuCacheScope {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: closes the scope this value opened, on the same thread (not Send).
            unsafe { ffi::alexnet_rs_cpu_cache_exit() }
        }
    }
}

/// The CPU cache's counters: allocations served from the cache, fresh ones, bytes held free,
/// bytes in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCacheStats {
    pub hits: i64,
    pub misses: i64,
    pub cached_bytes: i64,
    pub live_bytes: i64,
}

pub fn cpu_cache_stats() -> CpuCacheStats {
    let mut v = [0i64; 4];
    // SAFETY: writes four i64s into `v`.
    unsafe { ffi::alexnet_rs_cpu_cache_stats(v.as_mut_ptr()) };
    CpuCacheStats {
        hits: v[0],
        misses: v[1],
        cached_bytes: v[2],
        live_bytes: v[3],
    }
}

/// The same function built from stock tch ops, exactly as `F.local_response_norm` composes it
/// (square, pad channels, average over the window, scale, power, divide): the test oracle and
/// the speed anchor. Input `(N, C, ...)` of 3 or more dims.
pub fn lrn_reference(x: &Tensor, size: i64, alpha: f64, beta: f64, k: f64) -> Tensor {
    let sizes = x.size();
    let (n, c) = (sizes[0], sizes[1]);
    let sq = x.square().reshape([n, 1, c, -1]);
    let padded = sq.constant_pad_nd([0, 0, size / 2, (size - 1) / 2]);
    let avg = padded.avg_pool2d([size, 1], [1, 1], [0, 0], false, true, None::<i64>);
    let div = (avg * alpha + k).pow_tensor_scalar(beta).reshape(sizes.as_slice());
    x / div
}
