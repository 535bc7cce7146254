"""Drop-in modules backed by our ops."""

import torch
import torch.onnx
from torch import nn

from ._boundary import int_arg, real_arg
from .errors import ConfigError
from .ops import _lrn_checked


class LocalResponseNorm(nn.Module):
    """Drop-in for :class:`torch.nn.LocalResponseNorm` (same arguments, defaults and formula),
    running our fused LRN kernel."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        where = "LocalResponseNorm"
        self.size = int_arg(where, "size", size, 1)
        self.alpha, self.beta, self.k = (real_arg(where, n, v) for n, v in (("alpha", alpha), ("beta", beta), ("k", k)))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript: the op's own checks
            return torch.ops.alexnet_rs.lrn(input, self.size, self.alpha, self.beta, self.k)
        return self._checked(input)

    @torch.jit.unused
    def _checked(self, input: torch.Tensor) -> torch.Tensor:
        return _lrn_checked("LocalResponseNorm", "input", input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)


def _lrn_onnx(g, x, size, alpha, beta, k):
    """``alexnet_rs::lrn`` in ``torch.onnx.export(..., dynamo=False)``: ONNX ``LRN`` (over a 4-D
    view of a 3-D or 5-D input), which uses PyTorch's alpha/size convention; an even size (whose window PyTorch pads unevenly) has no
    ONNX equivalent and is refused, as ``export_onnx`` refuses it."""
    from torch.onnx import symbolic_helper as sh

    size, alpha, beta, k = (sh._get_const(v, kind, n) for v, kind, n in
                            ((size, "i", "size"), (alpha, "f", "alpha"), (beta, "f", "beta"), (k, "f", "k")))
    if size % 2 == 0:
        raise ConfigError(f"LocalResponseNorm: an even size ({size}) has no ONNX equivalent")
    if sh._get_tensor_rank(x) == 4:
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)
    # ONNX's LRN takes (N, C, H, W) alone (onnxruntime refused the exported 3-D or 5-D graph):
    # (N, C, ...) as (N, C, rest, 1), the same windows across channels, and back.
    flat = g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, 0, -1, 1])))
    y = g.op("LRN", flat, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)
    return g.op("Reshape", y, g.op("Shape", x))


torch.onnx.register_custom_op_symbolic("alexnet_rs::lrn", _lrn_onnx, 1)

__all__ = ["LocalResponseNorm"]
