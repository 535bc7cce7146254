"""ONNX export: the exported graphs run in onnxruntime and give our logits (<= 1e-4); our LRN and
grouped convolution map to ONNX LRN and Conv(group); the caffe graph has the structure of the BVLC
AlexNet that ships in the onnx wheel's backend test data (an independent description of it)."""

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

import alexnet_rs

SIZES = {"paper": 224, "torchvision": 224, "caffe": 227}


def _meaningful_weights(model: torch.nn.Module) -> torch.nn.Module:
    """He-scaled weights, so every layer (and LRN's normalisation) changes the output: the presets'
    N(0, 0.01) init would give near-constant logits that hide mistakes. The last layer is scaled
    down to keep the logits of order 1, where an absolute tolerance means something."""
    g = torch.Generator().manual_seed(0)
    params = list(model.named_parameters())
    with torch.no_grad():
        for name, p in params:
            std = (2.0 / p[0].numel()) ** 0.5 if name.endswith("weight") else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
        params[-2][1].mul_(0.01)
    return model


def _run(path: str, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0]


@pytest.mark.parametrize("preset", ["caffe", "paper", "torchvision"])
def test_onnxruntime_gives_our_logits(preset, tmp_path):
    model = _meaningful_weights(alexnet_rs.AlexNet(preset, num_classes=10)).eval()
    # 0-255-scale inputs, as the paper/caffe recipes feed them: LRN's sum term is then of the
    # order of its bias k, so a wrong LRN mapping shows.
    x = torch.randn(3, 3, SIZES[preset], SIZES[preset], generator=torch.Generator().manual_seed(1)) * 60
    with torch.no_grad():
        ours = model(x).numpy()
    path = alexnet_rs.export_onnx(model, tmp_path / f"{preset}.onnx")
    theirs = _run(path, x)
    assert theirs.shape == (3, 10)
    scale = np.abs(ours).max()
    assert 0.5 < scale < 20, f"logits of order 1 expected, got max {scale}"
    assert np.abs(ours - theirs).max() <= 1e-4

    if preset != "torchvision":
        # The same graph with LRN replaced by identity is clearly different: the test can see LRN.
        m = onnx.load(path)
        for n in m.graph.node:
            if n.op_type == "LRN":
                n.op_type = "Identity"
                del n.attribute[:]
        no_lrn = str(tmp_path / "no_lrn.onnx")
        onnx.save(m, no_lrn)
        assert np.abs(ours - _run(no_lrn, x)).max() > 0.05


@pytest.mark.parametrize("opset", [10, 13, 18, "newest"])
def test_the_paper_towers_export_at_every_opset(opset, tmp_path):
    """Split changed form twice (an attribute before opset 13, an input after; from 18 it needs
    num_outputs): at 18 and later the graph failed onnx's checker."""
    opset = onnx.defs.onnx_opset_version() if opset == "newest" else opset
    model = _meaningful_weights(alexnet_rs.AlexNet("paper", num_classes=10)).eval()
    path = alexnet_rs.export_onnx(model, tmp_path / "p.onnx", opset=opset)  # checked by onnx.checker
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2)) * 60
    try:
        theirs = _run(path, x)
    except Exception as e:  # an opset newer than the installed onnxruntime runs
        assert "opset" in str(e).lower(), e
        return
    with torch.no_grad():
        assert np.abs(model(x).numpy() - theirs).max() <= 1e-4


def test_torchvision_at_63_exports_its_1x1_map_broadcast_to_6x6(tmp_path):
    """`make demo`'s model (torchvision at 63): AdaptiveAvgPool2d(6) on a 1x1 map copies the value to
    all 36 cells, an ONNX Expand (it was refused: "no fixed-window ONNX equivalent")."""
    model = _meaningful_weights(alexnet_rs.AlexNet("torchvision", num_classes=10, input_size=63)).eval()
    x = torch.randn(2, 3, 63, 63, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x).numpy()
    path = alexnet_rs.export_onnx(model, tmp_path / "tv63.onnx")
    assert "Expand" in [n.op_type for n in onnx.load(path).graph.node]
    assert np.abs(ours - _run(path, x)).max() <= 1e-4 * max(1.0, np.abs(ours).max())


