"""ONNX export: the network rebuilt node by node from the Rust preset definition.

``torch.onnx.export`` cannot look inside our forward (one opaque Rust call), so the graph is
written from the layer list the Rust model is built from (``_native.layers``, the rows of
``alexnet info``): our LRN op
becomes ONNX ``LRN`` (size, alpha, beta, bias; both use PyTorch's alpha/size convention; in the
paper's network one per tower, between a ``Split`` and a ``Concat``), grouped
convolution becomes ``Conv`` with ``group``, pooling ``MaxPool`` (with ``ceil_mode`` for Caffe),
the hidden layers ``Gemm`` + ``Relu``/``Tanh``. Dropout is an identity at inference and is left out.
The weights are the model's, stored as float32 initializers. Needs the ``onnx`` package
(``pip install onnx``); ``onnxruntime`` runs the result.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from . import _native
from ._boundary import checked, int_arg, path_arg
from ._files import write_atomic
from .errors import AlexNetIOError, ConfigError, DtypeError, MissingFileError

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
    # Where the file goes, checked before the graph is built.
    if not path:
        raise ConfigError("export_onnx: path is empty")
    if os.path.isdir(path):
        raise AlexNetIOError(f"export_onnx: path {path} is a folder, not a file name")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise MissingFileError(f"export_onnx: path {path}: no folder {folder}")
    int_arg("export_onnx", "opset", opset, 10)  # MaxPool's ceil_mode needs opset 10
    if opset > onnx.defs.onnx_opset_version():
        raise ConfigError(f"export_onnx: opset must be at most {onnx.defs.onnx_opset_version()} (the newest the "
                          f"installed onnx {onnx.__version__} knows), got {opset}")
    default = getattr(model, "input_size", None)
    size = int_arg("export_onnx", "input_size", default if input_size is None else input_size, 1)
    # The Rust layer list (what `alexnet info` prints), for this input size: the graph is its rows.
    rows = json.loads(checked(_native.layers)(preset, size, model.num_classes))
    # The model's own forward checks that its first FC layer reads what this input gives; in
    # evaluation mode (in training mode its dropout drew from the caller's random stream).
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, dtype=next(model.parameters()).dtype,
                                     device=next(model.parameters()).device))
    finally:
        model.train(training)
    state = {k: v.to("cpu", torch.float32).contiguous() for k, v in model._weights().items()}
    ops = {"relu": "Relu", "tanh": "Tanh"}

    nodes: list[Any] = []
    inits: list[Any] = []

    def weight(name: str) -> str:
        inits.append(numpy_helper.from_array(state[name].numpy(), name))
        return name

    def node(kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    x, side, flat = "input", size, False
    for row in rows[1:]:
        name, op = row["name"], row["op"]
        kind = op["kind"]
        if kind == "conv":
            k, s, p = op["kernel"], op["stride"], op["padding"]
            x = node("Conv", [x, weight(f"{name}.weight"), weight(f"{name}.bias")], name, kernel_shape=[k, k],
                     strides=[s, s], pads=[p, p, p, p], group=op["groups"])
            x = node(ops[op["activation"]], [x], f"{name}.act")
        elif kind == "lrn":
            if op["size"] % 2 == 0:
                # ONNX centres an even window one channel later than PyTorch (and our op) does.
                raise ConfigError(f"export_onnx: an even LRN size ({op['size']}) has no ONNX equivalent")
            lrn = dict(size=op["size"], alpha=op["alpha"], beta=op["beta"], bias=op["k"])
            if op["groups"] == 1:
                x = node("LRN", [x], name, **lrn)
            else:  # the paper's towers, each normalised alone: Split -> LRN per tower -> Concat
                towers = [f"{name}.tower{i}" for i in range(op["groups"])]
                equal = {"num_outputs": len(towers)} if opset >= 18 else {}  # required from opset 18
                nodes.append(helper.make_node("Split", [x], towers, name=f"{name}.split", axis=1, **equal))
                x = node("Concat", [node("LRN", [t], f"{t}.lrn", **lrn) for t in towers], name, axis=1)
        elif kind == "max_pool":
            k, s = op["kernel"], op["stride"]
            x = node("MaxPool", [x], name, kernel_shape=[k, k], strides=[s, s], ceil_mode=int(op["ceil_mode"]))
        elif kind == "adaptive_avg_pool":
            a = op["size"]
            if side == 1 and a > 1:
                # Every output cell averages the one input cell: a broadcast.
                inits.append(numpy_helper.from_array(np.array([1, 1, a, a], dtype=np.int64), f"{name}.shape"))
                x = node("Expand", [x, f"{name}.shape"], name)
            elif side % a:
                # Windows of unequal sizes (cell i: rows floor(i S / a) to ceil((i + 1) S / a)): no
                # ONNX pooling has them, but their mean is separable, P x P^T with P (a, S) holding
                # each window's 1 / length: two MatMuls.
                pool = np.zeros((a, side), dtype=np.float32)
                for i in range(a):
                    lo, hi = (i * side) // a, -((-(i + 1) * side) // a)
                    pool[i, lo:hi] = 1.0 / (hi - lo)
                inits.append(numpy_helper.from_array(pool, f"{name}.rows"))
                inits.append(numpy_helper.from_array(np.ascontiguousarray(pool.T), f"{name}.cols"))
                widths = node("MatMul", [x, f"{name}.cols"], f"{name}.w")  # (N, C, S, a)
                x = node("MatMul", [f"{name}.rows", widths], name)  # (N, C, a, a)
            elif side != a:
                x = node("AveragePool", [x], name, kernel_shape=[side // a] * 2, strides=[side // a] * 2)
        elif kind == "fc":
            if not flat:
                x, flat = node("Flatten", [x], "flatten", axis=1), True
            # Dropout is an identity at inference: left out.
            last = op["activation"] is None
            x = node("Gemm", [x, weight(f"{name}.weight"), weight(f"{name}.bias")], "logits" if last else name,
                     transB=1)
            if not last:
                x = node(ops[op["activation"]], [x], f"{name}.act")
        else:  # pragma: no cover - a new kind of layer must be taught to the writer
            raise ConfigError(f"export_onnx: no ONNX form for a `{kind}` layer ({name})")
        if len(row["out_shape"]) == 3:
            side = row["out_shape"][-1]
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
    # Written whole or not at all: a killed export never leaves a truncated file under `path`.
    try:
        write_atomic(path, proto.SerializeToString())
    except AlexNetIOError as e:
        raise AlexNetIOError(f"export_onnx: {e}") from None
    return path


__all__ = ["export_onnx"]
