"""``alexnet_rs.AlexNet``: a real ``torch.nn.Module`` whose forward is the Rust functional forward.

Its ``nn.Parameter``s carry the Rust side's names (torchvision's keys for the ``torchvision``
preset), so ``state_dict()`` is interchangeable with torchvision and with ``alexnet train``
checkpoints (``weights.safetensors``). Gradients flow back into the parameters through the Rust
forward (it records the same autograd graph as PyTorch ops would).
"""

from __future__ import annotations

import torch
from torch import nn

from . import _native


class AlexNet(nn.Module):
    """AlexNet in one of the presets ``paper``, ``torchvision``, ``caffe``.

    ``conv_backend``: ``"ours"`` (our grouped-convolution op), ``"stock"`` (ATen/cuDNN) or
    ``"auto"`` (the faster per shape on CUDA).
    """

    def __init__(self, preset: str = "paper", num_classes: int = 1000, conv_backend: str = "auto"):
        super().__init__()
        if preset not in _native.PRESETS:
            from .errors import ConfigError

            raise ConfigError(f"unknown preset {preset!r} (choose one of: {', '.join(_native.PRESETS)})")
        self.preset, self.num_classes, self.conv_backend = preset, num_classes, conv_backend
        for name, tensor in _native.init_params(preset, num_classes):
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(tensor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AlexNet.forward: x must be a torch.Tensor, got {type(x).__name__}")
        params = dict(self.named_parameters())
        return _native.forward(self.preset, params, x, self.training, self.num_classes, self.conv_backend)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, num_classes={self.num_classes}, conv_backend={self.conv_backend!r}"

    def save_checkpoint(self, run: str, classes: list[str] | None = None, input_size: int | None = None) -> str:
        """Writes this model's weights as an ``alexnet train`` checkpoint under ``run`` (what
        ``alexnet eval``/``predict`` and ``--resume`` read). Returns the checkpoint folder."""
        params = {k: v.detach() for k, v in self.state_dict().items()}
        return str(_native.save_checkpoint(self.preset, params, run, classes, input_size))

    @classmethod
    def load_checkpoint(cls, path: str, conv_backend: str = "auto") -> "AlexNet":
        """A model with the weights of an ``alexnet train`` checkpoint (a run folder: its newest
        checkpoint; or a ``ckpt-<step>`` folder), validated by the Rust loader (truncated or
        foreign files are refused). Reads safetensors only (no pickle)."""
        preset, classes, weights = _native.load_checkpoint(path)
        model = cls(preset, num_classes=len(classes), conv_backend=conv_backend)
        model.load_state_dict(dict(weights))
        model.classes = classes
        return model

    def to_torchvision(self) -> nn.Module:
        """A ``torchvision.models.AlexNet`` holding copies of this model's weights."""
        import torchvision

        if self.preset != "torchvision":
            raise ValueError("to_torchvision needs the 'torchvision' preset")
        tv = torchvision.models.alexnet(weights=None, num_classes=self.num_classes)
        tv.load_state_dict({k: v.detach().clone() for k, v in self.state_dict().items()})
        return tv


def from_torchvision(model: nn.Module, conv_backend: str = "auto") -> AlexNet:
    """Our ``torchvision`` preset with copies of a torchvision AlexNet's weights."""
    state = model.state_dict()
    ours = AlexNet("torchvision", num_classes=state["classifier.6.weight"].shape[0], conv_backend=conv_backend)
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return ours


__all__ = ["AlexNet", "from_torchvision"]