@pytest.mark.parametrize("size", [100, 127, 191])
def test_torchvision_adaptive_pool_of_any_map_exports_as_two_matmuls(size, tmp_path):
    """AdaptiveAvgPool2d(6) on a 2x2, 3x3 or 5x5 map (windows of unequal sizes) was refused ("no
    fixed-window ONNX equivalent"); its mean is separable, rows x map x columns."""
    model = _meaningful_weights(alexnet_rs.AlexNet("torchvision", num_classes=10, input_size=size)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x).numpy()
        side = model.features(x, "features.10.pool")["features.10.pool"].shape[-1]
    assert side % 6 and side > 1
    path = alexnet_rs.export_onnx(model, tmp_path / f"tv{size}.onnx")
    assert [n.op_type for n in onnx.load(path).graph.node].count("MatMul") == 2
    assert np.abs(ours - _run(path, x)).max() <= 1e-4 * max(1.0, np.abs(ours).max())


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_lrn_and_groups_map_to_onnx_attributes(tmp_path):
    m = onnx.load(alexnet_rs.export_onnx(alexnet_rs.AlexNet("paper", num_classes=10), tmp_path / "p.onnx"))
    lrn = [_attrs(n) for n in m.graph.node if n.op_type == "LRN"]
    assert len(lrn) == 4  # conv1 and conv2, each tower's alone
    splits = [n for n in m.graph.node if n.op_type == "Split"]
    assert [len(n.output) for n in splits] == [2, 2] and all(_attrs(n)["axis"] == 1 for n in splits)
    for a in lrn:
        assert a["size"] == 5 and a["beta"] == pytest.approx(0.75) and a["bias"] == pytest.approx(2.0)
        assert a["alpha"] == pytest.approx(1e-4)
    groups = [_attrs(n)["group"] for n in m.graph.node if n.op_type == "Conv"]
    assert groups == [1, 2, 1, 2, 2]
    assert [n.op_type for n in m.graph.node].count("Dropout") == 0
    # The batch dimension is free.
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "N"


def test_caffe_graph_has_the_bvlc_structure(tmp_path):
    bvlc = onnx.load(
        pathlib.Path(onnx.__file__).parent / "backend/test/data/light/light_bvlc_alexnet.onnx"
    )
    ours = onnx.load(alexnet_rs.export_onnx(alexnet_rs.AlexNet("caffe"), tmp_path / "c.onnx"))
    skip = {"ConstantOfShape", "Dropout", "Softmax", "Reshape", "Flatten"}
    # Pooling pads and ceil_mode are left out: the BVLC graph was converted at 224 and pads its
    # last pool to imitate Caffe's ceil rounding; ours uses ceil_mode at 227.
    keep = {"kernel_shape", "strides", "group", "size", "alpha", "beta", "bias", "transB"}

    def structure(m):
        out = []
        for n in m.graph.node:
            if n.op_type in skip:
                continue
            a = {k: v for k, v in _attrs(n).items() if k in keep or (k == "pads" and n.op_type == "Conv")}
            if n.op_type == "Conv":
                a.setdefault("group", 1)
            if "alpha" in a:
                a["alpha"] = round(a["alpha"], 9)
            out.append((n.op_type, a))
        return out

    assert structure(ours) == structure(bvlc)
    # Weight shapes: BVLC stores them as the shape inputs of its ConstantOfShape nodes.
    theirs = {
        t.name[: -len("__SHAPE")]: list(numpy_helper.to_array(t)) for t in bvlc.graph.initializer if t.name.endswith("__SHAPE")
    }
    mine = {t.name: list(t.dims) for t in ours.graph.initializer}
    for layer in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]:
        assert mine[f"{layer}.weight"] == theirs[f"{layer}_w_0"], layer
        assert mine[f"{layer}.bias"] == theirs[f"{layer}_b_0"], layer


