"""alexnet_rs.AlexNet as a torch.nn.Module: torchvision parity, autograd, optimizers, state_dict,
dtype moves, and torch.compile."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import alexnet_rs


def test_from_torchvision_gives_torchvision_logits():
    tv = torchvision.models.alexnet(weights=None).eval()
    ours = alexnet_rs.from_torchvision(tv).eval()
    x = torch.randn(2, 3, 224, 224)
    assert (ours(x) - tv(x)).abs().max().item() <= 1e-5
    back = ours.to_torchvision().eval()
    assert torch.equal(back(x), tv(x))


def test_parameters_state_dict_and_names():
    m = alexnet_rs.AlexNet("paper", num_classes=10)
    names = [n for n, _ in m.named_parameters()]
    assert names == [n for n, _ in alexnet_rs.param_shapes("paper", 10)]
    m2 = alexnet_rs.AlexNet("paper", num_classes=10)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    assert sum(p.numel() for p in alexnet_rs.AlexNet("paper").parameters()) == 60_965_224


def test_gradients_land_on_parameters_and_equal_torchvisions():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None, num_classes=4).eval()
    m = alexnet_rs.from_torchvision(tv).eval()  # eval: no dropout, so both see the same function
    x, y = torch.randn(8, 3, 63, 63), torch.randint(0, 4, (8,))
    F.cross_entropy(m(x), y).backward()
    F.cross_entropy(tv(x), y).backward()
    theirs = dict(tv.named_parameters())
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-4, atol=1e-6)
    # and torch.optim drives the loss down through the Rust forward
    opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_train_eval_and_dtype_moves():
    m = alexnet_rs.AlexNet("caffe", num_classes=5).eval()
    x = torch.randn(1, 3, 227, 227)
    assert torch.equal(m(x), m(x))  # eval: no dropout
    m.train()
    torch.manual_seed(0)
    a = m(x)
    assert not torch.equal(a, m(x))  # train: dropout
    md = alexnet_rs.AlexNet("caffe", num_classes=5).double().eval()
    assert md(x.double()).dtype == torch.float64
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(m.eval()(cl), m(x))


def test_torch_compile_aot_eager():
    m = alexnet_rs.AlexNet("torchvision", num_classes=3).eval()
    x = torch.randn(1, 3, 63, 63)
    compiled = torch.compile(m, backend="aot_eager")
    torch.testing.assert_close(compiled(x), m(x))


def test_bad_inputs_raise_python_errors():
    m = alexnet_rs.AlexNet("paper", num_classes=3)
    with pytest.raises(alexnet_rs.ShapeError, match=r"\(N, 3, H, W\)"):
        m(torch.zeros(1, 1, 224, 224))
    with pytest.raises(alexnet_rs.DtypeError, match="floating point"):
        m(torch.zeros(1, 3, 224, 224, dtype=torch.int64))
    with pytest.raises(TypeError):
        m("image")
    with pytest.raises(alexnet_rs.ConfigError, match="unknown preset"):
        alexnet_rs.AlexNet("vgg")


def test_local_response_norm_is_a_drop_in():
    x = torch.randn(2, 10, 5, 5) * 20
    for size in (3, 4, 5):
        ours, ref = alexnet_rs.nn.LocalResponseNorm(size), torch.nn.LocalResponseNorm(size)
        assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
        torch.testing.assert_close(ours(x), ref(x))


def test_cpu_bf16_autocast_reaches_the_rust_forward():
    m = alexnet_rs.AlexNet("paper", num_classes=5).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    ref = m(x)
    assert (y.float() - ref).abs().max() <= 0.05 * ref.abs().max()


def test_an_input_of_another_dtype_is_named_outside_autocast_only():
    """Any libtorch failure on an x whose dtype differs from the parameters' was reported as that
    mismatch, "run under autocast", even under autocast, where the two may differ."""
    from alexnet_rs import _native

    torch.manual_seed(0)
    params = dict(_native.init_params("torchvision", 10, 63))
    x = torch.rand(2, 3, 63, 63).bfloat16()
    with pytest.raises(alexnet_rs.DtypeError, match="x has dtype BFloat16 but the parameters are Float"):
        _native.forward("torchvision", params, x, False, 10, "stock", 63)
    # A failure of another kind (a sparse bias) under autocast is libtorch's own.
    params["features.0.bias"] = params["features.0.bias"].to_sparse()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(alexnet_rs.TorchError, match="SparseCPU"):
        _native.forward("torchvision", params, x, False, 10, "stock", 63)


def test_python_checkpoint_is_read_by_the_cli(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    img = root / ".cache" / "data" / "foolbox" / "imagenet_00_243.jpg"
    torch.manual_seed(3)
    m = alexnet_rs.AlexNet("torchvision", num_classes=4).eval()
    m.save_checkpoint(tmp_path / "run", classes=["cat", "dog", "car", "cup"])
    r = subprocess.run([root / "target" / "release" / "alexnet", "predict", tmp_path / "run", img],
                       capture_output=True, text=True, check=True)
    cli_top = r.stdout.splitlines()[1].split()[-1]
    # the same image through the same Rust transform, forward in Python
    from alexnet_rs.data import load_image, transform_views

    view = transform_views(load_image(img), 256, 224, "center")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    py_top = ["cat", "dog", "car", "cup"][m((view - mean) / std).argmax().item()]
    assert cli_top == py_top
    back = alexnet_rs.AlexNet.load_checkpoint(tmp_path / "run")
    assert back.classes == ["cat", "dog", "car", "cup"]
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    # Saved again without classes=: the names it was loaded with (they became label numbers, and
    # `alexnet eval` then refused the checkpoint against the named data).
    again = alexnet_rs.AlexNet.load_checkpoint(back.save_checkpoint(tmp_path / "again"))
    assert again.classes == ["cat", "dog", "car", "cup"]
    r = subprocess.run([root / "target" / "release" / "alexnet", "predict", tmp_path / "again", img],
                       capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[1].split()[-1] == py_top
    # A new class layer has no names.
    back.reset_classifier(3)
    assert back.classes is None
    assert alexnet_rs.AlexNet.load_checkpoint(back.save_checkpoint(tmp_path / "reset")).classes == ["0", "1", "2"]


def test_two_device_module_holds_the_placements_shards_and_trains_as_one_device():
    """AlexNet(devices="cpu,cpu"): each shard on the device (and with the rows) its row of
    Placement(...).table() names; 5 torch.optim.SGD steps give one device's losses, gradients and
    weights (float32, within 1e-5)."""
    import re

    torch.manual_seed(0)
    one = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
    two.load_state_dict(one.state_dict())
    rows = re.findall(r"^(\S+)\s+(\d+)\.\.(\d+)\s+(\S+)", alexnet_rs.Placement("paper", "cpu,cpu", 10).table(), re.M)
    shards = dict(two.named_parameters())
    seen = {}
    for name, a, b, device in rows:
        i = seen[name] = seen.get(name, -1) + 1
        p = shards[f"{name}__shard{i}"]
        assert p.shape[0] == int(b) - int(a) and str(p.device) == device, (name, i)
    assert len(rows) == len(shards)
    opt1 = torch.optim.SGD(one.parameters(), lr=0.01, momentum=0.9)
    opt2 = torch.optim.SGD(two.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 63, 63), torch.randint(0, 10, (4,))
    for step in range(5):
        losses = []
        for model, opt in ((one, opt1), (two, opt2)):
            opt.zero_grad()
            torch.manual_seed(step)  # the same dropout masks
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5), step
        g1 = {n: p.grad for n, p in one.named_parameters()}
        for n, k in two._shards.items():
            g2 = torch.cat([shards[f"{n}__shard{i}"].grad for i in range(k)], 0)
            assert torch.allclose(g2, g1[n], rtol=1e-5, atol=1e-5 * g1[n].abs().max().item()), (step, n)
    for (k, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), k


def test_torchvision_names_resolve_like_torchvisions():
    """The `features` submodule of the torchvision preset resolves by name (it was shadowed by
    the features() method): get_submodule, get_parameter and torch.func.functional_call."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None, num_classes=10).eval()
    m = alexnet_rs.from_torchvision(tv).eval()
    assert m.get_parameter("features.0.weight") is dict(m.named_parameters())["features.0.weight"]
    assert isinstance(m.get_submodule("features.3"), torch.nn.Module)
    x = torch.randn(2, 3, 63, 63)
    other = {k: torch.randn_like(v) * 0.01 for k, v in tv.named_parameters()}
    ours = torch.func.functional_call(m, other, (x,))
    theirs = torch.func.functional_call(tv, other, (x,))
    assert (ours - theirs).abs().max().item() <= 1e-5 * max(1.0, theirs.abs().max().item())
    assert not torch.equal(ours, m(x))  # the given parameters were used, not the module's
    # model.features(x, layers) still gives activations
    assert torch.allclose(m.features(x, "features.0")["features.0"], torch.relu(tv.features[0](x)), atol=1e-5)


