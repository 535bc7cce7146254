"""Every public callable of ``alexnet_rs`` called the wrong way: wrong types, dtypes, devices (meta
included), shapes, zero and negative sizes. Each call runs in its own process (forked from a runner
that has only imported the package, so a crash or a hang is pinned on its case); the exception must
be the stated ``AlexNetError`` subclass, derive from the matching built-in, name the argument at
fault, and carry no C++ frames or panic text.

``CALLABLES`` lists every public callable with its cases; ``test_every_public_callable_is_listed``
fails when the package gains one the list lacks. Run as a script, this file is that runner.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve()
# What a message must never contain: C++ frames, libtorch's location lines, Rust panic text.
FORBIDDEN = ("frame #", "Exception raised from", ".cpp:", "c10::", "panicked", "PanicException",
             "RUST_BACKTRACE", "called `Result::unwrap()`", "called `Option::unwrap()`")
BUILTINS = ("TypeError", "ValueError", "FileNotFoundError", "OSError", "RuntimeError", "SystemExit")


def _cases():
    """(callable, case id, call(F), expected class, matching built-in, needle in the message)."""
    import torch

    import alexnet_rs as A
    from alexnet_rs import data, ops

    t = torch.zeros
    meta = lambda *s: torch.empty(*s, device="meta")  # noqa: E731

    def model(preset="torchvision", **kw):
        return A.AlexNet(preset, num_classes=3, **kw)

    def scalar_head():  # a class layer weight of shape []: the default class names panicked
        m = model()
        m.classifier[6].weight = torch.nn.Parameter(torch.tensor(1.0))
        return m

    def loader(F, **kw):
        return data.DataLoader(F.images, crop=16, batch_size=2, threads=1, **kw)

    C, D, S, M, X, T = "ConfigError", "DtypeError", "ShapeError", "MissingFileError", "DataError", "TorchError"
    TE, VE, FE = "TypeError", "ValueError", "FileNotFoundError"
    return {
        "alexnet_rs.info_text": [
            ("preset-int", lambda F: A.info_text(5), D, TE, "preset"),
            ("preset-unknown", lambda F: A.info_text("vgg"), C, VE, "preset"),
            ("input-zero", lambda F: A.info_text("paper", 0), C, VE, "input size"),
            ("input-negative", lambda F: A.info_text("paper", -3), C, VE, "input size"),
            ("input-str", lambda F: A.info_text("paper", "224"), D, TE, "input_size"),
            ("classes-zero", lambda F: A.info_text("paper", None, 0), C, VE, "num_classes"),
            ("classes-negative", lambda F: A.info_text("paper", None, -1), C, VE, "num_classes"),
        ],
        "alexnet_rs.layer_table": [
            ("preset-none", lambda F: A.layer_table(None), D, TE, "preset"),
            ("input-too-small", lambda F: A.layer_table("caffe", 20), C, VE, "input size"),
            ("classes-float", lambda F: A.layer_table("paper", None, 2.5), D, TE, "num_classes"),
        ],
        "alexnet_rs.param_shapes": [
            ("preset-list", lambda F: A.param_shapes(["paper"]), D, TE, "preset"),
            ("classes-zero", lambda F: A.param_shapes("paper", 0), C, VE, "num_classes"),
        ],
        "alexnet_rs.train_config": [
            ("config-list", lambda F: A.train_config([("lr", 1.0)]), D, TE, "config"),
            ("config-unknown-key", lambda F: A.train_config({"learning_rate": 1.0}), C, VE, "learning_rate"),
            ("config-key-type", lambda F: A.train_config({"epochs": "many"}), C, VE, "epochs"),
            ("config-bad-choice", lambda F: A.train_config({"schedule": "linear"}), C, VE, "schedule"),
            ("config-bytes-path", lambda F: A.train_config({"data": b"data"}), C, VE, "a bytes"),
            ("config-int-huge", lambda F: A.train_config({"max_steps": 2**70}), C, VE, "`max_steps`: 1180591620717411303424 is out of range"),
        ],
        "alexnet_rs.train_settings": [
            ("extra-arg", lambda F: A.train_settings("paper"), D, TE, "train_settings"),
        ],
        # A TypedDict: its call builds a plain dict, nothing to misuse.
        "alexnet_rs.TrainSettings": [],
        "alexnet_rs.train": [
            ("config-str", lambda F: A.train("fast"), D, TE, "config"),
            ("config-key-type", lambda F: A.train({"lr": "fast", "out": F.out}), C, VE, "lr"),
            ("config-unknown-key", lambda F: A.train({"learning_rate": 1.0}), C, VE, "learning_rate"),
            ("resume-empty", lambda F: A.train({"out": F.out}, resume=""), C, VE, "resume is an empty path"),
            ("config-negative-epochs", lambda F: A.train({"epochs": -1}), C, VE, "epochs"),
            ("config-zero-batch", lambda F: A.train({"batch_size": 0, "data": F.images, "out": F.out}), C, VE,
             "batch_size"),
            ("config-zero-input", lambda F: A.train({"input_size": 0, "data": F.images, "out": F.out}), C, VE,
             "input size"),
            ("config-not-json", lambda F: A.train({"lr": object()}), C, VE, "config"),
            # trained into the working directory, then failed with ": No such file or directory"
            ("config-empty-out", lambda F: A.train({"out": "", "data": F.images}), C, VE, "out is an empty path"),
            ("config-empty-data", lambda F: A.train({"data": "", "out": F.out}), C, VE, "data is an empty path"),
            ("on-step-int", lambda F: A.train({"data": F.images, "out": F.out}, on_step=5), D, TE, "on_step"),
            ("resume-missing", lambda F: A.train({"data": F.images, "out": F.out}, resume=F.missing), M, FE,
             "no-such"),
            ("resume-int", lambda F: A.train({}, resume=3), D, TE, "resume"),
        ],
        "alexnet_rs.evaluate": [
            ("checkpoint-missing", lambda F: A.evaluate(F.missing), M, FE, "no-such"),
            ("checkpoint-int", lambda F: A.evaluate(7), D, TE, "checkpoint"),
            ("checkpoint-empty-folder", lambda F: A.evaluate(F.empty), X, VE, "no checkpoint"),
            ("batch-zero", lambda F: A.evaluate(F.empty, batch_size=0), C, VE, "batch_size"),
            ("batch-negative", lambda F: A.evaluate(F.empty, batch_size=-4), C, VE, "batch_size"),
            ("limit-negative", lambda F: A.evaluate(F.empty, limit=-1), C, VE, "limit"),
            ("limit-zero", lambda F: A.evaluate(F.empty, limit=0), C, VE, "limit"),
            ("devices-unknown", lambda F: A.evaluate(F.empty, devices="tpu:0"), C, VE, "device"),
        ],
        "alexnet_rs.AlexNet": [
            ("preset-int", lambda F: A.AlexNet(3), D, TE, "preset"),
            ("preset-unknown", lambda F: A.AlexNet("vgg"), C, VE, "preset"),
            ("classes-zero", lambda F: A.AlexNet("paper", num_classes=0), C, VE, "num_classes"),
            ("classes-str", lambda F: A.AlexNet("paper", num_classes="ten"), D, TE, "num_classes"),
            ("backend-unknown", lambda F: A.AlexNet("paper", conv_backend="gpu"), C, VE, "conv_backend"),
            ("input-too-small", lambda F: A.AlexNet("paper", input_size=10), C, VE, "input size"),
            ("input-negative", lambda F: A.AlexNet("paper", input_size=-1), C, VE, "input"),
            ("devices-int", lambda F: A.AlexNet("paper", devices=0), D, TE, "devices"),
            ("devices-unknown", lambda F: A.AlexNet("paper", devices="tpu:0,tpu:1"), C, VE, "device"),
            ("devices-three", lambda F: A.AlexNet("paper", devices="cpu,cpu,cpu"), C, VE, "devices"),
            ("devices-no-gpu", lambda F: A.AlexNet("paper", devices="cuda:0,cuda:1"), C, VE, "cuda"),
            ("device-no-gpu", lambda F: A.AlexNet("paper", devices="cuda:7"), C, VE, "cuda:7"),
            ("classes-huge", lambda F: A.AlexNet("paper", num_classes=2**64), C, VE, "num_classes"),
            ("input-huge", lambda F: A.AlexNet("paper", input_size=2**40), C, VE, "input size"),
        ],
        # state_dict's arguments are torch.nn.Module's (destination, prefix, keep_vars).
        "alexnet_rs.AlexNet.state_dict": [],
        "alexnet_rs.AlexNet.forward": [
            ("x-str", lambda F: model()("image"), D, TE, "x"),
            ("x-int64", lambda F: model()(t(1, 3, 63, 63, dtype=torch.int64)), D, TE, "x"),
            ("x-float16", lambda F: model()(t(1, 3, 63, 63, dtype=torch.float16)), D, TE, "x"),
            ("x-float64", lambda F: model()(t(1, 3, 63, 63, dtype=torch.float64)), D, TE, "x"),
            ("x-bfloat16", lambda F: model()(t(1, 3, 63, 63, dtype=torch.bfloat16)), D, TE, "x"),
            ("x-meta", lambda F: model()(meta(1, 3, 63, 63)), S, VE, "meta"),
            ("model-on-meta", lambda F: model().to("meta")(t(1, 3, 63, 63)), S, VE, "meta"),
            ("x-one-channel", lambda F: model()(t(1, 1, 63, 63)), S, VE, "x"),
            ("x-3d", lambda F: model()(t(3, 63, 63)), S, VE, "x"),
            ("x-too-small", lambda F: model()(t(1, 3, 8, 8)), C, VE, "input size"),
            ("x-wrong-input-size", lambda F: model("paper")(t(1, 3, 63, 63)), S, VE, "the paper preset needs 224x224"),
            # The weight, not the (right) input size, is blamed: it said "the paper preset needs 63x63 inputs".
            ("fc6-weight-shape", lambda F: torch.func.functional_call(
                model("paper", input_size=63), {"fc6.weight": t(4096, 300)}, (t(1, 3, 63, 63),)), S, VE,
             "`fc6.weight` has shape [4096, 300], the paper preset at 63x63 expects [4096, 256]"),
            ("fc6-weight-1d", lambda F: torch.func.functional_call(
                model("paper", input_size=63), {"fc6.weight": t(4096)}, (t(1, 3, 63, 63),)), S, VE,
             "`fc6.weight` has shape [[4096]] (in shards)"),
        ],
        "alexnet_rs.AlexNet.save_checkpoint": [
            ("run-int", lambda F: model().save_checkpoint(5), D, TE, "run"),
            ("classes-count", lambda F: model().save_checkpoint(F.out, classes=["a"]), C, VE, "classes"),
            ("classes-type", lambda F: model().save_checkpoint(F.out, classes="abc"), D, TE, "classes"),
            ("classes-item", lambda F: model().save_checkpoint(F.out, classes=["a", 1, "c"]), D, TE,
             "classes[1] is int"),
            # were written: eval and predict, which match names to labels, then failed on them
            ("classes-twice", lambda F: model().save_checkpoint(F.out, classes=["a", "b", "a"]), C, VE, "`a` twice"),
            ("classes-empty", lambda F: model().save_checkpoint(F.out, classes=["a", "", "c"]), C, VE, "classes[1]"),
            ("input-zero", lambda F: model().save_checkpoint(F.out, input_size=0), C, VE, "input"),
            ("on-meta", lambda F: model().to("meta").save_checkpoint(F.out), S, VE, "meta"),
            ("head-scalar", lambda F: scalar_head().save_checkpoint(F.out), S, VE,
             "`classifier.6.weight` has shape []: expected (classes, features)"),
        ],
        "alexnet_rs.AlexNet.load_checkpoint": [
            ("path-missing", lambda F: A.AlexNet.load_checkpoint(F.missing), M, FE, "no-such"),
            ("path-int", lambda F: A.AlexNet.load_checkpoint(4), D, TE, "path"),
            ("path-empty-folder", lambda F: A.AlexNet.load_checkpoint(F.empty), X, VE, "no checkpoint"),
            ("backend-unknown", lambda F: A.AlexNet.load_checkpoint(F.empty, conv_backend="x"), C, VE,
             "conv_backend"),
        ],
        "alexnet_rs.AlexNet.to_torchvision": [
            ("wrong-preset", lambda F: model("paper").to_torchvision(), C, VE, "preset"),
        ],
        "alexnet_rs.AlexNet.extra_repr": [],
        "alexnet_rs.AlexNet.features": [
            ("x-str", lambda F: model().features("image", "features.0"), D, TE, "x"),
            ("x-float64", lambda F: model().features(t(1, 3, 63, 63, dtype=torch.float64), "features.0"), D, TE, "x"),
            ("x-meta", lambda F: model().features(meta(1, 3, 63, 63), "features.0"), S, VE, "meta"),
            ("layers-int", lambda F: model().features(t(1, 3, 63, 63), 3), D, TE, "layers"),
            ("layers-unknown", lambda F: model().features(t(1, 3, 63, 63), ["conv9"]), C, VE, "conv9"),
            ("layers-empty", lambda F: model().features(t(1, 3, 63, 63), []), C, VE, "no layer"),
            ("layers-missing", lambda F: model().features(t(1, 3, 63, 63)), C, VE, "layers"),
            ("a-layer-called", lambda F: model().classifier(t(1, 9216)), C, VE, "model.features"),
        ],
        "alexnet_rs.AlexNet.reset_classifier": [
            ("classes-zero", lambda F: model().reset_classifier(0), C, VE, "num_classes"),
            ("classes-str", lambda F: model().reset_classifier("ten"), D, TE, "num_classes"),
        ],
        "alexnet_rs.viz.filters": [
            ("source-int", lambda F: A.viz.filters(3), D, TE, "source"),
            ("source-missing", lambda F: A.viz.filters(F.missing), M, FE, "no-such"),
        ],
        "alexnet_rs.viz.filter_towers": [
            ("source-int", lambda F: A.viz.filter_towers(3), D, TE, "source"),
            ("source-empty-folder", lambda F: A.viz.filter_towers(F.empty), X, VE, "no checkpoint"),
        ],
        "alexnet_rs.from_torchvision": [
            ("model-str", lambda F: A.from_torchvision("alexnet"), D, TE, "model"),
            ("model-other-module", lambda F: A.from_torchvision(torch.nn.Linear(2, 2)), C, VE, "model"),
            ("classes-zero", lambda F: A.from_torchvision(model().to_torchvision(), num_classes=0), C, VE,
             "num_classes"),
        ],
        "alexnet_rs.export_onnx": [
            ("model-str", lambda F: A.export_onnx("m", F.onnx), D, TE, "model"),
            ("input-zero", lambda F: A.export_onnx(model(), F.onnx, input_size=0), C, VE, "input_size"),
            ("input-str", lambda F: A.export_onnx(model(), F.onnx, input_size="63"), D, TE, "input_size"),
            ("path-int", lambda F: A.export_onnx(model(), 5), D, TE, "path"),
            ("opset-9", lambda F: A.export_onnx(model(), F.onnx, opset=9), C, VE, "opset"),
            ("path-missing-folder", lambda F: A.export_onnx(model(), F.missing + "/m.onnx"), M, FE, "no-such"),
            ("opset-99", lambda F: A.export_onnx(model(), F.onnx, opset=99), C, VE, "opset"),
            ("path-empty", lambda F: A.export_onnx(model(), ""), C, VE, "path"),
            ("path-a-folder", lambda F: A.export_onnx(model(), F.empty), "AlexNetIOError", "OSError", "empty"),
        ],
        "alexnet_rs.Placement": [
            ("devices-unknown", lambda F: A.Placement("paper", "tpu:0"), C, VE, "device"),
            ("devices-three", lambda F: A.Placement("paper", "cpu,cpu,cpu"), C, VE, "devices"),
            ("devices-int", lambda F: A.Placement("paper", 0), D, TE, "devices"),
            ("preset-int", lambda F: A.Placement(1), D, TE, "preset"),
            ("classes-zero", lambda F: A.Placement("paper", "cpu", 0), C, VE, "num_classes"),
        ],
        "alexnet_rs.Placement.table": [],
        "alexnet_rs.ops.lrn": [
            ("x-list", lambda F: ops.lrn([1.0, 2.0]), D, TE, "x"),
            ("x-int64", lambda F: ops.lrn(t(1, 4, 2, 2, dtype=torch.int64)), D, TE, "x"),
            ("x-1d", lambda F: ops.lrn(t(5)), S, VE, "x"),
            ("size-zero", lambda F: ops.lrn(t(1, 4, 2, 2), 0), C, VE, "size"),
            ("size-negative", lambda F: ops.lrn(t(1, 4, 2, 2), -2), C, VE, "size"),
            ("size-huge", lambda F: ops.lrn(t(1, 4, 2, 2), 2**64), C, VE, "size"),
            ("size-str", lambda F: ops.lrn(t(1, 4, 2, 2), "5"), D, TE, "size"),
            ("alpha-str", lambda F: ops.lrn(t(1, 4, 2, 2), 5, "a"), D, TE, "alpha"),
            ("k-none", lambda F: ops.lrn(t(1, 4, 2, 2), 5, 1e-4, 0.75, None), D, TE, "k"),
            # float() of a huge int raised a bare OverflowError.
            ("alpha-huge-int", lambda F: ops.lrn(t(1, 4, 2, 2), 5, 10**400), C, VE, "alpha"),
            ("beta-nan", lambda F: ops.lrn(t(1, 4, 2, 2), 5, 1e-4, float("nan")), C, VE, "beta"),
        ],
        "alexnet_rs.ops.grouped_conv2d": [
            ("x-str", lambda F: ops.grouped_conv2d("x", t(4, 4, 3, 3)), D, TE, "x"),
            ("w-none", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), None), D, TE, "w"),
            ("w-float64", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3, dtype=torch.float64)), D, TE,
             "dtype"),
            ("x-3d", lambda F: ops.grouped_conv2d(t(4, 8, 8), t(4, 4, 3, 3)), S, VE, "x"),
            ("groups-zero", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), groups=0), C, VE, "groups"),
            ("groups-mismatch", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 2, 3, 3), groups=3), S, VE,
             "groups"),
            ("stride-zero", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), stride=0), C, VE, "stride"),
            ("padding-negative", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), padding=-1), C, VE,
             "padding"),
            ("stride-str", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), stride="1"), D, TE, "stride"),
            ("b-wrong-size", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), t(5)), S, VE, "b"),
            ("b-int", lambda F: ops.grouped_conv2d(t(1, 4, 8, 8), t(4, 4, 3, 3), 3), D, TE, "b"),
        ],
        "alexnet_rs.ops.cpu_cache": [],  # no arguments
        "alexnet_rs.ops.cpu_cache_stats": [],
        "alexnet_rs.nn.LocalResponseNorm": [
            ("size-zero", lambda F: A.nn.LocalResponseNorm(0), C, VE, "size"),
            ("size-str", lambda F: A.nn.LocalResponseNorm("5"), D, TE, "size"),
            ("beta-str", lambda F: A.nn.LocalResponseNorm(5, beta="x"), D, TE, "beta"),
            # Refused only at forward, as a ShapeError.
            ("k-inf", lambda F: A.nn.LocalResponseNorm(5, k=float("inf")), C, VE, "k must be finite"),
            ("k-huge-int", lambda F: A.nn.LocalResponseNorm(5, k=10**400), C, VE, "k"),
        ],
        "alexnet_rs.nn.LocalResponseNorm.forward": [
            ("input-str", lambda F: A.nn.LocalResponseNorm(5)("x"), D, TE, "input"),
            ("input-int", lambda F: A.nn.LocalResponseNorm(5)(t(1, 4, 2, 2, dtype=torch.int32)), D, TE, "input"),
            ("input-2d", lambda F: A.nn.LocalResponseNorm(5)(t(4, 2)), S, VE, "input"),
        ],
        "alexnet_rs.nn.LocalResponseNorm.extra_repr": [],
        "alexnet_rs.data.DataLoader": [
            ("data-int", lambda F: data.DataLoader(3), D, TE, "data"),
            ("data-missing", lambda F: data.DataLoader(F.missing), M, FE, "no-such"),
            ("crop-zero", lambda F: data.DataLoader(F.images, crop=0), C, VE, "crop"),
            ("seed-huge", lambda F: data.DataLoader(F.images, seed=2**64), C, VE, "DataLoader: seed = 18446744073709551616"),
            ("crop-negative", lambda F: data.DataLoader(F.images, crop=-8), C, VE, "crop"),
            # accepted, then the first batch asked for 240 GB
            ("crop-huge", lambda F: data.DataLoader(F.images, crop=100000), C, VE, "crop must be in 1..=8192"),
            ("crop-str", lambda F: data.DataLoader(F.images, crop="224"), D, TE, "crop"),
            ("batch-zero", lambda F: data.DataLoader(F.images, batch_size=0), C, VE, "batch_size"),
            ("batch-negative", lambda F: data.DataLoader(F.images, batch_size=-1), C, VE, "batch_size"),
            ("threads-negative", lambda F: data.DataLoader(F.images, threads=-1), C, VE, "threads"),
            ("world-zero", lambda F: data.DataLoader(F.images, world_size=0), C, VE, "world_size"),
            ("rank-outside", lambda F: data.DataLoader(F.images, rank=2, world_size=2), C, VE, "rank"),
            ("rank-negative", lambda F: data.DataLoader(F.images, rank=-1, world_size=2), C, VE, "rank"),
            # The global batch wrapped to 0: a PanicException out of len(loader).
            ("global-batch-overflow", lambda F: data.DataLoader(F.images, batch_size=2**62, world_size=4), C, VE,
             "x 4 ranks is too large"),
            ("split-unknown", lambda F: data.DataLoader(F.images, split="dev"), C, VE, "split"),
            ("view-unknown", lambda F: data.DataLoader(F.images, view="zoom"), C, VE, "view"),
            ("preset-unknown", lambda F: data.DataLoader(F.images, preset="vgg"), C, VE, "preset"),
            ("bad-image-policy", lambda F: data.DataLoader(F.images, on_bad_image="ignore"), C, VE, "on_bad_image"),
            ("limit-negative", lambda F: data.DataLoader(F.images, limit=-1), C, VE, "limit"),
            ("limit-zero", lambda F: data.DataLoader(F.images, limit=0), C, VE, "limit"),
            ("seed-negative", lambda F: data.DataLoader(F.images, seed=-1), C, VE, "seed"),
            ("stats-missing", lambda F: data.DataLoader(F.images, stats=F.missing), M, FE, "no-such"),
            ("classes-unknown", lambda F: data.DataLoader(F.images, classes=["nope"]), X, VE, "nope"),
            ("classes-str", lambda F: data.DataLoader(F.images, classes=5), D, TE, "classes"),
            ("classes-twice", lambda F: data.DataLoader(F.images, classes=["class0", "class1", "class0"]), C, VE,
             "`class0` twice"),
            ("classes-empty-name", lambda F: data.DataLoader(F.images, classes=["class0", "", "class1"]), C, VE,
             "classes[1]"),
        ],
        "alexnet_rs.data.DataLoader.epoch": [
            ("epoch-negative", lambda F: loader(F).epoch(-1), C, VE, "epoch"),
            ("epoch-str", lambda F: loader(F).epoch("1"), D, TE, "epoch"),
        ],
        "alexnet_rs.data.EpochIter": [
            ("direct", lambda F: data.EpochIter(), D, TE, "EpochIter"),
        ],
        "alexnet_rs.data.load_image": [
            ("path-int", lambda F: data.load_image(5), D, TE, "path"),
            ("path-missing", lambda F: data.load_image(F.missing), M, FE, "no-such"),
            ("not-an-image", lambda F: data.load_image(F.text), X, VE, "not a recognised image"),
        ],
        "alexnet_rs.data.transform_views": [
            ("image-float", lambda F: data.transform_views(t(8, 8, 3), 8, 8), D, TE, "image"),
            ("image-chw", lambda F: data.transform_views(t(3, 8, 8, dtype=torch.uint8), 8, 8), S, VE, "image"),
            ("image-meta", lambda F: data.transform_views(torch.empty(8, 8, 3, dtype=torch.uint8, device="meta"),
                                                          8, 8), S, VE, "meta"),
            ("image-str", lambda F: data.transform_views("img", 8, 8), D, TE, "image"),
            ("crop-zero", lambda F: data.transform_views(t(8, 8, 3, dtype=torch.uint8), 8, 0), C, VE, "crop"),
            ("resize-below-crop", lambda F: data.transform_views(t(8, 8, 3, dtype=torch.uint8), 4, 8), C, VE,
             "resize"),
            ("resize-negative", lambda F: data.transform_views(t(8, 8, 3, dtype=torch.uint8), -4, 2), C, VE,
             "resize"),
            ("view-unknown", lambda F: data.transform_views(t(8, 8, 3, dtype=torch.uint8), 8, 8, "zoom"), C, VE,
             "view"),
            ("seed-negative", lambda F: data.transform_views(t(8, 8, 3, dtype=torch.uint8), 8, 8, seed=-1), C, VE,
             "seed"),
        ],
        "alexnet_rs.ddp.main": [
            ("bad-flag", lambda F: A.ddp.main(["--bogus"]), "SystemExit", "SystemExit", "2"),
        ],
        "alexnet_rs.ddp.parse": [
            ("bad-int", lambda F: A.ddp.parse(["--steps", "many"]), "SystemExit", "SystemExit", "2"),
        ],
        "alexnet_rs.compare.main": [
            ("bad-int", lambda F: A.compare.main(["--repeats", "x"]), "SystemExit", "SystemExit", "2"),
        ],
        # The loader's threads: a panic there must surface from the iterator, never end an epoch
        # silently (finding 6); a bad file under on_bad_image="fail" is a DataError from next().
        "alexnet_rs.data.EpochIter.__next__": [
            ("bad-file-fail", lambda F: list(data.DataLoader(F.bad_images, crop=8, on_bad_image="fail",
                                                             threads=1)), X, VE, "broken.png"),
        ],
    }


def public_callables() -> set[str]:
    """Every public function, class and (own, non-dunder) method reachable from the package."""
    import alexnet_rs
    import alexnet_rs.compare
    import alexnet_rs.ddp
    import alexnet_rs.viz

    found: dict[int, str] = {}
    modules = ["alexnet_rs", "alexnet_rs.ops", "alexnet_rs.nn", "alexnet_rs.data", "alexnet_rs.model",
               "alexnet_rs.placement", "alexnet_rs.export", "alexnet_rs.ddp", "alexnet_rs.compare", "alexnet_rs.viz"]
    for name in modules:
        mod = sys.modules[name]
        names = getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")])
        for attr in names:
            obj = getattr(mod, attr)
            if inspect.ismodule(obj) or not callable(obj):
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue
            if not (getattr(obj, "__module__", None) or "").startswith("alexnet_rs"):
                continue  # imported from elsewhere (torch, typing, ...)
            found.setdefault(id(obj), f"{name}.{attr}")
            if inspect.isclass(obj):
                for klass in obj.__mro__:
                    if not klass.__module__.startswith("alexnet_rs"):
                        continue
                    for m, v in vars(klass).items():
                        if not m.startswith("_") and (callable(v) or isinstance(v, classmethod)):
                            found.setdefault(id(v), f"{found[id(obj)]}.{m}")
    # model.features is a callable submodule (so that torchvision's `features.<i>` names resolve).
    return set(found.values()) | {"alexnet_rs.data.EpochIter.__next__", "alexnet_rs.AlexNet.features"}


# ----- the runner: python test_misuse.py FIXTURES CASE_ID... -> one JSON line per case -----


def _run_case(fn, fixtures) -> dict:
    import builtins

    import alexnet_rs

    try:
        fn(fixtures)
    except BaseException as e:  # noqa: BLE001 - we report whatever it is
        return {
            "status": "raised",
            "type": type(e).__name__,
            "alexnet_error": isinstance(e, alexnet_rs.AlexNetError),
            "builtins": [b for b in BUILTINS if isinstance(e, getattr(builtins, b))],
            "message": str(e) if not isinstance(e, SystemExit) else str(e.code),
        }
    return {"status": "returned"}


def _serve(fixture_dir: str, ids: list[str]) -> None:
    import alexnet_rs  # noqa: F401 - imported once, before any fork
    import alexnet_rs.compare  # noqa: F401
    import alexnet_rs.ddp  # noqa: F401

    fixtures = SimpleNamespace(**json.loads(Path(fixture_dir, "fixtures.json").read_text()))
    table = {f"{c}::{cid}": fn for c, cases in _cases().items() for cid, fn, *_ in cases}
    for case in ids:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one call, its result on the pipe
            os.close(r)
            signal.alarm(120)
            sys.stderr = open(os.devnull, "w")
            result = _run_case(table[case], fixtures)
            os.write(w, json.dumps(result).encode())
            os.close(w)
            os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if chunks:
            result = json.loads(b"".join(chunks))
        elif os.WIFSIGNALED(status):
            result = {"status": "crashed", "signal": os.WTERMSIG(status)}
        else:
            result = {"status": "crashed", "exit": os.WEXITSTATUS(status)}
        print(json.dumps({"case": case, **result}), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2:])


# ----- the tests -----

CASES = [(c, cid, cls, builtin, needle) for c, cases in _cases().items() for cid, _, cls, builtin, needle in cases]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("misuse")
    for c in range(2):
        (d / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * i + c, np.uint8)).save(d / "images" / f"c{c}" / f"{i}.png")
    for c in range(2):
        (d / "bad" / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "bad" / f"c{c}" / "good.png")
    (d / "bad" / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (d / "empty").mkdir()
    (d / "text.jpg").write_text("not an image")
    fixtures = {"images": str(d / "images"), "bad_images": str(d / "bad"), "empty": str(d / "empty"),
                "missing": str(d / "no-such"), "text": str(d / "text.jpg"), "out": str(d / "out"),
                "onnx": str(d / "m.onnx")}
    (d / "fixtures.json").write_text(json.dumps(fixtures))
    ids = [f"{c}::{cid}" for c, cid, *_ in CASES]
    r = subprocess.run([sys.executable, str(HERE), str(d), *ids], capture_output=True, text=True, timeout=1800)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(ids), r.stderr[-3000:]
    return {line["case"]: line for line in lines}


def test_every_public_callable_is_listed():
    listed = set(_cases())
    found = public_callables()
    assert found - listed == set(), "public callables without misuse cases: add them to _cases()"
    assert listed - found == set(), "listed callables that are not public (any more)"


@pytest.mark.parametrize("callable_, case, cls, builtin, needle", CASES, ids=[f"{c}::{i}" for c, i, *_ in CASES])
def test_misuse_is_a_clear_error(results, callable_, case, cls, builtin, needle):
    r = results[f"{callable_}::{case}"]
    assert r["status"] == "raised", r
    msg = r["message"]
    assert r["type"] == cls, r
    if cls != "SystemExit":
        assert r["alexnet_error"], r
    assert builtin in r["builtins"], r
    assert needle in msg, r
    bad = [f for f in FORBIDDEN if f in msg]
    assert not bad, f"{bad} in: {msg}"
