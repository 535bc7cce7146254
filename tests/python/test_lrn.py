"""alexnet_rs.ops.lrn against torch.nn.functional.local_response_norm, gradcheck, opcheck,
torch.compile, and bad input."""

import contextlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import alexnet_rs
from alexnet_rs.ops import lrn

SHAPES = {"3d": (2, 9, 11), "4d": (2, 10, 5, 6), "5d": (1, 8, 3, 4, 5)}


def _value_and_grad(fn, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


def _assert_close(a, b):
    # Relative to the tensor's scale: elementwise rtol misleads where values cross zero.
    scale = b.abs().max().clamp_min(1e-30)
    assert ((a - b).abs().max() / scale).item() <= 1e-5


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("size", range(1, 8))
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_matches_local_response_norm(shape, size, k):
    x = torch.randn(shape) * 30  # large enough that the normaliser matters
    g = torch.randn(shape)
    alpha, beta = 1e-2, 0.75
    y, dx = _value_and_grad(lambda t: lrn(t, size, alpha, beta, k), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, size, alpha, beta, k), x, g)
    _assert_close(y, y_ref)
    _assert_close(dx, dx_ref)


# The contiguous float kernels sweep chunks of positions channel by channel, keeping the last
# min(size, C) channel rows in rings: a window wider than the channel count, a wide window that
# shrinks the chunk to a few dozen positions, planes longer than one chunk (4096 positions) and
# one sample cut into several chunks so that both threads get work.
@pytest.mark.parametrize("shape, size", [
    ((2, 3, 7, 7), 7),         # size > C: every channel in every window
    ((2, 40, 6, 6), 39),       # a ring of 39 of the 40 channels: slots are reused once
    ((1, 200, 20, 15), 151),   # rings of 151 rows cap the backward's chunk at 144: 3-5 chunks
    ((1, 6, 70, 70), 5),       # 4900 positions: more than one chunk even on one thread
    ((3, 11, 9, 9), 4),        # even size: the window is off-centre (2 before, 1 after)
], ids=["size>C", "wide", "wide-3-chunks", "long-plane", "even"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunks_and_rings(shape, size, dtype):
    x = torch.randn(shape, dtype=dtype) * 30
    g = torch.randn(shape, dtype=dtype)
    y, dx = _value_and_grad(lambda t: lrn(t, size, 1e-2, 0.75, 2.0), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, size, 1e-2, 0.75, 2.0), x, g)
    _assert_close(y, y_ref)
    _assert_close(dx, dx_ref)
    for threads in (1, 3):  # other chunkings of the same planes give the same bits
        with _threads(threads):
            y_t, dx_t = _value_and_grad(lambda t: lrn(t, size, 1e-2, 0.75, 2.0), x, g)
        assert torch.equal(y_t, y) and torch.equal(dx_t, dx)


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("size", [2, 5])
def test_channels_last(size):
    x = (torch.randn(2, 16, 7, 7) * 30).to(memory_format=torch.channels_last)
    g = torch.randn(2, 16, 7, 7)
    y, dx = _value_and_grad(lambda t: lrn(t, size, 1e-3, 0.75, 2.0), x, g)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, size, 1e-3, 0.75, 2.0), x, g)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_close(y, y_ref)
    _assert_close(dx, dx_ref)


def test_channels_last_3d():
    x = (torch.randn(2, 6, 3, 4, 5) * 30).to(memory_format=torch.channels_last_3d)
    _assert_close(lrn(x, 3, 1e-2, 0.75, 1.0), F.local_response_norm(x, 3, 1e-2, 0.75, 1.0))


def test_non_contiguous_input():
    x = (torch.randn(2, 12, 8, 8) * 30)[:, ::2, :, 1:]
    _assert_close(lrn(x, 5, 1e-2, 0.6, 2.0), F.local_response_norm(x, 5, 1e-2, 0.6, 2.0))


