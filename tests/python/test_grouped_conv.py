"""alexnet_rs::grouped_conv2d against F.conv2d (values and gradients), opcheck, gradcheck."""

import pytest
import torch
import torch.nn.functional as F

import alexnet_rs
from alexnet_rs.ops import grouped_conv2d

CASES = [
    # (N, Cin, H, W, Cout, K, stride, padding, groups): AlexNet-like, small.
    (2, 6, 13, 13, 8, 3, 1, 1, 2),
    (2, 3, 23, 23, 4, 11, 4, 2, 1),
    (1, 8, 9, 11, 12, 5, 1, 2, 4),
    (3, 4, 8, 8, 6, 3, 2, 0, 2),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv2d(case, bias):
    n, cin, h, w, cout, k, s, p, g = case
    x = torch.randn(n, cin, h, w, requires_grad=True)
    wt = torch.randn(cout, cin // g, k, k, requires_grad=True)
    b = torch.randn(cout, requires_grad=True) if bias else None
    y = grouped_conv2d(x, wt, b, stride=s, padding=p, groups=g)
    y_ref = F.conv2d(x, wt, b, stride=s, padding=p, groups=g)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y_ref)
    inputs = [x, wt] + ([b] if bias else [])
    grads = torch.autograd.grad(y, inputs, gy)
    grads_ref = torch.autograd.grad(y_ref, inputs, gy)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r)


def test_channels_last_input():
    x = torch.randn(2, 6, 9, 9).to(memory_format=torch.channels_last)
    w = torch.randn(8, 3, 3, 3)
    y = grouped_conv2d(x, w, None, stride=1, padding=1, groups=2)
    assert y.is_contiguous()
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1, 1, 2))


def test_gradcheck_float64():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: grouped_conv2d(x, w, b, 2, 1, 2), (x, w, b))


def test_gradgradcheck_float64():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w, b: grouped_conv2d(x, w, b, 2, 1, 2), (x, w, b))


def test_opcheck():
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    op = torch.ops.alexnet_rs.grouped_conv2d.default
    torch.library.opcheck(op, (x, w, b, [1, 1], [1, 1], 2))
    torch.library.opcheck(op, (x, w, None, [2, 2], [0, 0], 2))


def test_torch_compile_with_backward():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)

    def f(x, w):
        return torch.relu(grouped_conv2d(x, w, None, 1, 1, 2)).sum()

    torch.compile(f, fullgraph=True)(x, w).backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    f(x, w).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


@pytest.mark.parametrize(
    "x, w, b, groups, exc, needle",
    [
        (torch.randn(4, 8, 8), torch.randn(4, 4, 3, 3), None, 1, ValueError, "x must be"),
        (torch.randn(1, 4, 8, 8), torch.randn(4, 4, 3, 3).double(), None, 1, TypeError, "dtype"),
        (torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3), None, 3, ValueError, "groups=3"),
        (torch.randn(1, 4, 8, 8), torch.randn(4, 3, 3, 3), None, 2, ValueError, "input channels per group"),
        (torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3), torch.randn(5), 2, ValueError, "b must be"),
        (torch.randn(1, 4, 2, 2), torch.randn(4, 4, 5, 5), None, 1, ValueError, "smaller than the kernel"),
        (torch.ones(1, 4, 8, 8, dtype=torch.int64), torch.ones(4, 4, 3, 3, dtype=torch.int64), None, 1, TypeError, "float16, bfloat16, float32 or float64"),
    ],
)
def test_bad_input_raises(x, w, b, groups, exc, needle):
    with pytest.raises(exc, match=needle):
        grouped_conv2d(x, w, b, stride=1, padding=0, groups=groups)


@pytest.mark.parametrize(
    "xs, ws, padding, needle",
    [
        # Each passed the checks: the Meta kernel (torch.compile) promised an output shape and the
        # CPU kernel then failed inside ATen (oneDNN's "could not create a primitive descriptor").
        ((2, 4, 8, 8), (4, 2, 0, 3), 1, "kernel must be at least 1x1"),
        ((2, 4, 0, 9), (6, 2, 3, 3), 2, "empty plane"),
        ((2, 4, 8, 8), (0, 2, 3, 3), 1, "at least groups=2 output channels"),
        # Meta promised (2, 6, 7, 7), ATen's CPU convolution gave (2, 0, 7, 7), and its backward
        # then refused its own output's gradient.
        ((2, 0, 9, 9), (6, 0, 3, 3), 0, "x has no channels"),
        # 8 + 2 * 2**62 overflowed, and the error blamed the kernel's size.
        ((2, 4, 8, 8), (4, 2, 3, 3), 2**62, "padding .* is too large"),
    ],
)
def test_meta_and_cpu_refuse_the_same_arguments(xs, ws, padding, needle):
    x, w = torch.randn(xs), torch.randn(ws)
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError, match=needle):
            torch.ops.alexnet_rs.grouped_conv2d(x.to(device), w.to(device), None, [1, 1], [padding, padding], 2)
    # An empty batch is fine, as in F.conv2d.
    x0 = torch.randn(0, 4, 0, 9)
    assert grouped_conv2d(x0, torch.randn(6, 2, 3, 3), None, 1, 2, 2).shape == (0, 6, 2, 11)


