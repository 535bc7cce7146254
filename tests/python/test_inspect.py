"""Looking inside and reusing the model: activations by layer name against torchvision's modules
(forward hooks), print(model), from_torchvision with a new head, reset_classifier, frozen
parameters."""

import pytest
import torch
import torchvision

import alexnet_rs
from alexnet_rs.errors import ConfigError, DtypeError

# Our stage names (`alexnet info`) -> the torchvision module whose output is that activation. Our
# rows fuse a convolution or linear layer with the ReLU after it, so theirs is the ReLU.
TV_MODULE = {
    "features.0": "features.1", "features.0.pool": "features.2",
    "features.3": "features.4", "features.3.pool": "features.5",
    "features.6": "features.7", "features.8": "features.9",
    "features.10": "features.11", "features.10.pool": "features.12",
    "avgpool": "avgpool",
    "classifier.1": "classifier.2", "classifier.4": "classifier.5", "classifier.6": "classifier.6",
}


def assert_close(a, b, tol=1e-5):
    assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() <= tol


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    return tv, alexnet_rs.from_torchvision(tv).eval()


def test_every_named_activation_equals_torchvisions_module_output(pair):
    tv, ours = pair
    x = torch.randn(2, 3, 224, 224)
    seen = {}
    hooks = [tv.get_submodule(m).register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.clone()))
             for n, m in TV_MODULE.items()]
    try:
        tv(x)
    finally:
        for h in hooks:
            h.remove()
    got = ours.features(x, list(TV_MODULE))
    assert list(got) == list(TV_MODULE)
    for name, t in got.items():
        assert t.shape == seen[name].shape, name
        assert_close(t, seen[name])


