"""Our custom operators, registered with PyTorch's dispatcher by the native extension.

They are ordinary ``torch.ops.alexnet_rs.*`` ops with CPU (and, in CUDA builds, CUDA) kernels,
Meta kernels and hand-written backward passes, so they work in eager mode, under autograd and
under ``torch.compile``. Second derivatives (``create_graph=True``: gradient penalties,
``gradgradcheck``) are exact too: under ``create_graph`` the backward is taken through a
differentiable composition of ATen ops instead of our backward kernels.
"""

import contextlib
import threading
from collections.abc import Iterator

import torch

from . import _native
from ._boundary import dims_arg, int_arg, real_arg, tensor_arg
from .errors import ConfigError, DtypeError, ShapeError, TorchError


def _raised_by_the_dispatcher(e: BaseException) -> bool:
    """Whether the op's C++ side raised ``e``: the innermost Python frame is torch's op call
    (``torch/_ops.py``), not a Python hook that ran inside the op."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename in (torch._ops.__file__, __file__)


def _call(where: str, op, *args):
    """Runs a dispatcher op; in eager mode its C++ checks' errors become ours (TypeError ->
    DtypeError, ValueError -> ShapeError, RuntimeError -> TorchError), message kept; an error a
    Python hook raised inside it passes unchanged. Under torch.compile the op is traced as it is."""
    if torch.compiler.is_compiling():
        return op(*args)
    try:
        return op(*args)
    except (TypeError, ValueError, RuntimeError) as e:
        if not _raised_by_the_dispatcher(e):
            raise  # a Python hook's own error (saved-tensors hooks, checkpointing), as it was
        cls = DtypeError if isinstance(e, TypeError) else ShapeError if isinstance(e, ValueError) else TorchError
        text = str(e).split("\nException raised from", 1)[0]
        raise cls(f"{where}: {text}") from None


def _lrn_checked(where: str, name: str, x, size, alpha, beta, k):
    if torch.compiler.is_compiling():
        # Traced, alpha/beta/k may be symbolic floats (a module's changed alpha, dynamic=True),
        # which no Python check can read (fullgraph failed); the op's own checks (its Meta
        # kernel) run, as in _call.
        return torch.ops.alexnet_rs.lrn(x, size, alpha, beta, k)
    tensor_arg(where, name, x)
    size = int_arg(where, "size", size)
    if size < 1:
        raise ConfigError(f"{where}: size must be >= 1, got {size}")
    args = [real_arg(where, n, v) for n, v in (("alpha", alpha), ("beta", beta), ("k", k))]
    dims_arg(where, name, x, "(N, C, ...) with 3 or more dimensions", x.dim() >= 3)
    if not x.is_floating_point():
        raise DtypeError(f"{where}: {name} must be a floating-point tensor, got {x.dtype}")
    return _call(where, torch.ops.alexnet_rs.lrn, x, size, *args)


def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """Local response normalisation across channels (AlexNet, section 3.3).

    Same formula and window as :func:`torch.nn.functional.local_response_norm`::

        y[c] = x[c] / (k + alpha / size * sum(x[c'] ** 2 for c' in window(c))) ** beta

    with the window running from ``c - size // 2`` to ``c + (size - 1) // 2``. ``x`` has shape
    ``(N, C, ...)`` (3 or more dims) and a floating-point dtype; contiguous and channels_last
    layouts are both handled natively. The defaults are the paper's (n=5, k=2, alpha=1e-4,
    beta=0.75); Caffe's AlexNet (and ``torch.nn.LocalResponseNorm``'s default) uses ``k=1``.
    """
    return _lrn_checked("lrn", "x", x, size, alpha, beta, k)


def grouped_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Grouped 2-D convolution (NCHW, dilation 1), same result as ``F.conv2d(x, w, b, stride,
    padding, groups=groups)``. On CUDA it runs our implicit-GEMM kernels (tensor cores for
    bfloat16/float16); on CPU it calls ATen's convolution. The output is contiguous."""
    where = "grouped_conv2d"
    tensor_arg(where, "x", x)
    tensor_arg(where, "w", w)
    if b is not None:
        tensor_arg(where, "b", b)
    stride, padding = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    groups = int_arg(where, "groups", groups, 1)
    dims_arg(where, "x", x, "(N, C, H, W)", x.dim() == 4)
    dims_arg(where, "w", w, "(C_out, C_in / groups, kH, kW)", w.dim() == 4)
    return _call(where, torch.ops.alexnet_rs.grouped_conv2d, x, w, b, stride, padding, groups)


def _pair(v, name: str, minimum: int) -> list[int]:
    pair = [v, v] if not isinstance(v, (tuple, list)) else list(v)
    if len(pair) != 2:
        raise ConfigError(f"grouped_conv2d: {name} must be an int or a pair of ints, got {v!r}")
    return [int_arg("grouped_conv2d", name, p, minimum) for p in pair]


@contextlib.contextmanager
def cpu_cache() -> Iterator[bool]:
    """Inside this block, CPU tensors of 1 MiB or more that *this thread* allocates come from our
    caching allocator (the one the Rust training loop uses), for a user's own eager training loop
    on the CPU.

    PyTorch's CPU allocator is ``posix_memalign``/``free``: glibc maps every block above its mmap
    threshold (at most 32 MiB) afresh and unmaps it on free, so each step page-faults its large
    activations and gradients in again (the kernel zeroes every fresh page). The cache keeps freed
    blocks and hands them back for a request of the same size. Other threads, and this one after
    the block, use PyTorch's allocator unchanged; when the last open block in the process ends the
    cached memory is freed. Memory held: the blocks freed and not yet reused, at most 2 GiB (the
    oldest go first). Blocks can be nested. Yields whether the cache is active (False only if
    another allocator of higher priority is installed; then nothing changes). The autograd engine
    runs a CPU backward on the thread that calls ``backward()``, so both passes are covered::

        with alexnet_rs.ops.cpu_cache():
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    """
    owner = threading.get_ident()
    active = _native.cpu_cache_enter()
    try:
        yield active
    finally:
        if threading.get_ident() != owner:  # its exit here would end nothing, in silence
            raise ConfigError("cpu_cache(): a block must end on the thread that began it (the cache is per "
                              "thread); the beginning thread keeps caching until the process ends")
        _native.cpu_cache_exit()


def cpu_cache_stats() -> dict[str, int]:
    """The cache's counters since the process started: ``hits`` and ``misses`` (requests served
    from the cache or freshly allocated), ``cached_bytes`` (free blocks held) and ``live_bytes``
    (cached-size blocks in use)."""
    return _native.cpu_cache_stats()


__all__ = ["lrn", "grouped_conv2d", "cpu_cache", "cpu_cache_stats"]
