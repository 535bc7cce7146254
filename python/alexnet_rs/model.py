"""``alexnet_rs.AlexNet``: a real ``torch.nn.Module`` whose forward is the Rust functional forward.

Its ``nn.Parameter``s carry the Rust side's names (torchvision's keys for the ``torchvision``
preset), so ``state_dict()`` is interchangeable with torchvision and with ``alexnet train``
checkpoints (``weights.safetensors``). Gradients flow back into the parameters through the Rust
forward (it records the same autograd graph as PyTorch ops would).
"""

from __future__ import annotations

import json
import operator
import os
import re
import warnings

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from . import _native
from ._boundary import checked, int_arg, path_arg, str_arg, tensor_arg
from .errors import ConfigError, DtypeError

BACKENDS = ("ours", "stock", "auto")

# The forward pre-hooks that compute a layer's parameter from others (torch.nn.utils.prune, the
# legacy weight_norm and spectral_norm): AlexNet runs them before each forward, as the layer's
# own forward call would.
_WEIGHT_HOOKS = (prune.BasePruningMethod, WeightNorm, SpectralNorm)

# How many modules torchvision's AlexNet containers hold (ReLU, Dropout and pooling too): an index
# from the end counts from there (classifier[-1] is classifier[6]).
_TORCHVISION_LENGTHS = {"features": 13, "classifier": 7}

# The extension's forward, with Python's own argument errors as AlexNetErrors (wrapped once).
_forward = checked(_native.forward)
_activations = checked(_native.activations)


def _backend(where: str, conv_backend: object) -> str:
    str_arg(where, "conv_backend", conv_backend)
    if conv_backend not in BACKENDS:
        raise ConfigError(f"{where}: conv_backend must be one of {', '.join(BACKENDS)}, got {conv_backend!r}")
    return conv_backend  # type: ignore[return-value]


class _Layer(nn.Module):
    """A layer's parameters. The layers run inside the one Rust forward, not as submodules, so
    hooks on them would never fire: registering one warns, and calling one is an error that says
    what to call instead. A layer can be replaced by a module with the same parameters (the class
    layer: with any number of outputs), as on torchvision's model: ``model.classifier[6] =
    nn.Linear(4096, 10)``, ``model.fc8 = ...``; the forward reads its ``weight`` and ``bias``."""

    def __init__(self, owner: "AlexNet", path: str) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in named_modules
        object.__setattr__(self, "_path", path)

    def __getitem__(self, index: int) -> nn.Module:
        """Child layer ``index`` by torchvision's index (``classifier[6]``, ``classifier[-1]``);
        ReLU, Dropout and pooling have none here (they run inside the Rust forward and hold no
        parameters)."""
        return self._modules[self._key(index)]

    def __setitem__(self, index: int, module: nn.Module) -> None:
        self._owner._replace_layer(self, self._key(index), module)

    def _key(self, index: object) -> str:
        """The child's name for ``index``, or an IndexError naming the layers there are."""
        try:
            i = operator.index(index)  # type: ignore[arg-type]
        except TypeError:
            raise IndexError(f"{self._path} takes a layer's int index (torchvision's), got {index!r}") from None
        if i < 0 and self._owner.preset == "torchvision" and self._path in _TORCHVISION_LENGTHS:
            i += _TORCHVISION_LENGTHS[self._path]
        if str(i) not in self._modules:
            raise IndexError(f"{self._path} has no layer {i} (its layers: {', '.join(self._modules) or 'none'}; "
                             "ReLU, Dropout and pooling run inside the Rust forward, without a module)")
        return str(i)

    def _layers(self) -> list[nn.Module]:
        if not self._modules:
            layers = ", ".join(f"model.{n}" for n in self._owner._modules if n != "features")
            raise DtypeError(f"{self._path} holds no layers" + (
                f" (this preset's layers are {layers})" if self is self._owner.features else ""))
        return list(self._modules.values())

    def __iter__(self):
        """The layers with parameters, in order (``for layer in model.features: ...``)."""
        return iter(self._layers())

    def __len__(self) -> int:
        return len(self._layers())

    def __bool__(self) -> bool:
        return True  # a module, not an empty container

    def _weight_shape(self, kind: str) -> tuple[int, ...]:
        """The layer's whole weight shape (shards' rows added up), if it is a ``kind`` layer
        (``linear``: 2-D, ``conv``: 4-D); AttributeError otherwise, as nn.Module gives."""
        shards = [p.shape for n, p in self._parameters.items()
                  if p is not None and (n == "weight" or n.startswith("weight__shard"))]
        if not shards or len(shards[0]) != (2 if kind == "linear" else 4):
            raise AttributeError(f"{self._path} is no {kind} layer")
        return (sum(s[0] for s in shards), *shards[0][1:])

    # torchvision's fine-tuning idiom reads these (model.classifier[6].in_features).
    @property
    def in_features(self) -> int:
        return self._weight_shape("linear")[1]

    @property
    def out_features(self) -> int:
        return self._weight_shape("linear")[0]

    @property
    def out_channels(self) -> int:
        return self._weight_shape("conv")[0]

    def __setattr__(self, name: str, value) -> None:
        if not _replacing(self, name, value):
            super().__setattr__(name, value)

    def forward(self, *args, **kwargs):
        raise ConfigError("AlexNet's layers run inside one Rust forward call, not one by one: call the model, "
                          "or take activations with model.features(x, layers=[...])")

    def _warn_hook(self) -> None:
        warnings.warn("AlexNet's layers run inside one Rust forward call: a hook on one of its submodules never "
                      "fires. Hook the AlexNet module itself, or take activations with "
                      "model.features(x, layers=[...]).", UserWarning, stacklevel=3)

    def register_forward_hook(self, *args, **kwargs):
        self._warn_hook()
        return super().register_forward_hook(*args, **kwargs)

    def register_forward_pre_hook(self, hook, *args, **kwargs):
        if not isinstance(hook, _WEIGHT_HOOKS):  # those run (AlexNet._param_dict)
            self._warn_hook()
        return super().register_forward_pre_hook(hook, *args, **kwargs)

    def register_full_backward_hook(self, *args, **kwargs):
        self._warn_hook()
        return super().register_full_backward_hook(*args, **kwargs)

    def register_full_backward_pre_hook(self, *args, **kwargs):
        self._warn_hook()
        return super().register_full_backward_pre_hook(*args, **kwargs)