def test_a_parametrization_applies_in_the_forward():
    """parametrize / weight_norm: the forward reads `conv1.weight` through the parametrization (it
    failed with "missing parameter `conv1.weight`")."""
    import torch.nn.utils.parametrize as P

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    m = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63).eval()
    x = torch.randn(1, 3, 63, 63)
    w = m.conv1.weight.detach().clone()
    P.register_parametrization(m.conv1, "weight", Double())
    ref = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63).eval()
    ref.load_state_dict({**{k: v for k, v in m.state_dict().items() if "parametrizations" not in k},
                         "conv1.weight": 2 * w})
    assert torch.equal(m(x), ref(x))


def test_a_parametrized_model_saves_exports_and_draws_its_effective_weights(tmp_path):
    # The forward saw the parametrization, the other readers of state_dict() did not: a
    # checkpoint refused ("num_classes must be >= 1", "no tensor conv1.weight"), export_onnx and
    # viz.filters raised KeyError, and a two-device model's state_dict() raised KeyError itself.
    from torch.nn.utils.parametrizations import weight_norm

    m = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63).eval()
    weight_norm(m.conv1, "weight")
    weight_norm(m.fc8, "weight")
    x = torch.randn(2, 3, 63, 63)
    back = alexnet_rs.AlexNet.load_checkpoint(m.save_checkpoint(tmp_path / "run")).eval()
    torch.testing.assert_close(back(x), m(x), rtol=1e-5, atol=1e-6)
    assert alexnet_rs.viz.filters(m).shape == alexnet_rs.viz.filters(back).shape
    alexnet_rs.export_onnx(m, tmp_path / "m.onnx")
    s = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
    weight_norm(s.conv1, "weight__shard0")
    sd = s.state_dict()
    assert "conv1.parametrizations.weight__shard0.original0" in sd and "fc8.weight" in sd


