"""Type stubs of the Rust extension module (checked by mypy.stubtest in make test)."""

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from typing_extensions import disjoint_base, final

from alexnet_rs.settings import CheckpointEvent, EpochEvent, StepEvent, TrainSettings

__all__ = [
    "DataLoader",
    "EpochIter",
    "PRESETS",
    "__version__",
    "evaluate",
    "forward",
    "activations",
    "filter_grid",
    "info_text",
    "init_params",
    "layer_table",
    "layers",
    "load_image",
    "load_checkpoint",
    "lrn",
    "param_shapes",
    "placement_table",
    "save_checkpoint",
    "shard",
    "train",
    "train_config",
    "train_settings",
    "train_events",
    "cli",
    "cpu_cache_enter",
    "cpu_cache_exit",
    "cpu_cache_stats",
    "transform_views",
    "write_file",
    "save_tensors",
]
__version__: str
PRESETS: list[str]

def lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor: ...
def cpu_cache_enter() -> bool: ...
def cpu_cache_exit() -> None: ...
def cpu_cache_stats() -> dict[str, int]: ...
def layer_table(
    preset: str, input_size: int | None = None, num_classes: int = 1000
) -> list[tuple[str, str, list[int], int, int]]: ...
def info_text(preset: str, input_size: int | None = None, num_classes: int = 1000) -> str: ...
def param_shapes(preset: str, num_classes: int = 1000) -> list[tuple[str, list[int]]]: ...
def layers(preset: str, input_size: int | None = None, num_classes: int = 1000) -> str: ...
def shard(
    preset: str,
    params: dict[str, torch.Tensor],
    devices: str,
    num_classes: int = 1000,
    input_size: int | None = None,
) -> list[tuple[str, list[torch.Tensor]]]: ...
def forward(
    preset: str,
    params: dict[str, torch.Tensor] | dict[str, list[torch.Tensor]],
    x: torch.Tensor,
    train: bool = False,
    num_classes: int = 1000,
    conv_backend: str = "auto",
    input_size: int | None = None,
) -> torch.Tensor: ...
def activations(
    preset: str,
    params: dict[str, torch.Tensor] | dict[str, list[torch.Tensor]],
    x: torch.Tensor,
    layers: list[str],
    train: bool = False,
    num_classes: int = 1000,
    conv_backend: str = "auto",
    input_size: int | None = None,
) -> list[torch.Tensor]: ...
def filter_grid(preset: str, weight: torch.Tensor) -> tuple[bytes, int, int, list[tuple[int, int, float]]]: ...
def load_image(path: str | PathLike[str]) -> torch.Tensor: ...
def transform_views(
    image: torch.Tensor,
    resize: int,
    crop: int,
    view: str = "center",
    square: bool = False,
    seed: int = 0,
    epoch: int = 0,
    index: int = 0,
) -> torch.Tensor: ...
def placement_table(preset: str, devices: str, num_classes: int = 1000, input_size: int | None = None) -> str: ...
def train_config(config: TrainSettings | dict[str, Any]) -> dict[str, Any]: ...
def train_settings() -> list[dict[str, Any]]: ...
def train_events() -> list[dict[str, Any]]: ...
def cli(
    argv: list[str],
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
    all_reduce: Callable[[torch.Tensor], object] | None = None,
) -> int: ...
def write_file(path: str | PathLike[str], data: bytes) -> None: ...
def save_tensors(path: str | PathLike[str], tensors: dict[str, torch.Tensor]) -> None: ...
def train(
    config: TrainSettings | dict[str, Any],
    on_step: Callable[[StepEvent | EpochEvent | CheckpointEvent], object] | None = None,
    resume: str | PathLike[str] | None = None,
) -> dict[str, Any]: ...
def init_params(
    preset: str, num_classes: int = 1000, input_size: int | None = None
) -> list[tuple[str, torch.Tensor]]: ...
def save_checkpoint(
    preset: str,
    params: dict[str, torch.Tensor],
    out: str | PathLike[str],
    classes: list[str] | None = None,
    input_size: int | None = None,
) -> Path: ...
def load_checkpoint(
    path: str | PathLike[str],
) -> tuple[str, list[str], list[tuple[str, torch.Tensor]], dict[str, Any]]: ...
def evaluate(
    checkpoint: str | PathLike[str],
    data: str | PathLike[str] | None = None,
    ten_crop: bool = False,
    limit: int | None = None,
    batch_size: int = 128,
    devices: str = "cpu",
) -> dict[str, Any]: ...

@disjoint_base
class DataLoader:
    def __new__(
        cls,
        data: str | PathLike[str],
        split: str = "train",
        preset: str = "paper",
        crop: int = 224,
        view: str = "train",
        batch_size: int = 64,
        threads: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        on_bad_image: str = "skip",
        limit: int | None = None,
        stats: str | PathLike[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        classes: list[str] | None = None,
    ) -> DataLoader: ...
    def __len__(self) -> int: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def num_samples(self) -> int: ...
    def epoch(self, epoch: int) -> EpochIter: ...
    def __iter__(self) -> EpochIter: ...

@final
class EpochIter:
    def __new__(cls) -> EpochIter: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    @property
    def skipped(self) -> int: ...
    def __len__(self) -> int: ...
