"""Exceptions raised by alexnet_rs. Each also derives from the standard exception that fits it,
so existing ``except ValueError`` / ``except TypeError`` clauses keep working."""


class AlexNetError(Exception):
    """Base class of every error raised by alexnet_rs's Rust core."""


class ConfigError(AlexNetError, ValueError):
    """A bad preset, option or configuration value."""


class ShapeError(AlexNetError, ValueError):
    """A tensor of the wrong shape, size or device."""


class DtypeError(AlexNetError, TypeError):
    """A tensor of the wrong dtype, or an argument of the wrong type."""


class TorchError(AlexNetError, RuntimeError):
    """A failure inside libtorch, or an internal error (a caught panic: please report it)."""


class DataError(AlexNetError, ValueError):
    """A file that could not be decoded (corrupt, truncated, not an image, too large)."""


class MissingFileError(AlexNetError, FileNotFoundError):
    """A path that does not exist."""


class AlexNetIOError(AlexNetError, OSError):
    """Any other I/O failure."""


class DivergedError(AlexNetError, FloatingPointError):
    """Training stopped on a non-finite loss (the last good checkpoint is kept)."""


__all__ = [
    "AlexNetError",
    "ConfigError",
    "ShapeError",
    "DtypeError",
    "TorchError",
    "DataError",
    "MissingFileError",
    "AlexNetIOError",
    "DivergedError",
]
