"""Drop-in modules backed by our ops."""

import torch
from torch import nn

from .ops import lrn


class LocalResponseNorm(nn.Module):
    """Drop-in for :class:`torch.nn.LocalResponseNorm` (same arguments, defaults and formula),
    running our fused LRN kernel."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return lrn(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)


__all__ = ["LocalResponseNorm"]