@pytest.mark.parametrize("op, keys", [
    ("alexnet_rs::grouped_conv2d", {"CPU", "CUDA", "Meta", "Autograd", "AutocastCPU", "AutocastCUDA"}),
    # The backward ops and the pool's forward with indices: torch's "not implemented" autograd
    # kernel (a backward through them raises instead of giving None gradients).
    ("alexnet_rs::grouped_conv2d_backward", {"CPU", "CUDA", "Meta", "Autograd"}),
    ("alexnet_rs::lrn", {"CPU", "CUDA", "Meta", "Autograd"}),
    ("alexnet_rs::lrn_backward", {"CPU", "CUDA", "Meta", "Autograd"}),
    # The fused relu -> LRN -> max-pool: autograd and a below-autograd composite on the public
    # op (every backend); CPU kernels (CUDA: the composition of relu, our lrn and ATen's pool) underneath.
    ("alexnet_rs::relu_lrn_max_pool2d", {"CompositeExplicitAutograd", "Autograd"}),
    ("alexnet_rs::relu_lrn_max_pool2d_with_indices", {"CPU", "CUDA", "Meta", "Autograd"}),
    ("alexnet_rs::relu_lrn_max_pool2d_backward", {"CPU", "CUDA", "Meta", "Autograd"}),
])
def test_kernels_are_registered_with_the_dispatcher(op, keys):
    # Read from PyTorch's dispatcher (the wheel is built with the `cuda` feature, so our CUDA
    # kernels are registered even on a machine without a GPU).
    candidates = ["CPU", "CUDA", "Meta", "Autograd", "AutocastCPU", "AutocastCUDA", "XLA", "MPS",
                  "CompositeExplicitAutograd"]
    got = {k for k in candidates if torch._C._dispatch_has_kernel_for_dispatch_key(op, k)}
    assert got == keys


def test_the_helper_ops_are_not_silently_non_differentiable():
    """A backward through the backward ops or the pool's forward with indices gave None
    gradients (only a UserWarning): now torch's "not implemented" error."""
    ns = torch.ops.alexnet_rs
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, requires_grad=True)
    g = torch.randn(1, 4, 6, 6, requires_grad=True)
    outputs = [ns.relu_lrn_max_pool2d_with_indices(x, 3, 0.5, 0.75, 1.0, 3, 2, False)[0],
               ns.lrn_backward(g, x, 3, 0.5, 0.75, 1.0),
               ns.grouped_conv2d_backward(g, x, w, [1, 1], [1, 1], 2, [True, True, False])[0]]
    for y in outputs:
        with pytest.raises(RuntimeError, match="not implemented"):
            y.sum().backward()


def test_the_conv_backward_returns_what_its_mask_asks_on_every_backend():
    """With output_mask [True, False, True] the CPU kernel returned a weight gradient the Meta
    kernel did not (opcheck's fake-tensor test failed); grad_out of another shape passed on meta."""
    x, w, g = torch.randn(2, 6, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(2, 4, 5, 5)
    args = ([1, 1], [1, 1], 2, [True, False, True])
    cpu = torch.ops.alexnet_rs.grouped_conv2d_backward(g, x, w, *args)
    meta = torch.ops.alexnet_rs.grouped_conv2d_backward(g.to("meta"), x.to("meta"), w.to("meta"), *args)
    assert [t is None for t in cpu] == [t is None for t in meta] == [False, True, False]
    torch.testing.assert_close(cpu[0], torch.nn.grad.conv2d_input(x.shape, w, g, padding=1, groups=2))
    torch.library.opcheck(torch.ops.alexnet_rs.grouped_conv2d_backward.default, (g, x, w, *args))
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError, match="grad_out must have the output's shape"):
            torch.ops.alexnet_rs.grouped_conv2d_backward(torch.randn(2, 4, 9, 9).to(device), x.to(device),
                                                         w.to(device), *args)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_refused_on_meta_as_on_cpu(dtype):
    """The Meta kernels took float8 (at::isFloatingType) where the CPU kernels refused it."""
    ns = torch.ops.alexnet_rs
    x = torch.ones(1, 4, 4, 4).to(dtype)
    w = torch.ones(4, 2, 3, 3).to(dtype)
    for device in ("cpu", "meta"):
        with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
            ns.lrn(x.to(device), 3, 1.0, 0.75, 1.0)
        with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
            ns.grouped_conv2d(x.to(device), w.to(device), None, [1, 1], [1, 1], 2)
        with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
            ns.relu_lrn_max_pool2d_with_indices(x.to(device), 3, 1.0, 0.75, 1.0, 3, 2, False)


def test_pool_backward_indices_outside_the_plane_are_refused_not_written():
    """Indices past the plane (or negative) wrote outside the gradient: a segfault. In a
    subprocess, so that a regression fails this test instead of ending the session."""
    import subprocess
    import sys

    script = """
import torch, alexnet_rs
x = torch.randn(1, 3, 5, 5)
for bad in (100000000, 25, -1):
    try:
        torch.ops.alexnet_rs.relu_lrn_max_pool2d_backward(torch.randn(1, 3, 2, 2), x,
            torch.full((1, 3, 2, 2), bad, dtype=torch.long), 3, 0.5, 0.75, 1.0, 3, 2, False)
        print("accepted", bad)
    except ValueError as e:
        print("refused", bad, "must index the 5x5 plane" in str(e))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:3] == [f"refused {b} True" for b in (100000000, 25, -1)], r.stdout