def test_the_gradient_through_conv3_equals_torchvisions():
    """In float64: in float32 a max-pool window whose two largest inputs differ by a rounding
    error routes the gradient to either one (0.02 of the largest gradient apart, seen once in CI)."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).double().eval()
    ours = alexnet_rs.from_torchvision(tv).eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours.features(x1, "features.6")["features.6"].sum().backward()
    out = {}
    h = tv.features[7].register_forward_hook(lambda _m, _i, o: out.__setitem__("conv3", o))
    try:
        tv(x2)
    finally:
        h.remove()
    out["conv3"].sum().backward()
    assert_close(x1.grad, x2.grad, 1e-12)


def test_paper_names_and_errors():
    model = alexnet_rs.AlexNet("paper", input_size=63).eval()
    x = torch.randn(1, 3, 63, 63)
    acts = model.features(x, ["fc7", "conv1.lrn", "conv2.pool"])
    assert [tuple(t.shape) for t in acts.values()] == [(1, 4096), (1, 96, 15, 15), (1, 256, 3, 3)]
    assert_close(model.features(x, "fc8")["fc8"], model(x), 1e-6)
    two = alexnet_rs.AlexNet("paper", input_size=63, devices="cpu,cpu").eval()
    two.load_state_dict(model.state_dict())
    for name, t in two.features(x, ["conv2", "conv2.lrn", "fc6"]).items():  # gathered, as one device
        assert_close(t, acts[name] if name in acts else model.features(x, name)[name], 1e-6)
    with pytest.raises(ConfigError, match="no layer `conv9`.*conv1.lrn"):
        model.features(x, ["conv9"])
    with pytest.raises(DtypeError, match="layers"):
        model.features(x, 3)


def test_repr_shows_the_layers_like_torchvision():
    text = repr(alexnet_rs.AlexNet("paper"))
    assert text.startswith("AlexNet(preset='paper', num_classes=1000")
    assert "(conv2): Conv2d(96, 256, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2), groups=2) + ReLU(inplace=True)" in text
    assert "(conv1.lrn): 2 towers x LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)" in text
    assert "(conv1.pool): MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)" in text
    assert ("(fc7): Dropout(p=0.5, inplace=False) + Linear(in_features=4096, out_features=4096, bias=True)"
            " + ReLU(inplace=True)") in text
    tv = repr(alexnet_rs.AlexNet("torchvision"))
    assert "(avgpool): AdaptiveAvgPool2d(output_size=(6, 6))" in tv
    # Each of these module reprs is torchvision's own for the matching module.
    ref = torchvision.models.alexnet(weights=None)
    assert f"(features.0): {ref.features[0]!r} + ReLU(inplace=True)" in tv
    assert f"(features.0.pool): {ref.features[2]!r}" in tv
    assert f"(classifier.6): {ref.classifier[6]!r}" in tv


def test_fine_tuning_from_torchvision_with_frozen_convolutions():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None)
    model = alexnet_rs.from_torchvision(tv, num_classes=10)
    assert model.num_classes == 10 and model.state_dict()["classifier.6.weight"].shape == (10, 4096)
    for name, p in model.named_parameters():
        if name.startswith("features."):
            p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 3, 224, 224), torch.randint(0, 10, (4,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith("features."):
            assert torch.equal(before[k], after[k]), k
            assert dict(model.named_parameters())[k].grad is None, k
        else:
            assert not torch.equal(before[k], after[k]), k
    assert torch.equal(after["features.0.weight"], tv.state_dict()["features.0.weight"])


def test_reset_classifier_keeps_the_rest_and_gives_a_trainable_head():
    model = alexnet_rs.AlexNet("paper", input_size=63)
    fc7 = model.state_dict()["fc7.weight"].clone()
    dict(model.named_parameters())["fc8.weight"].requires_grad_(False)
    model.reset_classifier(7)
    sd = model.state_dict()
    assert sd["fc8.weight"].shape == (7, 4096) and sd["fc8.bias"].shape == (7,)
    assert torch.equal(sd["fc7.weight"], fc7)
    # A new class layer is trainable (as a new nn.Linear is), whatever the old one's flag.
    assert dict(model.named_parameters())["fc8.weight"].requires_grad
    assert model(torch.randn(2, 3, 63, 63)).shape == (2, 7)
    # A parametrized class layer (weight_norm) is replaced too: it was a KeyError.
    torch.nn.utils.parametrizations.weight_norm(model.get_submodule("fc8"))
    model.reset_classifier(4)
    assert model(torch.randn(2, 3, 63, 63)).shape == (2, 4)
    assert sorted(model.state_dict())[-2:] == ["fc8.bias", "fc8.weight"]
    two = alexnet_rs.AlexNet("paper", input_size=63, devices="cpu,cpu")
    two.reset_classifier(3)
    assert two(torch.randn(1, 3, 63, 63)).shape == (1, 3)
    assert two.state_dict()["fc8.weight"].shape == (3, 4096)


def test_conversions_keep_the_mode_dtype_and_a_new_head_trains():
    """from_torchvision of a frozen backbone with a new head: only the head trains (it had no
    trainable parameter: the new head copied the old one's requires_grad=False); both conversions
    keep train/eval mode (an eval model came back in train mode, its dropout on) and
    to_torchvision keeps the dtype (float64 came back float32)."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None, num_classes=10).eval().requires_grad_(False)
    tuned = alexnet_rs.from_torchvision(tv, num_classes=4)
    assert not tuned.training
    assert [n for n, p in tuned.named_parameters() if p.requires_grad] == ["classifier.6.weight", "classifier.6.bias"]
    same = alexnet_rs.from_torchvision(tv)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(same(x), tv(x), rtol=1e-5, atol=1e-5)
    back = alexnet_rs.AlexNet("torchvision", num_classes=3, input_size=63).double().eval().to_torchvision()
    assert not back.training and back.classifier[6].weight.dtype == torch.float64



def test_torchvisions_head_replacement_idiom_trains_as_on_torchvision():
    """`model.classifier[6] = nn.Linear(4096, n)` (torchvision's fine-tuning idiom) gives the model
    that head: the same logits and gradients as torchvision's model with the same new head. It
    raised "'_Layer' object does not support item assignment"."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    ours = alexnet_rs.from_torchvision(tv)
    # The idiom reads the old head's sizes first (`'_Layer' object has no attribute 'in_features'`).
    assert (ours.classifier[6].in_features, ours.classifier[6].out_features) == (4096, 1000)
    assert ours.features[0].out_channels == tv.features[0].out_channels == 64
    two = alexnet_rs.AlexNet("paper", input_size=63, devices="cpu,cpu")  # fc6's rows in two shards
    assert (two.fc6.out_features, two.conv2.out_channels) == (4096, 256)  # whole, not a shard's 2048 / 128
    assert tuple(two.state_dict()["fc6.weight"].shape) == (4096, two.fc6.in_features) == (4096, 256)  # 1x1 maps
    with pytest.raises(AttributeError):
        ours.classifier.in_features
    with pytest.raises(AttributeError):
        ours.features[0].in_features
    head = torch.nn.Linear(4096, 10)
    tv.classifier[6] = head
    ours.classifier[6] = torch.nn.Linear(4096, 10)
    ours.classifier[6].load_state_dict(head.state_dict())
    assert ours.num_classes == 10 and ours.classifier[6] is not head
    x = torch.randn(2, 3, 224, 224)
    a, b = tv(x), ours(x)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(ours.classifier[6].weight.grad, head.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.get_parameter("features.0.weight").grad, tv.features[0].weight.grad,
                               rtol=1e-4, atol=1e-6)
    assert ours.state_dict()["classifier.6.weight"].shape == (10, 4096)
    # A same-shaped layer anywhere, by attribute on the paper preset too.
    paper = alexnet_rs.AlexNet("paper", input_size=63).eval()
    conv1 = torch.nn.Conv2d(3, 96, 11, stride=4, padding=2)
    paper.conv1 = conv1
    assert paper.get_parameter("conv1.weight") is conv1.weight
    paper.conv3 = torch.nn.Conv2d(256, 384, 3, padding="same")  # the same as (1, 1): accepted
    torch.testing.assert_close(paper.features(x[:, :, :63, :63], "conv1")["conv1"],
                               torch.relu(conv1(x[:, :, :63, :63])), rtol=1e-5, atol=1e-6)
    paper.fc8 = torch.nn.Linear(4096, 3)
    assert paper(x[:, :, :63, :63]).shape == (2, 3) and paper.num_classes == 3 and paper.classes is None


@pytest.mark.parametrize("do, error, needle", [
    (lambda m: m.classifier.__setitem__(6, torch.nn.Linear(1000, 10)), ConfigError,
     "classifier.6 takes weight (n, 4096)"),
    (lambda m: m.classifier.__setitem__(4, torch.nn.Linear(4096, 10)), ConfigError,
     "classifier.4 takes weight (4096, 4096)"),
    (lambda m: m.classifier.__setitem__(2, torch.nn.Linear(4096, 10)), IndexError, "classifier has no layer 2"),
    (lambda m: m.classifier[2], IndexError, "classifier has no layer 2 (its layers: 1, 4, 6"),
    (lambda m: setattr(m, "classifier", torch.nn.Sequential(torch.nn.Linear(9216, 10))), ConfigError,
     "classifier holds the layers classifier.1, classifier.4, classifier.6"),
    (lambda m: m.classifier.__setitem__(6, torch.nn.ReLU()), ConfigError, "classifier.6 takes weight"),
    (lambda m: m.classifier.__setitem__(6, "fc"), DtypeError, "must be a torch.nn.Module"),
    # Same shapes, other settings: only the weight and bias are read, the rest was dropped in silence.
    (lambda m: m.features.__setitem__(3, torch.nn.Conv2d(64, 192, 5, stride=3, padding=0, padding_mode="reflect")),
     ConfigError, "a Conv2d with stride=(3, 3), padding=(0, 0), padding_mode='reflect' would not be computed"),
    (lambda m: m.features.__setitem__(3, torch.nn.Conv2d(64, 192, 5, padding=2, dilation=2)), ConfigError,
     "features.3 computes Conv2d(64, 192, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))"),
])
def test_replacing_a_layer_badly_is_refused_by_name(do, error, needle):
    model = alexnet_rs.AlexNet("torchvision", input_size=63)
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)")):
        do(model)
    assert model(torch.randn(1, 3, 63, 63)).shape == (1, 1000)  # unchanged, still runs


def test_hooks_on_a_replacement_layer_are_said_to_never_fire():
    """A hook on `model.classifier[6] = nn.Linear(...)` never ran (the Rust forward only reads the
    layer's weight and bias), in silence; the AlexNet module's own hooks run."""
    model = alexnet_rs.AlexNet("torchvision", input_size=63)
    model.classifier[6] = torch.nn.Linear(4096, 10)
    fired = []
    model.register_forward_hook(lambda *a: fired.append("model"))
    model(torch.randn(1, 3, 63, 63))
    assert fired == ["model"]
    model.classifier[6].register_forward_hook(lambda *a: fired.append("head"))
    with pytest.warns(UserWarning, match="the hooks on classifier.6 never fire"):
        model(torch.randn(1, 3, 63, 63))
    assert fired == ["model"] * 2


def test_a_two_device_models_layers_are_not_replaced():
    two = alexnet_rs.AlexNet("paper", input_size=63, devices="cpu,cpu")
    with pytest.raises(ConfigError, match="reset_classifier"):
        two.fc8 = torch.nn.Linear(4096, 3)


def test_the_layer_containers_iterate_and_index_as_torchvisions():
    """`for layer in model.features: freeze(layer)` froze conv1 alone (Python's old sequence
    protocol stopped at the missing index 1) and `list(model.classifier)` was empty; len() and
    classifier[-1] (torchvision's idiom for the head) raised."""
    import numpy as np

    tv = torchvision.models.alexnet(weights=None)
    ours = alexnet_rs.from_torchvision(tv)
    for model in (tv, ours):
        for layer in model.features:
            for p in layer.parameters():
                p.requires_grad_(False)
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in tv.named_parameters() if p.requires_grad] and trainable[0] == "classifier.1.weight"
    assert [type(m) for m in ours.classifier] == [type(ours.classifier[i]) for i in (1, 4, 6)]
    assert len(ours.features) == 5 and len(ours.classifier) == 3
    assert ours.classifier[-1] is ours.classifier[6] and ours.classifier[np.int64(6)] is ours.classifier[6]
    ours.classifier[-1] = torch.nn.Linear(4096, 7)  # torchvision's index from the end (classifier[6])
    assert ours.num_classes == 7 and ours(torch.randn(1, 3, 224, 224)).shape == (1, 7)
    with pytest.raises(IndexError, match="features has no layer 12"):  # features[-1]: torchvision's MaxPool2d
        ours.features[-1]
    with pytest.raises(IndexError, match="slice"):
        ours.features[0:3]
    # Layers and the other presets' empty `features` are no containers, but are still true.
    paper = alexnet_rs.AlexNet("paper", input_size=63)
    assert paper.features and paper.conv1
    for leaf in (paper.features, paper.conv1, ours.classifier[4]):
        with pytest.raises(TypeError, match="holds no layers"):
            iter(leaf)
        with pytest.raises(TypeError, match="holds no layers"):
            len(leaf)


def test_a_layer_in_another_dtype_is_named_before_the_forward():
    """A float64 head on a float32 model ran into libtorch's "mat1 and mat2 must have the same dtype"."""
    model = alexnet_rs.AlexNet("cnn4", num_classes=10)
    model.fc4 = torch.nn.Linear(576, 5).double()
    with pytest.raises(DtypeError, match=r"fc4.weight is torch.float64 but conv1.weight is torch.float32"):
        model(torch.randn(1, 3, 32, 32))
    model.double()
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 5)


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated:FutureWarning")
def test_pruning_and_legacy_weight_norm_apply_in_the_forward():
    """torch.nn.utils.prune and the legacy nn.utils.weight_norm compute `weight` in a forward
    pre-hook, which never ran: the forward used a stale tensor and the second backward failed
    ("Trying to backward through the graph a second time")."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None)
    ours = alexnet_rs.from_torchvision(tv)
    for model in (tv, ours):
        torch.nn.utils.prune.l1_unstructured(model.features[0], "weight", amount=0.5)
        torch.nn.utils.weight_norm(model.classifier[6])
    # The masks agree (L1 on the same weights); copy them to be safe against ties.
    ours.features[0].weight_mask.copy_(tv.features[0].weight_mask)
    x = torch.randn(2, 3, 224, 224)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    topt = torch.optim.SGD(tv.parameters(), lr=0.1)
    for _ in range(2):
        for model, o in ((tv, topt), (ours, opt)):
            o.zero_grad()
            model.eval()(x).square().mean().backward()
            o.step()
    torch.testing.assert_close(ours.eval()(x), tv(x), rtol=1e-4, atol=1e-5)
    assert (ours.features[0].weight[ours.features[0].weight_mask == 0] == 0).all()


def test_spectral_norm_steps_in_a_training_forward_only(tmp_path):
    """The legacy spectral_norm hook takes a power-iteration step (updating `weight_u`) when it
    runs in training mode: saving a checkpoint, ONNX export, the figures and loading a state dict
    ran it too, so saving changed the model (torch's state_dict() does not)."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None, num_classes=10)
    ours = alexnet_rs.from_torchvision(tv)
    for model in (tv, ours):
        torch.nn.utils.spectral_norm(model.classifier[6])
        model.classifier[6].weight_u.copy_(tv.classifier[6].weight_u)
        model.train()
    u = ours.classifier[6].weight_u.clone()
    ours.save_checkpoint(tmp_path / "run")
    alexnet_rs.viz.filter_towers(ours)
    ours.load_state_dict(ours.state_dict())
    assert torch.equal(ours.classifier[6].weight_u, u)
    # A training forward steps once, as torchvision's does: the same u after it.
    x = torch.randn(2, 3, 224, 224)
    ours(x), tv(x)
    assert not torch.equal(ours.classifier[6].weight_u, u)
    torch.testing.assert_close(ours.classifier[6].weight_u, tv.classifier[6].weight_u)


def _modified(change):
    tv = torchvision.models.alexnet(weights=None, num_classes=5).eval()
    change(tv)
    return tv


@pytest.mark.parametrize("change, where", [
    (lambda tv: tv.features.__setitem__(1, torch.nn.GELU()), "features.1"),
    (lambda tv: tv.features.__setitem__(2, torch.nn.AvgPool2d(3, 2)), "features.2"),
    (lambda tv: setattr(tv.features[0], "stride", (2, 2)), "features.0"),
    (lambda tv: setattr(tv, "avgpool", torch.nn.AdaptiveMaxPool2d((6, 6))), "avgpool"),
    (lambda tv: tv.classifier.append(torch.nn.Softmax(dim=1)), "classifier.7"),
    (lambda tv: tv.classifier.__setitem__(0, torch.nn.Dropout(0.2)), "classifier.0"),
])
def test_from_torchvision_refuses_a_network_that_is_not_torchvisions_alexnet(change, where):
    """Only the weights' names were checked: a GELU, an average pool, another stride or an extra
    layer gave a model whose logits silently differed from the original's (up to 0.5)."""
    with pytest.raises(ConfigError, match=f"not torchvision's AlexNet at {where}"):
        alexnet_rs.from_torchvision(_modified(change))


def test_from_torchvision_takes_layers_in_place_or_not():
    tv = _modified(lambda tv: [tv.features.__setitem__(i, torch.nn.ReLU()) for i in (1, 4, 7, 9, 11)]
                   + [tv.classifier.__setitem__(i, torch.nn.Dropout(0.5, inplace=True)) for i in (0, 3)])
    x = torch.randn(2, 3, 100, 100)
    assert_close(alexnet_rs.from_torchvision(tv).eval()(x), tv.eval()(x))


@pytest.mark.parametrize("preset, towers", [("paper", 2), ("caffe", 1)])
def test_lrn_normalises_each_tower_of_the_paper_network_apart(preset, towers):
    """The 2012 network normalised each GPU's own kernel maps (CHM layers-145.cfg: rnorm1a over
    conv1a's 48 channels, rnorm2a over conv2a's 128); ours normalised across the towers (channels
    46-49 off by ~1%), and the two-device split exchanged activations there. Caffe's one GPU
    normalises all of them. Inputs on the presets' 0-255 scale, where LRN's sum matters."""
    import torch.nn.functional as F

    k = {"paper": 2.0, "caffe": 1.0}[preset]
    x = 255 * torch.rand(2, 3, 67, 67)
    for devices in [None, "cpu,cpu"]:
        model = alexnet_rs.AlexNet(preset, num_classes=10, input_size=67, devices=devices).eval()
        acts = model.features(x, ["conv1", "conv1.lrn", "conv2", "conv2.lrn"])
        for layer in ["conv1", "conv2"]:
            ref = torch.cat([F.local_response_norm(t, 5, 1e-4, 0.75, k) for t in acts[layer].chunk(towers, 1)], 1)
            assert (acts[f"{layer}.lrn"] - ref).abs().max() <= 1e-5 * ref.abs().max(), (devices, layer)