def test_pytorchs_checkpointing_and_saved_tensor_hooks_see_their_own_errors():
    # torch.utils.checkpoint(use_reentrant=False) failed in backward with "SystemError: <built-in
    # function __import__> returned a result with an exception set": an exception raised by a
    # saved-tensors pack hook inside the Rust forward (its early stop) did not come out as itself.
    from torch.utils.checkpoint import checkpoint

    m = alexnet_rs.AlexNet("paper", num_classes=4, input_size=63)
    x = torch.rand(2, 3, 63, 63)
    torch.manual_seed(0)
    checkpoint(m, x, use_reentrant=False).sum().backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    torch.manual_seed(0)
    m(x).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-6, atol=1e-7, msg=n)

    def pack(t):
        raise ValueError("my pack hook")

    for f in (m, alexnet_rs.ops.lrn):
        with pytest.raises(ValueError, match="my pack hook") as e:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                f(x.requires_grad_(True))
        assert type(e.value) is ValueError


def test_train_leaves_the_callers_random_stream_alone(tmp_path):
    # train() seeded torch's global generator (torch.initial_seed() became the run's seed) and
    # left it there, so the caller's own draws afterwards changed.
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    alexnet_rs.train({"preset": "cnn4", "input_size": 28, "data": str(data), "batch_size": 8, "max_steps": 1,
                      "threads": 1, "seed": 4, "out": str(tmp_path / "run")})
    assert torch.initial_seed() == 123 and torch.equal(torch.rand(3), want)


def test_a_seeded_run_is_the_same_while_another_thread_draws_random_numbers(tmp_path):
    """train() releases the GIL: a notebook may train in a background thread while other code
    draws from torch's generator. The run's initialisation drew from that shared generator, so
    the same seed gave other weights and losses (and fork_rng's restore then rewound the other
    thread's stream); it has a generator of its own."""
    import threading

    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    config = {"preset": "paper", "input_size": 63, "data": str(data), "batch_size": 4, "max_steps": 2,
              "threads": 1, "seed": 0, "epochs": 1}

    def losses(out):
        events = []
        alexnet_rs.train({**config, "out": str(tmp_path / out)}, on_step=events.append)
        return [e["loss"] for e in events if "train_error" in e]

    alone = losses("alone")
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            torch.randn(1000)

    other = threading.Thread(target=draw)
    other.start()
    try:
        busy = losses("busy")
    finally:
        stop.set()
        other.join()
    assert busy == alone
    # And the caller's stream: seeded, drawn while a run trains, it is not rewound by the run.
    torch.manual_seed(7)
    want = torch.rand(1000)
    torch.manual_seed(7)
    got = []
    runner = threading.Thread(target=losses, args=("third",))
    runner.start()
    while runner.is_alive():
        got.append(torch.rand(1000))
    runner.join()
    got.append(torch.rand(1000))
    assert torch.equal(got[0], want)
    assert len({tuple(g[:4].tolist()) for g in got}) == len(got)  # never rewound: no draw repeats