@pytest.mark.parametrize("size", [3, 4])
def test_gradcheck_float64(size):
    x = (torch.randn(2, 7, 3, 4, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: lrn(t, size, 0.5, 0.75, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda t: lrn(t, size, 0.3, 0.6, 2.0), (x,))


@pytest.mark.parametrize("size", [3, 4])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "3d"])
def test_gradgradcheck_float64(size, layout):
    """Second derivatives (gradient penalties, create_graph=True) against finite differences of the
    first: the backward taken under create_graph is itself differentiable."""
    shape = (2, 7, 5) if layout == "3d" else (2, 7, 3, 4)
    x = torch.randn(*shape, dtype=torch.float64) * 3
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: lrn(t, size, 0.5, 0.75, 1.0), (x,))


def _penalty_grad(fn, x):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    return gg


# Windows within the channels, and ones wider than them (the double backward's composite clips
# its padding at C - 1 rows a side).
@pytest.mark.parametrize("size", [5, 11, 12])
def test_double_backward_equals_local_response_norm(size):
    """The gradient of a gradient penalty, ours against F.local_response_norm's."""
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    ours = _penalty_grad(lambda t: lrn(t, size, 1e-1, 0.75, 1.0), x)
    ref = _penalty_grad(lambda t: F.local_response_norm(t, size, 1e-1, 0.75, 1.0), x)
    assert ref.abs().max() > 1.0
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-10


def test_double_backward_of_a_huge_window_needs_no_huge_padding():
    # Size 2**40: every window holds every channel (alpha / size = 0.1). The differentiable
    # backward padded the channel axis by the whole window: a 440 TB allocation.
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ours = _penalty_grad(lambda t: torch.ops.alexnet_rs.lrn(t, 2**40, 0.1 * 2**40, 0.75, 1.0), x)
    ref = _penalty_grad(lambda t: t / (1.0 + 0.1 * t.square().sum(1, keepdim=True)) ** 0.75, x)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-10


