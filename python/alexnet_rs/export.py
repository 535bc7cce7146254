"""ONNX export: the network rebuilt node by node from the Rust preset definition.

``torch.onnx.export`` cannot look inside our forward (one opaque Rust call), so the graph is
written from the same data the Rust model is built from (``_native.architecture``): our LRN op
becomes ONNX ``LRN`` (size, alpha, beta, bias; both use PyTorch's alpha/size convention), grouped
convolution becomes ``Conv`` with ``group``, pooling ``MaxPool`` (with ``ceil_mode`` for Caffe),
the hidden layers ``Gemm`` + ``Relu``/``Tanh``. Dropout is an identity at inference and is left out.
The weights are the model's, stored as float32 initializers. Needs the ``onnx`` package
(``pip install onnx``); ``onnxruntime`` runs the result.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from . import _native
from ._boundary import checked, int_arg, path_arg
from .errors import ConfigError, DtypeError, MissingFileError, ShapeError

OPSET = 17


def export_onnx(model: Any, path: str | os.PathLike[str], input_size: int | None = None, opset: int = OPSET) -> str:
    """Writes ``model`` (an ``alexnet_rs.AlexNet``) as an ONNX graph for ``(N, 3, S, S)`` float32
    inputs with a free batch dimension; ``S`` is the preset's input size unless given. Checks the
    graph with ``onnx.checker`` and returns the path."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the `onnx` package: pip install onnx") from e

    preset = getattr(model, "preset", None)
    if preset is None or not isinstance(model, torch.nn.Module):
        raise DtypeError(f"export_onnx: model must be an alexnet_rs.AlexNet, got {type(model).__name__}")
    path = path_arg("export_onnx", "path", path)
    int_arg("export_onnx", "opset", opset, 1)
    arch = json.loads(checked(_native.architecture)(preset, model.num_classes))
    default = getattr(model, "input_size", arch["input_size"])
    size = int_arg("export_onnx", "input_size", default if input_size is None else input_size, 1)
    # The Rust layer table checks that every stage keeps pixels and gives the map the head reads.
    rows = checked(_native.layer_table)(preset, size, model.num_classes)
    maps = [shape for _, _, shape, _, _ in rows if len(shape) == 3]
    side = [shape for name, _, shape, _, _ in rows if len(shape) == 3 and name != "avgpool"][-1][-1]
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    first = arch["fcs"][0]["name"]
    reads, gets = state[f"{first}.weight"].shape[1], maps[-1][0] * maps[-1][1] * maps[-1][2]
    if reads != gets:
        raise ShapeError(
            f"export_onnx: {first} of this model reads {reads} features, but a {size}x{size} input gives "
            f"{gets}: export at the input size the model was built for ({default})"
        )
    act = {"relu": "Relu", "tanh": "Tanh"}[arch["activation"]]
    lrn, pool = arch["lrn"], arch["pool"]
    if any(c["lrn"] for c in arch["convs"]) and lrn["size"] % 2 == 0:
        # ONNX centres an even window one channel later than PyTorch (and our op) does.
        raise ConfigError(f"export_onnx: an even LRN size ({lrn['size']}) has no ONNX equivalent")

    nodes: list[Any] = []
    inits: list[Any] = []

    def weight(name: str) -> str:
        inits.append(numpy_helper.from_array(state[name].numpy(), name))
        return name

    x = "input"
    for c in arch["convs"]:
        name = c["name"]
        k, s, p = c["kernel"], c["stride"], c["padding"]
        nodes.append(
            helper.make_node(
                "Conv",
                [x, weight(f"{name}.weight"), weight(f"{name}.bias")],
                [f"{name}.conv"],
                name=name,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[p, p, p, p],
                group=c["groups"],
            )
        )
        x = f"{name}.conv"
        nodes.append(helper.make_node(act, [x], [f"{name}.act"], name=f"{name}.act"))
        x = f"{name}.act"
        if c["lrn"]:
            nodes.append(
                helper.make_node(
                    "LRN",
                    [x],
                    [f"{name}.lrn"],
                    name=f"{name}.lrn",
                    size=lrn["size"],
                    alpha=lrn["alpha"],
                    beta=lrn["beta"],
                    bias=lrn["k"],
                )
            )
            x = f"{name}.lrn"
        if c["pool"]:
            kp, sp = pool["kernel"], pool["stride"]
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [x],
                    [f"{name}.pool"],
                    name=f"{name}.pool",
                    kernel_shape=[kp, kp],
                    strides=[sp, sp],
                    ceil_mode=int(pool["ceil_mode"]),
                )
            )
            x = f"{name}.pool"
    if arch["adaptive_pool"] is not None and side != arch["adaptive_pool"]:
        a = arch["adaptive_pool"]
        if side % a:
            raise ConfigError(
                f"export_onnx: AdaptiveAvgPool2d({a}) on a {side}x{side} map has no fixed-window ONNX "
                f"equivalent; export at an input size whose last feature map is a multiple of {a} (e.g. 224)"
            )
        nodes.append(
            helper.make_node("AveragePool", [x], ["avgpool"], name="avgpool", kernel_shape=[side // a] * 2, strides=[side // a] * 2)
        )
        x = "avgpool"
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten", axis=1))
    x = "flatten"
    for i, f in enumerate(arch["fcs"]):
        name = f["name"]
        out = "logits" if i == len(arch["fcs"]) - 1 else f"{name}.fc"
        nodes.append(
            helper.make_node("Gemm", [x, weight(f"{name}.weight"), weight(f"{name}.bias")], [out], name=name, transB=1)
        )
        x = out
        if out != "logits":
            nodes.append(helper.make_node(act, [x], [f"{name}.act"], name=f"{name}.act"))
            x = f"{name}.act"

    graph = helper.make_graph(
        nodes,
        f"alexnet_rs_{preset}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", model.num_classes])],
        inits,
    )
    proto = helper.make_model(
        graph, producer_name="alexnet_rs", producer_version=_native.__version__, opset_imports=[helper.make_opsetid("", opset)]
    )
    onnx.checker.check_model(proto, full_check=True)
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise MissingFileError(f"export_onnx: path {path}: no folder {folder}")
    onnx.save(proto, path)
    return path


__all__ = ["export_onnx"]