def test_a_hook_on_a_layer_warns_that_it_never_fires():
    m = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    with pytest.warns(UserWarning, match=r"model.features\(x, layers="):
        m.conv1.register_forward_hook(lambda *a: None)
    with pytest.warns(UserWarning, match="never fires"):
        m.fc6.register_full_backward_hook(lambda *a: None)
    m.register_forward_hook(lambda *a: None)  # on the model itself: fine, no warning


def test_two_device_partial_load_keeps_the_rest():
    """load_state_dict(strict=False) without the head, as on one device (it raised on cpu,cpu)."""
    src = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63).state_dict()
    backbone = {k: v for k, v in src.items() if not k.startswith("fc8")}
    one = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
    head = two.state_dict()["fc8.weight"].clone()
    r1, r2 = one.load_state_dict(backbone, strict=False), two.load_state_dict(backbone, strict=False)
    assert sorted(r2.missing_keys) == sorted(r1.missing_keys) == ["fc8.bias", "fc8.weight"]
    after = two.state_dict()
    assert torch.equal(after["fc8.weight"], head)
    assert all(torch.equal(after[k], v) for k, v in backbone.items())
    with pytest.raises(RuntimeError, match="fc8.weight"):
        two.load_state_dict(backbone)
    with pytest.raises(RuntimeError, match="fc8.weight"):
        one.load_state_dict(backbone)


@pytest.mark.parametrize("case", ["unknown", "missing", "shape", "not-a-tensor"])
def test_two_device_load_errors_are_the_one_device_ones(case):
    """A wrong load_state_dict on two devices raised our ConfigError with its own wording, on one
    device torch's RuntimeError: the same mistake now reads the same (torch's message, whole
    names, nothing reported twice)."""
    one = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
    good = one.state_dict()
    bad = {"unknown": {**good, "fc9.weight": torch.zeros(2)},
           "missing": {k: v for k, v in good.items() if k != "conv2.bias"},
           "shape": {**good, "fc8.weight": torch.zeros(2, 2)},
           "not-a-tensor": {**good, "fc8.weight": "x"}}[case]
    messages = []
    for m in (one, two):
        with pytest.raises(RuntimeError) as e:
            m.load_state_dict(bad)
        assert not isinstance(e.value, alexnet_rs.AlexNetError)
        messages.append(str(e.value))
    needle = {"unknown": '"fc9.weight"', "missing": '"conv2.bias"', "shape": "size mismatch for fc8.weight",
              "not-a-tensor": "fc8.weight"}[case]
    assert all(needle in msg for msg in messages), messages
    assert "__shard" not in messages[1] and messages[1].count("fc8.weight") <= 1, messages[1]
    if case != "not-a-tensor":  # torch words a non-tensor value its own way for an unsplit parameter
        assert messages[0] == messages[1]


def test_the_constructor_follows_the_default_dtype_and_device_as_torch_nn_does():
    """`with torch.device("meta")` and torch.set_default_dtype were ignored (parameters on the
    CPU, float32), where an nn.Linear built beside follows them."""
    with torch.device("meta"):
        m = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
        assert {p.device.type for p in m.parameters()} == {torch.nn.Linear(2, 2).weight.device.type} == {"meta"}
        two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
        assert {p.device.type for p in two.parameters()} == {"cpu"}  # its devices are explicit
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
        assert {p.dtype for p in m.parameters()} == {torch.nn.Linear(2, 2).weight.dtype} == {torch.float64}
        assert m.eval()(torch.randn(1, 3, 63, 63)).dtype == torch.float64
    finally:
        torch.set_default_dtype(before)


