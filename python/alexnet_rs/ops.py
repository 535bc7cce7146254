"""Our custom operators, registered with PyTorch's dispatcher by the native extension.

They are ordinary ``torch.ops.alexnet_rs.*`` ops with CPU (and, in CUDA builds, CUDA) kernels,
Meta kernels and hand-written backward passes, so they work in eager mode, under autograd and
under ``torch.compile``.
"""

import torch


def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """Local response normalisation across channels (AlexNet, section 3.3).

    Same formula and window as :func:`torch.nn.functional.local_response_norm`::

        y[c] = x[c] / (k + alpha / size * sum(x[c'] ** 2 for c' in window(c))) ** beta

    with the window running from ``c - size // 2`` to ``c + (size - 1) // 2``. ``x`` has shape
    ``(N, C, ...)`` (3 or more dims) and a floating-point dtype; contiguous and channels_last
    layouts are both handled natively. The defaults are the paper's (n=5, k=2, alpha=1e-4,
    beta=0.75); torchvision-style LRN uses ``k=1``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lrn: x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"lrn: size must be an int, got {type(size).__name__}")
    return torch.ops.alexnet_rs.lrn(x, size, float(alpha), float(beta), float(k))


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
    for name, t in (("x", x), ("w", w)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"grouped_conv2d: {name} must be a torch.Tensor, got {type(t).__name__}")
    return torch.ops.alexnet_rs.grouped_conv2d(x, w, b, _pair(stride), _pair(padding), groups)


def _pair(v: int | tuple[int, int]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


__all__ = ["lrn", "grouped_conv2d"]