class _Features(_Layer):
    """``model.features``: calling it, ``model.features(x, layers)``, gives the named layers'
    activations (:meth:`AlexNet._features`). It is a submodule, so that the ``torchvision``
    preset's ``features.<i>`` layers resolve by name (``get_submodule``, ``get_parameter``,
    ``torch.func.functional_call``) as on torchvision's model."""

    def forward(self, x: torch.Tensor, layers: str | list[str] | tuple[str, ...] | None = None
                ) -> dict[str, torch.Tensor]:
        if layers is None:
            raise ConfigError("model.features(x, layers): name the layers whose activations you want "
                              "(those of `alexnet info` / alexnet_rs.layer_table), e.g. layers=['fc7']")
        return self._owner._features(x, layers)


class AlexNet(nn.Module):
    """AlexNet in one of the presets ``paper``, ``torchvision``, ``caffe`` (or ``cnn4``, the
    paper's Fig. 1 network, so that every checkpoint ``alexnet train`` writes loads here), for
    square inputs of ``input_size`` pixels (default: the preset's: 224; caffe 227, cnn4 32; it sizes the first
    FC layer of the presets without adaptive pooling).

    ``conv_backend``: ``"ours"`` (our grouped-convolution op), ``"stock"`` (ATen/cuDNN) or
    ``"auto"`` (the faster per shape on CUDA).

    ``devices``: one device (``"cuda:0"``; default: the CPU, move it with ``.to()`` as usual), or
    two (``"cuda:0,cuda:1"``, or ``"cpu,cpu"`` to try it anywhere): the paper's two-GPU split.
    Then the parameters are ``nn.Parameter`` shards, ``<name>__shard0`` and ``<name>__shard1`` (the
    rows of ``Placement(preset, devices).table()``, each on its device; the class layer is one
    shard on the first device, as in the paper), which ``parameters()``
    and any ``torch.optim`` optimiser see; the forward is the Rust sharded forward (activations
    cross devices where the paper's GPUs exchanged them). ``state_dict()`` gives whole tensors
    under the usual names and ``load_state_dict()`` takes them, so checkpoints interchange with a
    one-device model.

    ``classes``: the class names, label order, of a model from ``load_checkpoint`` (else None);
    ``save_checkpoint`` writes them, ``reset_classifier`` clears them.
    """

    def __init__(self, preset: str = "paper", num_classes: int = 1000, conv_backend: str = "auto",
                 input_size: int | None = None, devices: str | None = None):
        super().__init__()
        str_arg("AlexNet", "preset", preset)
        # Stored as ints: a NumPy integer is accepted, and was kept (ONNX export refused it).
        num_classes = int_arg("AlexNet", "num_classes", num_classes)
        if input_size is not None:
            input_size = int_arg("AlexNet", "input_size", input_size)
        self.preset, self.num_classes = preset, num_classes
        self.classes: list[str] | None = None
        self.conv_backend = _backend("AlexNet", conv_backend)
        if devices is not None:
            str_arg("AlexNet", "devices", devices)
            devices = ",".join(d.strip() for d in devices.split(","))  # as the Rust parser reads them
        self.devices = devices
        self.features = _Features(self, "features")
        arch_size = input_size
        whole = checked(_native.init_params)(preset, num_classes, input_size)
        # name -> its number of shards (the class layer stays whole on the first device).
        self._shards = {name: 1 for name, _ in whole}
        self._sharded = devices is not None and "," in devices
        if self._sharded:
            parts = checked(_native.shard)(preset, dict(whole), devices, num_classes, input_size)
            for name, shards in parts:
                self._shards[name] = len(shards)
                for i, t in enumerate(shards):
                    self._register(f"{name}__shard{i}", t)
            # torch's load_state_dict (ours, or a parent module's) takes whole tensors: these
            # turn them into our shards and name the missing ones whole.
            self.register_load_state_dict_pre_hook(_split_whole_tensors)
            self.register_load_state_dict_post_hook(_whole_missing_keys)
        else:
            for name, tensor in whole:
                self._register(name, tensor)
            if devices is not None:
                checked(_native.placement_table)(preset, devices, num_classes)  # a valid device name
                device = torch.device(devices)
                if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
                    raise ConfigError(f"AlexNet: devices={devices!r}, but this machine has "
                                      f"{torch.cuda.device_count()} CUDA device(s)")
                self.to(device)
        # As torch.nn's modules: torch.set_default_dtype and a `with torch.device(...)` block (meta
        # for a model to be loaded with assign=True) apply; explicit `devices` win over the latter.
        if torch.get_default_dtype() != torch.float32:
            self.to(torch.get_default_dtype())
        if devices is None and torch.get_default_device().type != "cpu":
            self.to(torch.get_default_device())
        if arch_size is None:
            arch_size = json.loads(_native.layers(preset, None, num_classes))[0]["out_shape"][-1]
        self.input_size: int = arch_size

    def _register(self, name: str, tensor: torch.Tensor) -> nn.Parameter:
        *path, leaf = name.split(".")
        module = self
        for part in path:
            if part not in module._modules:
                module._modules[part] = _Layer(self, f"{module._path}.{part}" if module is not self else part)
            module = module._modules[part]
        param = nn.Parameter(tensor)
        module.register_parameter(leaf, param)
        return param

    def __setattr__(self, name: str, value) -> None:
        if not _replacing(self, name, value):
            super().__setattr__(name, value)

    def _replace_layer(self, parent: nn.Module, key: str, new: object) -> None:
        """``parent.<key> = new``: a layer replaced by a module with the same parameters, or the
        class layer by one with another number of outputs (then ``num_classes`` follows)."""
        path = f"{parent._path}.{key}" if parent is not self else key
        old = parent._modules[key]
        if not isinstance(new, nn.Module):
            raise DtypeError(f"{path} must be a torch.nn.Module, got {type(new).__name__}")
        if old._modules:
            inner = ", ".join(f"{path}.{n}" for n in old._modules)
            raise ConfigError(f"{path} holds the layers {inner}: replace one of them (model.{path}[i] = ... "
                              f"or model.{path}.<name> = ...), or call reset_classifier(n)")
        if not old._parameters:
            raise ConfigError(f"{path} holds no parameters: there is no layer to replace")
        if self._sharded:
            raise ConfigError(f"{path}: a two-device model's layers are shards on two devices; "
                              "for a new class layer call reset_classifier(n)")
        want = {n: tuple(p.shape) for n, p in old.named_parameters()}
        got = {n: tuple(p.shape) for n, p in new.named_parameters()}
        last = path == self._class_layer()
        same = got == want or (last and set(got) == {"weight", "bias"} and got["weight"][1:] == want["weight"][1:]
                               and got["bias"] == got["weight"][:1])
        if not same:
            shapes = " and ".join(f"{n} {tuple(s)}" for n, s in want.items())
            if last:
                shapes = f"weight (n, {', '.join(map(str, want['weight'][1:]))}) and bias (n,) (n classes)"
            given = ", ".join(f"{n} {s}" for n, s in got.items()) or "no parameters"
            raise ConfigError(f"{path} takes {shapes}, got a {type(new).__name__} with {given}")
        # Only the weight and bias are read: a stride, padding or dilation of the new module's own
        # was dropped in silence (print(model) still showed the preset's).
        rows = json.loads(_native.layers(self.preset, self.input_size, self.num_classes))[1:]
        op = next((r["op"] for r in rows if r["name"] == path), {})
        if op.get("kind") == "conv":
            st, pad = op["stride"], op["padding"]
            computed = dict(stride=(st, st), padding=(pad, pad), dilation=(1, 1), groups=op["groups"],
                            padding_mode="zeros")
            odd = [f"{n}={getattr(new, n)!r}" for n, v in computed.items() if _setting(new, n, v) != v]
            if odd:
                raise ConfigError(f"{path} computes {_layer_repr(op)} with the new module's weight and bias only; "
                                  f"a {type(new).__name__} with {', '.join(odd)} would not be computed as such")
        nn.Module.__setattr__(parent, key, new)
        if last:
            self.num_classes, self.classes = got["weight"][0], None  # the old names label no output now

    def _param_dict(self, forward: bool = False) -> dict:
        """name -> tensor, or -> [shards] with two devices (what the Rust forward takes). Read as
        attributes, so a parametrization (``torch.nn.utils.parametrize``, weight_norm) applies,
        after the hooks of ``torch.nn.utils.prune`` and the legacy weight_norm / spectral_norm
        have computed theirs. Outside a ``forward`` (saving, export, figures, loading) the
        spectral_norm hook takes no power-iteration step, as torch's state_dict() takes none."""
        for name, module in self.named_modules():
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, SpectralNorm) and not forward:
                    setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))
                elif isinstance(hook, _WEIGHT_HOOKS):
                    hook(module, ())
            # A replacement layer (model.fc8 = nn.Linear(...)) is only read, never called.
            if name and not isinstance(module, _Layer) and (
                    module._forward_hooks or module._backward_hooks or module._backward_pre_hooks
                    or any(not isinstance(h, _WEIGHT_HOOKS) for h in module._forward_pre_hooks.values())):
                warnings.warn(f"AlexNet: the hooks on {name} never fire: the layers run inside one Rust forward "
                              "call (only their weight and bias are read). Hook the AlexNet module itself, or take "
                              "activations with model.features(x, layers=[...]).", UserWarning, stacklevel=3)

        def get(name: str) -> torch.Tensor:
            *path, leaf = name.split(".")
            module = self
            for part in path:
                module = module._modules[part]
            return getattr(module, leaf)

        if not self._sharded:
            return {n: get(n) for n in self._shards}
        return {n: [get(f"{n}__shard{i}") for i in range(k)] for n, k in self._shards.items()}

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):  # type: ignore[override]
        """Whole tensors under the usual names, also with two devices (shards gathered on the
        first shard's device). A parametrized tensor is stored as torch stores it (its
        ``parametrizations.*`` originals). With two devices, ``keep_vars=True`` gives those whole
        tensors as detached copies: the Parameters are the shards (``named_parameters()``)."""
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self._sharded:
            for n, k in self._shards.items():
                names = [f"{prefix}{n}__shard{i}" for i in range(k)]
                if all(x in sd for x in names):
                    parts = [sd.pop(x) for x in names]
                    sd[prefix + n] = torch.cat([p.detach().to(parts[0].device) for p in parts], 0)
        return sd

    def _weights(self) -> dict[str, torch.Tensor]:
        """name -> the whole tensor the forward computes with (a parametrization such as
        weight_norm applied, two devices' shards gathered), detached: what checkpoints, ONNX
        export and the figures take."""
        out = {}
        for n, v in self._param_dict().items():
            if isinstance(v, list):
                v = torch.cat([p.detach().to(v[0].device) for p in v], 0)
            out[n] = v.detach()
        return out

    def _check_x(self, where: str, x: torch.Tensor) -> None:
        tensor_arg(where, "x", x)
        (name, first), *rest = self.named_parameters()
        odd = next(((n, p) for n, p in rest if p.dtype != first.dtype), None)
        if odd is not None:
            raise DtypeError(f"{where}: {odd[0]} is {odd[1].dtype} but {name} is {first.dtype}: convert that layer "
                             f"(model.{odd[0].rsplit('.', 1)[0]}.to({first.dtype})) or the whole model")
        if (x.is_floating_point() and x.dtype != first.dtype and first.is_floating_point()
                and not torch.is_autocast_enabled(x.device.type)):
            raise DtypeError(f"{where}: x has dtype {x.dtype} but the parameters are {first.dtype}: "
                             f"convert one to the other (x.to({first.dtype}) or model.to({x.dtype}))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x("AlexNet.forward", x)
        return _forward(self.preset, self._param_dict(forward=True), x, self.training, self.num_classes, self.conv_backend,
                        self.input_size)

    def _features(self, x: torch.Tensor, layers: str | list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        """``model.features(x, layers)``: the activations of the named layers for images ``x``, as ``{name: tensor}`` in the order
        asked. Names as ``print(model)`` and ``alexnet info`` show them: ``conv1`` (after its
        ReLU), ``conv1.lrn``, ``conv1.pool``, ... ``fc6``, ``fc7``, ``fc8`` for ``paper``;
        torchvision's keys (``features.0``, ``features.0.pool``, ``avgpool``, ``classifier.1``, ...)
        for ``torchvision``. The Rust forward runs up to the deepest layer asked for; the results
        are connected to autograd (a perceptual loss can backpropagate through them to ``x`` and
        the parameters). Training mode applies dropout, as ``forward``; with two devices every
        activation is gathered on the first."""
        where = "AlexNet.features"
        self._check_x(where, x)
        names = [layers] if isinstance(layers, str) else layers
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise DtypeError(f"{where}: layers must be a layer name or a list of them, got {type(layers).__name__}")
        out = _activations(self.preset, self._param_dict(forward=True), x, list(names), self.training, self.num_classes,
                           self.conv_backend, self.input_size)
        return dict(zip(names, out))

    def _class_layer(self) -> str:
        return _native.param_shapes(self.preset, self.num_classes)[-1][0].rsplit(".", 1)[0]

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the class layer (``fc8``; ``classifier.6`` for ``torchvision``) by a new one of
        ``num_classes`` outputs, initialised as the preset initialises it (timm's name for this).
        Every other parameter is kept, frozen ones stay frozen; the new layer trains (its new
        ``nn.Parameter``s have ``requires_grad=True``, as a new ``nn.Linear``'s): build the
        optimiser after this call."""
        num_classes = int_arg("AlexNet.reset_classifier", "num_classes", num_classes)
        last = self._class_layer()
        fresh = dict(checked(_native.init_params)(self.preset, num_classes, self.input_size))
        *path, key = last.split(".")
        parent = self.get_submodule(".".join(path))
        old = parent._modules[key]
        new = _Layer(self, last)  # a new module: a parametrization of the old one goes with it
        for leaf in ("weight", "bias"):
            name = f"{leaf}__shard0" if self._sharded else leaf
            ref = getattr(old, name)
            new.register_parameter(name, nn.Parameter(fresh[f"{last}.{leaf}"].to(device=ref.device, dtype=ref.dtype)))
        parent._modules[key] = new
        self.num_classes, self.classes = num_classes, None  # the old names label no output now

    def _replicate_for_data_parallel(self):
        # nn.DataParallel over 2+ GPUs copies a module's submodules and swaps its parameters for
        # plain tensors, which our layers (read by one Rust forward) do not take: a clear error,
        # not a ConfigError about replacing a layer.
        raise ConfigError("AlexNet: nn.DataParallel cannot replicate this module (its layers run inside one Rust "
                          "forward): use DistributedDataParallel (python -m alexnet_rs.ddp shows how; "
                          "python -m alexnet_rs.train runs the Rust loop under torchrun), or "
                          "devices='cuda:0,cuda:1' for the paper's two-GPU split")

    def extra_repr(self) -> str:
        devices = f", devices={self.devices!r}" if self.devices is not None else ""
        return (f"preset={self.preset!r}, num_classes={self.num_classes}, conv_backend={self.conv_backend!r}, "
                f"input_size={self.input_size}{devices}")

    def __repr__(self) -> str:
        """The layers as torchvision's repr shows them, from the Rust layer table (the rows of
        ``alexnet info``); our rows fuse a convolution or linear layer with its ReLU (and the
        dropout before it)."""
        rows = json.loads(_native.layers(self.preset, self.input_size, self.num_classes))[1:]
        lines = [f"  ({r['name']}): {_layer_repr(r['op'])}" for r in rows]
        return f"AlexNet({self.extra_repr()}\n" + "\n".join(lines) + "\n)"

    def save_checkpoint(self, run: str | os.PathLike[str], classes: list[str] | None = None,
                        input_size: int | None = None) -> str:
        """Writes this model's weights as an ``alexnet train`` checkpoint under ``run`` (what
        ``alexnet eval``/``predict`` and ``--resume`` read), with the class names ``classes``
        (default: the model's own, ``self.classes``; without names, the label numbers). Returns
        the checkpoint folder. A folder that holds a training run is refused
        (:class:`ConfigError`): save into another one. Weights are stored as float32, the
        checkpoints' dtype (a half or bfloat16 model's values exactly, a float64 one's rounded);
        ``load_checkpoint`` gives a float32 model."""
        where = "AlexNet.save_checkpoint"
        path_arg(where, "run", run)
        if classes is None:
            classes = self.classes  # a loaded checkpoint's names (it lost them on a save)
        if classes is not None:
            if not isinstance(classes, (list, tuple)):
                raise DtypeError(f"{where}: classes must be a list of str, got {type(classes).__name__}")
            for i, c in enumerate(classes):
                if not isinstance(c, str):
                    raise DtypeError(f"{where}: classes must be a list of str, classes[{i}] is {type(c).__name__}")
            if len(classes) != self.num_classes:
                raise ConfigError(f"{where}: classes has {len(classes)} names for {self.num_classes} outputs")
        size = self.input_size if input_size is None else int_arg(where, "input_size", input_size)
        return str(checked(_native.save_checkpoint)(self.preset, self._weights(), run, classes, size))

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike[str], conv_backend: str = "auto") -> "AlexNet":
        """A model with the weights of an ``alexnet train`` checkpoint (a run folder: its newest
        checkpoint; or a ``ckpt-<step>`` folder), built for the checkpoint's input size, validated
        by the Rust loader (truncated or foreign files are refused). Reads safetensors only (no
        pickle). A network trained with an ablation switch (``--activation tanh``, ``--no-lrn``,
        ``--pool-kernel``, ``--dropout``) is not the preset's and is refused: evaluate it with
        ``alexnet eval``."""
        where = "AlexNet.load_checkpoint"
        path_arg(where, "path", path)
        _backend(where, conv_backend)
        preset, classes, weights, settings = checked(_native.load_checkpoint)(path)
        changed = settings["changed"]
        if changed:
            raise ConfigError(f"{where}: {path} was trained with {changed}, not the {preset} preset's network; "
                              "this module builds the preset's only (alexnet eval runs it)")
        # The initial weights, overwritten at once, leave the caller's random stream as it was.
        with torch.random.fork_rng(devices=[]):
            model = cls(preset, num_classes=len(classes), conv_backend=conv_backend, input_size=settings["input_size"])
        model.load_state_dict(dict(weights))
        model.classes = classes
        return model

    def to_torchvision(self) -> nn.Module:
        """A ``torchvision.models.AlexNet`` holding copies of this model's weights, in their dtype, on
        their device (two devices: the first), in this model's train/eval mode."""
        import torchvision

        if self.preset != "torchvision":
            raise ConfigError(f"to_torchvision needs the 'torchvision' preset, this model's is {self.preset!r}")
        weights = self._weights()
        # Built on the meta device: torchvision's initialisation (61M draws from the caller's random
        # stream, 244 MB) would be overwritten at once; `assign` keeps the copies' device and dtype.
        with torch.device("meta"):
            tv = torchvision.models.alexnet(weights=None, num_classes=self.num_classes)
        tv.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, assign=True)
        return tv.train(self.training)


def _replacing(parent: nn.Module, name: str, value: object) -> bool:
    """Whether ``parent.<name> = value``, parent an AlexNet or one of its layers, replaces a layer
    (then it is done)."""
    if name not in parent.__dict__.get("_modules", {}) or not isinstance(value, nn.Module):
        return False
    owner = parent if isinstance(parent, AlexNet) else parent._owner
    owner._replace_layer(parent, name, value)
    return True


def _split_whole_tensors(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
    """Load pre-hook of a two-device AlexNet: each whole tensor ``prefix + name`` (what its
    state_dict() gives) becomes its row blocks ``prefix + name__shard<i>``, on the shards' devices."""
    shards = module._param_dict()
    for name, parts in shards.items():
        key = prefix + name
        if key not in state_dict:
            continue
        whole = state_dict.pop(key)
        rows = [p.shape[0] for p in parts]
        expected = torch.Size((sum(rows), *parts[0].shape[1:]))
        if isinstance(whole, torch.Tensor) and whole.shape == expected:
            # On the shards' devices; a model on "meta" (built to be loaded with assign=True) gets
            # its placement's devices (the pieces stayed on meta, and the weights were lost).
            devices = [p.device if p.device.type != "meta" else torch.device(d)
                       for p, d in zip(parts, module.devices.split(","))]
            pieces = [piece.to(d) for piece, d in zip(torch.split(whole, rows, 0), devices)]
        else:
            shape = whole.shape if isinstance(whole, torch.Tensor) else type(whole).__name__
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {shape} from checkpoint, "
                              f"the shape in current model is {expected}.")
            pieces = [part.detach() for part in parts]  # the load fails: named once, not also missing
        for i, piece in enumerate(pieces):
            state_dict[f"{key}__shard{i}"] = piece


def _whole_missing_keys(module, incompatible) -> None:
    """Load post-hook of a two-device AlexNet: missing shards are reported by their whole name."""
    names = []
    for key in incompatible.missing_keys:
        base, _, index = key.rpartition("__shard")
        if index.isdigit() and any(base == n or base.endswith("." + n) for n in module._shards):
            key = base
        if key not in names:
            names.append(key)
    incompatible.missing_keys[:] = names


def _setting(module: nn.Module, name: str, default):
    """A convolution setting of ``module`` as the layer table states it: pairs for ints
    (``stride=4`` is ``(4, 4)``), ``padding="valid"``/``"same"`` as the pixels they pad."""
    value = getattr(module, name, default)
    if name == "padding" and value in ("valid", "same"):
        kernel = nn.modules.utils._pair(getattr(module, "kernel_size", 1))
        dilation = nn.modules.utils._pair(getattr(module, "dilation", 1))
        value = (0, 0) if value == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return nn.modules.utils._pair(value) if name in ("stride", "padding", "dilation") else value


def _layer_repr(op: dict) -> str:
    """One layer-table row's op as torch.nn would print the modules."""
    kind = op["kind"]
    relu = " + ReLU(inplace=True)" if op.get("activation") == "relu" else (
        " + Tanh()" if op.get("activation") == "tanh" else "")
    if kind == "conv":
        k, st, pad = op["kernel"], op["stride"], op["padding"]
        groups = f", groups={op['groups']}" if op["groups"] != 1 else ""
        return (f"Conv2d({op['in_channels']}, {op['out_channels']}, kernel_size=({k}, {k}), stride=({st}, {st}), "
                f"padding=({pad}, {pad}){groups}){relu}")
    if kind == "lrn":
        lrn = f"LocalResponseNorm({op['size']}, alpha={op['alpha']}, beta={op['beta']}, k={op['k']})"
        return lrn if op["groups"] == 1 else f"{op['groups']} towers x {lrn}"  # each tower's channels apart
    if kind == "max_pool":
        return (f"MaxPool2d(kernel_size={op['kernel']}, stride={op['stride']}, padding=0, dilation=1, "
                f"ceil_mode={op['ceil_mode']})")
    if kind == "adaptive_avg_pool":
        return f"AdaptiveAvgPool2d(output_size=({op['size']}, {op['size']}))"
    if kind == "fc":
        drop = f"Dropout(p={op['dropout']}, inplace=False) + " if op.get("dropout") else ""
        return f"{drop}Linear(in_features={op['in_features']}, out_features={op['out_features']}, bias=True){relu}"
    return kind


def _layout(model: nn.Module) -> list[tuple[str, str]]:
    """(name, layer with its settings) of each leaf module; in-place or not is no difference."""
    def settings(m: nn.Module) -> str:
        return re.sub(r"(, )?inplace=(True|False)", "", m.extra_repr()).removeprefix(", ")
    return [(name, f"{type(m).__name__}({settings(m)})")
            for name, m in model.named_modules() if name and next(m.children(), None) is None]


def _check_torchvision_layout(model: nn.Module, num_classes: int) -> None:
    """Refuses a network whose layers are not torchvision's AlexNet's (another activation, pool,
    stride or an extra layer would give other logits from the same weights), naming the first
    that differs."""
    try:
        import torchvision
    except ImportError:  # not a torchvision model then: its weights' names are all we can check
        return
    with torch.device("meta"):
        reference = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    theirs, ours = _layout(model), _layout(reference)
    for i in range(max(len(theirs), len(ours))):
        got, want = (theirs[i] if i < len(theirs) else None), (ours[i] if i < len(ours) else None)
        if got != want:
            name = (got or want)[0]
            raise ConfigError(
                f"from_torchvision: model is not torchvision's AlexNet at {name}: it has "
                f"{got[1] if got and got[0] == name else 'nothing'} where torchvision's has "
                f"{want[1] if want and want[0] == name else 'nothing'}")


def from_torchvision(model: nn.Module, num_classes: int | None = None, conv_backend: str = "auto") -> AlexNet:
    """Our ``torchvision`` preset with copies of a torchvision AlexNet's weights, on its device,
    in its dtype and train/eval mode, its frozen parameters (``requires_grad=False``) frozen. With
    ``num_classes`` different from the model's, the class layer is a new, trainable one of that
    size (``reset_classifier``): the start of fine-tuning."""
    if not isinstance(model, nn.Module):
        raise DtypeError(f"from_torchvision: model must be a torch.nn.Module, got {type(model).__name__}")
    state = model.state_dict()
    if "classifier.6.weight" not in state:
        raise ConfigError("from_torchvision: model is not a torchvision AlexNet (it has no classifier.6.weight)")
    if num_classes is not None:
        num_classes = int_arg("from_torchvision", "num_classes", num_classes)
    head = state["classifier.6.weight"]
    _check_torchvision_layout(model, head.shape[0])
    # The initial weights, overwritten at once, leave the caller's random stream as it was.
    with torch.random.fork_rng(devices=[]):
        ours = AlexNet("torchvision", num_classes=head.shape[0], conv_backend=conv_backend)
    ours.to(device=head.device, dtype=head.dtype)
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    # Frozen parameters stay frozen.
    theirs = dict(model.named_parameters())
    for name, p in ours.named_parameters():
        if name in theirs:
            p.requires_grad_(theirs[name].requires_grad)
    if num_classes is not None and num_classes != ours.num_classes:
        ours.reset_classifier(num_classes)
    return ours.train(model.training)


__all__ = ["AlexNet", "from_torchvision"]