def test_export_errors_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match="alexnet_rs.AlexNet"):
        alexnet_rs.export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="but fc6 expects 9216"):
        alexnet_rs.export_onnx(alexnet_rs.AlexNet("paper"), tmp_path / "x.onnx", input_size=100)
    # caffe's ceil-mode pools: 40 pixels still give 1x1 maps (as in ATen), 30 give none after conv5
    with pytest.raises(ValueError, match=r"40x40 pixels gives 256 features \(1x1 maps\), but fc6 expects 9216"):
        alexnet_rs.export_onnx(alexnet_rs.AlexNet("caffe"), tmp_path / "x.onnx", input_size=40)
    with pytest.raises(alexnet_rs.ConfigError, match="30 is too small for the 3x3 max pool after conv5"):
        alexnet_rs.export_onnx(alexnet_rs.AlexNet("caffe"), tmp_path / "x.onnx", input_size=30)


def test_export_takes_numpy_sizes_and_leaves_the_models_mode_and_random_stream(tmp_path):
    """A NumPy num_classes passed the constructor's check but was kept, and onnx refused it
    ("Invalid item in shape"); a model in training mode drew dropout masks from the caller's
    random stream during the export's check forward."""
    model = alexnet_rs.AlexNet("torchvision", num_classes=np.int64(5), input_size=np.int32(63))
    assert type(model.num_classes) is int and type(model.input_size) is int
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    alexnet_rs.export_onnx(model.train(), tmp_path / "m.onnx")
    assert torch.equal(torch.rand(3), want) and model.training
    x = torch.randn(2, 3, 63, 63)
    assert np.allclose(_run(str(tmp_path / "m.onnx"), x), model.eval()(x).detach().numpy(), atol=1e-4)
    model.reset_classifier(np.int64(3))
    assert type(model.num_classes) is int


def test_the_drop_in_lrn_module_exports_with_torchs_exporter(tmp_path):
    """`alexnet_rs.nn.LocalResponseNorm` in a model of one's own: torch.onnx.export failed with
    "unrecognized namespace alexnet_rs::lrn"; it maps to ONNX LRN, as torch's own module does."""
    from alexnet_rs.errors import ConfigError
    from alexnet_rs.nn import LocalResponseNorm

    torch.manual_seed(0)
    for size in (1, 3, 5):
        ours = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), LocalResponseNorm(size, 1e-2, 0.75, 2.0)).eval()
        x = torch.randn(2, 3, 9, 9) * 10
        path = tmp_path / f"lrn{size}.onnx"
        torch.onnx.export(ours, (x,), path, dynamo=False, input_names=["x"])
        assert [n.op_type for n in onnx.load(path).graph.node] == ["Conv", "LRN"]
        got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
        # The reference: torch's module with the same weights (and F.local_response_norm).
        ref = torch.nn.Sequential(ours[0], torch.nn.LocalResponseNorm(size, 1e-2, 0.75, 2.0))(x)
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=r"an even size \(4\) has no ONNX equivalent"):
        torch.onnx.export(LocalResponseNorm(4), (torch.randn(1, 8, 3, 3),), tmp_path / "even.onnx", dynamo=False)


@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 7, 3, 4, 5)], ids=["3d", "5d"])
def test_the_drop_in_lrn_module_exports_3d_and_5d_inputs_onnxruntime_runs(shape, tmp_path):
    # ONNX LRN takes 4-D input alone: the exported graph failed in onnxruntime ("X_shape.
    # NumDimensions() == 4 was false"), where torch's own module's export runs.
    from alexnet_rs.nn import LocalResponseNorm

    x = torch.randn(*shape) * 10
    torch.onnx.export(LocalResponseNorm(5, 1e-2, 0.75, 2.0), (x,), tmp_path / "lrn.onnx", dynamo=False,
                      input_names=["x"])
    got = ort.InferenceSession(str(tmp_path / "lrn.onnx")).run(None, {"x": x.numpy()})[0]
    ref = torch.nn.functional.local_response_norm(x, 5, 1e-2, 0.75, 2.0)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-5)
