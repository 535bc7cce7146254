"""alexnet_rs: AlexNet on a Rust + libtorch core, with our own LRN kernel.

Importing the package loads the native extension, which registers ``torch.ops.alexnet_rs.*``.
"""


import torch  # loads libtorch before the extension that links against it

from . import _native, data, nn, ops, viz
from ._boundary import checked as _checked
from ._native import PRESETS, __version__
from .export import export_onnx
from .model import AlexNet, from_torchvision
from .placement import Placement
from .settings import TrainSettings
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

# The extension's functions, with Python's own argument errors as AlexNetErrors (_boundary.py).
evaluate = _checked(_native.evaluate)
info_text = _checked(_native.info_text)
layer_table = _checked(_native.layer_table)
param_shapes = _checked(_native.param_shapes)
# The run draws its initialisation from a generator of its own (seeded by its `seed`), never from
# torch's global one: the caller's random stream, and other threads', are left alone.
train = _checked(_native.train)


train_config = _checked(_native.train_config)
train_settings = _checked(_native.train_settings)

__all__ = [
    "PRESETS",
    "__version__",
    "info_text",
    "layer_table",
    "param_shapes",
    "train",
    "train_config",
    "train_settings",
    "TrainSettings",
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
