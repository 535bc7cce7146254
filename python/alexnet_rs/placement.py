"""The paper's two-device split, as computed by the Rust core (the same code as `alexnet placement`)."""

from . import _native
from ._boundary import checked


class Placement:
    """Where each parameter shard of a preset lives on one or two devices.

    >>> print(Placement("paper", "cuda:0,cuda:1").table())
    """

    def __init__(self, preset: str = "paper", devices: str = "cuda:0,cuda:1", num_classes: int = 1000,
                 input_size: int | None = None):
        self.preset, self.devices, self.num_classes = preset, devices, num_classes
        # Validates the arguments; fc6's size depends on the input size (default: the preset's).
        self._table = checked(_native.placement_table)(preset, devices, num_classes, input_size)

    def table(self) -> str:
        """Exactly what ``alexnet placement --preset P --devices D [--input-size S]`` prints."""
        return self._table

    def __repr__(self) -> str:
        return f"Placement(preset={self.preset!r}, devices={self.devices!r})"


__all__ = ["Placement"]