def test_a_two_device_model_on_meta_loads_with_assign():
    """The meta-init path (build on meta, load_state_dict(assign=True)): the shards stayed on meta
    and the forward failed ("conv1.weight is on the meta device"); one device worked."""
    one = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu").to("meta")
    r = two.load_state_dict(one.state_dict(), assign=True)
    assert r.missing_keys == [] and r.unexpected_keys == []
    assert {p.device.type for p in two.parameters()} == {"cpu"}
    x = torch.randn(2, 3, 63, 63)
    torch.testing.assert_close(two.eval()(x), one.eval()(x), rtol=0, atol=0)


def test_two_device_load_with_assign_takes_the_given_tensors():
    """assign=True was ignored on two devices (the values were copied into the old shards)."""
    one = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63)
    two = alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu")
    sd = {k: v.clone() for k, v in one.state_dict().items()}
    r = two.load_state_dict(sd, assign=True)
    assert r.missing_keys == [] and r.unexpected_keys == []
    shard = two.conv2.weight__shard0
    assert isinstance(shard, torch.nn.Parameter)
    assert shard.untyped_storage().data_ptr() == sd["conv2.weight"].untyped_storage().data_ptr()
    x = torch.randn(2, 3, 63, 63)
    torch.testing.assert_close(two.eval()(x), one.eval()(x), rtol=0, atol=0)


def test_a_two_device_model_inside_another_module_loads_its_state_dict():
    """A parent's load_state_dict does not call ours: it loads module by module. The whole tensors
    its state_dict() holds (`0.conv1.weight`) were then missing as shards (`0.conv1.weight__shard0`),
    so any wrapper (Sequential, AveragedModel, a user's module) could not load its own state."""
    src = torch.nn.Sequential(alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu"))
    sd = src.state_dict()
    assert "0.conv1.weight" in sd and not any("__shard" in k for k in sd)
    dst = torch.nn.Sequential(alexnet_rs.AlexNet("paper", num_classes=10, input_size=63, devices="cpu,cpu"))
    assert not torch.equal(dst.state_dict()["0.conv1.weight"], sd["0.conv1.weight"])
    dst.load_state_dict(sd)
    x = torch.randn(2, 3, 63, 63)
    torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=0, atol=0)
    # Partial and wrong loads name the whole tensors, as on one device.
    r = dst.load_state_dict({k: v for k, v in sd.items() if not k.startswith("0.fc8")}, strict=False)
    assert sorted(r.missing_keys) == ["0.fc8.bias", "0.fc8.weight"] and r.unexpected_keys == []
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.fc8\.weight"):
        dst.load_state_dict({**sd, "0.fc8.weight": torch.zeros(2, 2)})


def test_from_torchvision_keeps_dtype_and_frozen_parameters():
    tv = torchvision.models.alexnet(weights=None, num_classes=10).double()
    tv.features.requires_grad_(False)
    ours = alexnet_rs.from_torchvision(tv)
    params = dict(ours.named_parameters())
    assert all(p.dtype == torch.float64 for p in params.values())
    assert not params["features.0.weight"].requires_grad and params["classifier.1.weight"].requires_grad
    x = torch.randn(1, 3, 63, 63, dtype=torch.float64)
    assert (ours.eval()(x) - tv.eval()(x)).abs().max().item() <= 1e-12


def test_importing_the_torchrun_module_keeps_train_callable(tmp_path):
    """`import alexnet_rs.train` (the torchrun entry point; pkgutil.walk_packages and Sphinx import
    it too) rebound the package's name `train` to that module: `alexnet_rs.train(config)` then
    raised "'module' object is not callable"."""
    import subprocess
    import sys

    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    script = f"""
import alexnet_rs, alexnet_rs.train
from alexnet_rs import train
assert train is alexnet_rs.train
r = train({{"preset": "cnn4", "input_size": 28, "data": {str(data)!r}, "batch_size": 8, "max_steps": 1,
           "threads": 1, "out": {str(tmp_path / "run")!r}}})
print(r["samples"])
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "16", r.stderr[-2000:]


def test_data_parallel_replication_is_a_clear_error():
    """nn.DataParallel over 2+ GPUs replicates the module: replacing each layer with its copy was
    refused as a user's layer replacement, naming `features` ("there is no layer to replace")."""
    m = alexnet_rs.AlexNet("torchvision", num_classes=3, input_size=63).eval()
    with pytest.raises(alexnet_rs.ConfigError, match="DataParallel cannot replicate.*DistributedDataParallel"):
        m._replicate_for_data_parallel()
    if not torch.cuda.is_available():  # without GPUs DataParallel calls the module itself
        x = torch.randn(2, 3, 63, 63)
        assert torch.equal(torch.nn.DataParallel(m)(x), m(x))


