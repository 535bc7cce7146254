"""Pictures of a network: the paper's Fig. 3 (the first layer's kernels)."""

from __future__ import annotations

import os

import numpy as np

from . import _native
from ._boundary import checked
from .errors import DataError, DtypeError
from .model import AlexNet


def filters(source: AlexNet | str | os.PathLike) -> np.ndarray:
    """The first convolution's kernels as an ``(H, W, 3)`` uint8 image: a grid of colour tiles,
    each kernel scaled to the full range on its own, one block per tower (the ``paper`` and
    ``caffe`` presets' two groups of 48 kernels, which the paper's two GPUs learned apart; top:
    kernels 1-48). ``source``: a model, or a run/checkpoint folder of ``alexnet train``.
    ``alexnet filters RUN --out conv1.png`` writes the same grid with each tower's label and how
    much its kernels use colour (``filter_towers`` gives those numbers here)."""
    image, _ = _grid(source)
    return image


def filter_towers(source: AlexNet | str | os.PathLike) -> list[dict]:
    """Per tower of the first convolution: ``first`` kernel, ``count``, and ``colour_spread``: the
    mean over its kernels of the spread between their R, G and B planes relative to the kernel's
    own scale (0: colour-agnostic, as the paper saw one GPU's kernels become)."""
    _, towers = _grid(source)
    return [{"first": f, "count": n, "colour_spread": s} for f, n, s in towers]


def _grid(source):
    if isinstance(source, (str, os.PathLike)):
        # The weights alone, as `alexnet filters` reads them: a run of an ablation arm
        # (`--no-lrn`, `--activation tanh`), which AlexNet.load_checkpoint refuses, draws too.
        preset, _, weights, _ = checked(_native.load_checkpoint)(os.fspath(source))
        weights = dict(weights)
    elif isinstance(source, AlexNet):
        preset, weights = source.preset, source._weights()
    else:
        raise DtypeError(f"filters: source must be an alexnet_rs.AlexNet or a run folder, got {type(source).__name__}")
    first = _native.param_shapes(preset, 1)[0][0]
    weight = weights[first].cpu()
    if not bool(weight.isfinite().all()):
        # Drawn (and measured) as a plain colour, they read as colour-agnostic kernels (a
        # checkpoint cannot hold them: the CLI's weights are checked when loaded).
        raise DataError(f"filters: {first} holds NaN or infinite values")
    data, height, width, towers = checked(_native.filter_grid)(preset, weight)
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy(), towers


__all__ = ["filters", "filter_towers"]
