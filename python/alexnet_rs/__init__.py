"""alexnet_rs: AlexNet on a Rust + libtorch core, with our own LRN kernel.

Importing the package loads the native extension, which registers ``torch.ops.alexnet_rs.*``.
"""

import torch  # noqa: F401  -- loads libtorch before the extension that links against it

from . import _native, data, nn, ops
from ._native import PRESETS, __version__, evaluate, info_text, layer_table, param_shapes, train
from .export import export_onnx
from .model import AlexNet, from_torchvision
from .placement import Placement
from .errors import (
    AlexNetError,
    AlexNetIOError,
    ConfigError,
    DataError,
    DivergedError,
    DtypeError,
    MissingFileError,
    ShapeError,
    TorchError,
)

__all__ = [
    "PRESETS",
    "__version__",
    "info_text",
    "layer_table",
    "param_shapes",
    "train",
    "evaluate",
    "ops",
    "nn",
    "AlexNet",
    "from_torchvision",
    "export_onnx",
    "Placement",
    "data",
    "AlexNetError",
    "AlexNetIOError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "DtypeError",
    "MissingFileError",
    "ShapeError",
    "TorchError",
]