def test_plain_backward_runs_our_kernel():
    """Only create_graph=True takes the differentiable composition; a plain backward calls
    alexnet_rs::lrn_backward (read from the dispatcher)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(func.name())
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    y = lrn(x, 5, 1e-2, 0.75, 1.0)
    with Calls() as plain:
        y.sum().backward(retain_graph=True)
    with Calls() as double:
        torch.autograd.grad(y.sum(), x, create_graph=True)
    assert "alexnet_rs::lrn_backward" in plain.ops and "aten::avg_pool2d" not in plain.ops
    assert "alexnet_rs::lrn_backward" not in double.ops and "aten::avg_pool2d" in double.ops


def test_opcheck():
    for x in [torch.randn(2, 6, 5, 5, requires_grad=True), torch.randn(3, 4, 7, requires_grad=True)]:
        torch.library.opcheck(torch.ops.alexnet_rs.lrn.default, (x, 5, 1e-4, 0.75, 2.0))
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.alexnet_rs.lrn.default, (x, 4, 1e-2, 0.75, 1.0))


def test_torch_compile_fullgraph_with_backward():
    def f(x):
        return (lrn(torch.relu(x), 5, 1e-2, 0.75, 2.0) * 2.0).sum()

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(2, 8, 6, 6) * 10
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    compiled(x1).backward()
    f(x2).backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_the_module_compiles_fullgraph_with_symbolic_scalars():
    # Dynamo makes the module's alpha/beta/k symbolic floats (dynamic=True, or an alpha changed
    # between calls): the Python checks' math.isfinite on them failed fullgraph compilation.
    x = torch.randn(2, 7, 4, 4) * 10
    m = alexnet_rs.nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0)
    torch.testing.assert_close(torch.compile(m, fullgraph=True, dynamic=True)(x),
                               F.local_response_norm(x, 5, 1e-2, 0.75, 2.0))
    f = torch.compile(m, fullgraph=True)
    f(x)
    m.alpha = 2e-2
    torch.testing.assert_close(f(x), F.local_response_norm(x, 5, 2e-2, 0.75, 2.0))


def test_the_module_scripts_and_traces_like_torchs(tmp_path):
    # torch.jit.script failed on alexnet_rs.nn.LocalResponseNorm ("import statements aren't
    # supported", from the eager argument checks).
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), alexnet_rs.nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0))
    reference = torch.nn.Sequential(model[0], torch.nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0))
    x = torch.randn(2, 3, 9, 9) * 10
    scripted = torch.jit.script(model)
    scripted.save(tmp_path / "m.pt")
    for m in (scripted, torch.jit.load(tmp_path / "m.pt"), torch.jit.trace(model, x)):
        _assert_close(m(x), reference(x))
    # Eager calls keep their own checks (a clear error class).
    with pytest.raises(alexnet_rs.ShapeError, match="LocalResponseNorm: input must be"):
        model[1](torch.randn(4, 2))


def test_rust_wrapper_path_matches():
    x = torch.randn(2, 8, 5, 5) * 20
    _assert_close(alexnet_rs._native.lrn(x, 5, 1e-2, 0.75, 2.0), F.local_response_norm(x, 5, 1e-2, 0.75, 2.0))


@pytest.mark.parametrize(
    "args, exc, needle",
    [
        ((torch.ones(5),), ValueError, "3 or more dimensions"),
        ((torch.ones(1, 4, 2, 2, dtype=torch.int64),), TypeError, "floating-point"),
        ((torch.ones(1, 4, 2, 2), 0), ValueError, "size must be >= 1"),
        (([1.0, 2.0],), TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_raises(args, exc, needle):
    with pytest.raises(exc, match=needle):
        lrn(*args)


def test_bad_input_through_rust_raises_our_errors():
    with pytest.raises(alexnet_rs.ShapeError, match="3 or more dimensions"):
        alexnet_rs._native.lrn(torch.ones(5))
    with pytest.raises(alexnet_rs.DtypeError, match="float16, bfloat16, float32 or float64"):
        alexnet_rs._native.lrn(torch.ones(1, 4, 2, 2, dtype=torch.int32))
    with pytest.raises(TypeError):
        alexnet_rs._native.lrn("not a tensor")


def test_nan_and_inf_propagate_like_pytorch():
    # IEEE semantics in every kernel build: NaN spreads over its window, inf gives 0 around it.
    x = torch.randn(1, 8, 4, 4)
    x[0, 3, 1, 1] = float("nan")
    x[0, 6, 2, 2] = float("inf")
    ours, ref = lrn(x, 5, 1e-4, 0.75, 2.0), F.local_response_norm(x, 5, 1e-4, 0.75, 2.0)
    assert torch.equal(ours.isnan(), ref.isnan())
    finite = ref.isfinite()
    _assert_close(ours[finite], ref[finite])


# Degenerate parameters: beta = 0 makes LRN the identity, alpha = 0 a constant scale k^-beta; the
# gradient's second term (2 alpha beta / size * x * window sum) is then 0. With k = 0 the window
# sum is 0 / 0 = NaN where a window is all zeros, and every kernel build gave NaN gradients there.
@pytest.mark.parametrize("alpha, beta, k", [(1e-2, 0.0, 0.0), (1e-2, 0.0, 1.0), (0.0, 0.75, 2.0)],
                         ids=["beta0-k0", "beta0", "alpha0"])
@pytest.mark.parametrize("kind", ["float32", "float64", "float16", "channels_last", "strided"])
def test_degenerate_parameters_match_local_response_norm(alpha, beta, k, kind):
    dtype = {"float64": torch.float64, "float16": torch.float16}.get(kind, torch.float32)
    x = torch.randn(2, 9, 5, 6, dtype=torch.float64) * 3
    x[:, 2:7] = 0  # channels 3..5 have all-zero windows of 3
    g = torch.randn_like(x)
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, 3, alpha, beta, k), x, g)
    assert dx_ref.isfinite().all()
    xk = x.to(dtype)
    if kind == "channels_last":
        xk = xk.contiguous(memory_format=torch.channels_last)
    elif kind == "strided":
        xk = xk.transpose(2, 3).contiguous().transpose(2, 3)
    y, dx = _value_and_grad(lambda t: lrn(t, 3, alpha, beta, k), xk, g.to(dtype))
    tol = 1e-2 if dtype == torch.float16 else 1e-5
    for ours, ref in ((y, y_ref), (dx, dx_ref)):
        assert ours.isfinite().all()
        assert ((ours.double() - ref).abs().max() / ref.abs().max()).item() <= tol


def test_float64_and_bfloat16_paths():
    x = torch.randn(2, 9, 5, 5, dtype=torch.float64) * 30
    _assert_close(lrn(x, 5, 1e-2, 0.75, 2.0), F.local_response_norm(x, 5, 1e-2, 0.75, 2.0))
    xb = (torch.randn(2, 9, 5, 5) * 30).bfloat16()
    ref = F.local_response_norm(xb.float(), 5, 1e-2, 0.75, 2.0)
    assert ((lrn(xb, 5, 1e-2, 0.75, 2.0).float() - ref).abs().max() / ref.abs().max()).item() < 1e-2


# The gathered kernels (half, bfloat16, channels_last, strided) work on tiles of up to 256
# positions x all channels in float: a plane of 1 position, one shorter than a tile, an exact tile
# and a tile plus a partial one. (A partial tile computed all 256 columns: an LRN over feature
# vectors, S = 1, ran 25x slower in half than in float.)
@pytest.mark.parametrize("shape", [(5, 37, 1), (2, 9, 7, 9), (2, 8, 16, 16), (2, 9, 300)],
                         ids=["S1", "S63", "S256", "S300"])
@pytest.mark.parametrize("kind", ["float16", "bfloat16", "float32-strided"])
def test_gathered_tiles(shape, kind):
    x = torch.randn(shape) * 30
    g = torch.randn(shape)
    if kind == "float32-strided":
        x, g, tol = x.transpose(0, -1).contiguous().transpose(0, -1), g.transpose(0, -1).contiguous().transpose(0, -1), 1e-5
        assert not x.is_contiguous()
    else:
        dtype = getattr(torch, kind)
        x, g, tol = x.to(dtype), g.to(dtype), 1e-2
    y, dx = _value_and_grad(lambda t: lrn(t, 5, 1e-2, 0.75, 2.0), x, g)
    # The reference in float64 from the same (rounded) values.
    y_ref, dx_ref = _value_and_grad(lambda t: F.local_response_norm(t, 5, 1e-2, 0.75, 2.0), x.double(), g.double())
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() <= tol
    assert ((dx.double() - dx_ref).abs().max() / dx_ref.abs().max()).item() <= tol


def test_torch_func_transforms_are_refused_as_the_readme_says():
    """Our backward is a C++ autograd function: torch.func's grad/vjp refuse it with a clear
    TorchError (README, "Our ops"), and vmap runs PyTorch's per-sample fallback, whose result
    equals the unbatched op's."""
    x = torch.randn(2, 8, 5, 5)
    for transform in (lambda: torch.func.grad(lambda t: lrn(t, size=5).sum())(x),
                      lambda: torch.func.vjp(lambda t: lrn(t, size=5), x)):
        with pytest.raises(alexnet_rs.TorchError, match="cannot use C\\+\\+ torch::autograd::Function with functorch"):
            transform()
    xs = torch.randn(3, 2, 8, 5, 5)
    batched = torch.func.vmap(lambda t: lrn(t, size=5))(xs)  # libtorch prints a warning
    _assert_close(batched, torch.stack([F.local_response_norm(t, 5, k=2.0) for t in xs]))


def test_a_thread_without_scratch_memory_is_an_error_not_a_hang():
    """The CPU kernels' OpenMP threads each allocate scratch: a thread whose allocation failed
    skipped the team's loop, and the thread that got its scratch waited for it at the loop's
    barrier forever. Under an address-space limit with room for one thread's scratch, not two."""
    code = """
import resource, torch, alexnet_rs
torch.set_num_threads(2)
C = 16_000_000  # S = 1: a forward in half keeps 2 x C floats (128 MB) of scratch per thread
x = torch.randn(2, C, 1, 1).half()
alexnet_rs.ops.lrn(x[:, :1000], 5, 1e-4, 0.75, 2.0)  # the OpenMP team and its threads' arenas
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + x.numel() * 2 + 2 * C * 4 * 3 // 2, resource.RLIM_INFINITY))
try:
    alexnet_rs.ops.lrn(x, 5, 1e-4, 0.75, 2.0)
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "MemoryError: std::bad_alloc", r.stdout + r.stderr[-2000:]