def test_device_names_with_spaces_are_read_as_the_rust_side_reads_them():
    """The Rust parser trims names: ``devices=" cpu"`` passed its check, then ``torch.device(" cpu")``
    raised a bare RuntimeError."""
    x = torch.randn(1, 3, 32, 32)
    for spec, kept in [(" cpu", "cpu"), ("cpu ", "cpu"), (" cpu , cpu ", "cpu,cpu")]:
        model = alexnet_rs.AlexNet("cnn4", num_classes=10, devices=spec).eval()
        assert model.devices == kept
        assert model(x).shape == (1, 10)


def test_a_paper_checkpoint_from_before_the_per_tower_lrn_warns_in_python(tmp_path):
    """The Rust side named it on stderr alone, which a notebook does not show."""
    import json
    import warnings

    ckpt = alexnet_rs.AlexNet("paper", num_classes=3, input_size=67).save_checkpoint(tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoints").glob("ckpt-*").__next__().joinpath("state.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alexnet_rs.AlexNet.load_checkpoint(ckpt)  # a current one: no warning
    del state["network"]  # as an older build wrote it
    (tmp_path / "run" / "checkpoints").glob("ckpt-*").__next__().joinpath("state.json").write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="normalised across its two towers"):
        alexnet_rs.AlexNet.load_checkpoint(ckpt)


def test_long_native_calls_let_other_python_threads_run_and_keep_the_random_stream(tmp_path):
    """save_checkpoint, load_checkpoint, AlexNet() and load_image held the GIL for seconds (a
    ticking thread ticked once); load_checkpoint drew 61M numbers from torch's global generator."""
    import threading
    import time

    from PIL import Image

    from alexnet_rs.data import DataLoader, load_image

    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 4000), (10, 200, 30)).save(big)
    data = tmp_path / "data"
    for c in range(2):
        (data / f"c{c}").mkdir(parents=True)
        for i in range(3000):
            (data / f"c{c}" / f"{i}.png").touch()  # walked, not read
    m = alexnet_rs.AlexNet("torchvision", num_classes=10)
    calls = {
        "save_checkpoint": lambda: m.save_checkpoint(tmp_path / "run"),
        "load_checkpoint": lambda: alexnet_rs.AlexNet.load_checkpoint(tmp_path / "run"),
        "AlexNet()": lambda: alexnet_rs.AlexNet("torchvision", num_classes=10),
        "load_image": lambda: load_image(big),
        "DataLoader": lambda: DataLoader(data, threads=1),
    }
    for name, call in calls.items():
        ticks, done = [0], threading.Event()

        def tick():
            while not done.is_set():
                ticks[0] += 1
                time.sleep(0.001)

        t = threading.Thread(target=tick)
        t.start()
        time.sleep(0.05)  # ticking before the call
        start, t0 = ticks[0], time.perf_counter()
        call()
        seconds, during = time.perf_counter() - t0, ticks[0] - start
        done.set()
        t.join()
        # A held GIL lets the thread tick a few times (4 in 0.85 s of sorted(), which holds it);
        # a released one about once per millisecond, throttled by the call's own threads on 2
        # shared cores: the floor is 20 a second (this test failed once at 50 on a slower machine,
        # which assertion was not recorded).
        assert during >= max(3, seconds * 20), (name, during, seconds)
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    alexnet_rs.AlexNet.load_checkpoint(tmp_path / "run")
    assert torch.equal(torch.rand(3), want)
    # from_torchvision and to_torchvision drew 61M numbers too, for weights overwritten at once.
    tv = m.to_torchvision()
    torch.manual_seed(7)
    alexnet_rs.from_torchvision(tv)
    assert torch.equal(torch.rand(3), want)
    torch.manual_seed(7)
    tv = m.to_torchvision()
    assert torch.equal(torch.rand(3), want)
    # Copies, trainable, of the model's values (not shared with it).
    assert all(p.requires_grad and p.device.type == "cpu" for p in tv.parameters())
    with torch.no_grad():
        tv.features[0].weight.zero_()
    assert m.features[0].weight.abs().sum() > 0
