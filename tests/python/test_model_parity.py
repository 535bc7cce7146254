"""The Rust functional forward against independent PyTorch models holding the same weights:
torchvision's AlexNet for `torchvision`, plain torch.nn (benches/torch_alexnet.py) for `paper` and
`caffe`. Logits and every parameter gradient must agree."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import alexnet_rs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
from torch_alexnet import reference_model  # noqa: E402

SIZES = {"paper": 224, "torchvision": 224, "caffe": 227}


@pytest.mark.parametrize("preset", ["paper", "torchvision", "caffe"])
@pytest.mark.parametrize("backend", ["ours", "stock"])
def test_logits_and_gradients_match(preset, backend):
    ref = reference_model(preset, num_classes=10).eval()
    params = dict(ref.named_parameters())
    assert sorted(params) == sorted(name for name, _ in alexnet_rs.param_shapes(preset, 10))
    x = torch.randn(2, 3, SIZES[preset], SIZES[preset])
    y = torch.tensor([3, 7])

    logits = alexnet_rs._native.forward(preset, params, x, False, 10, backend)
    F.cross_entropy(logits, y).backward()
    ours = {k: p.grad.clone() for k, p in params.items()}
    ref.zero_grad()
    logits_ref = ref(x)
    F.cross_entropy(logits_ref, y).backward()

    assert (logits - logits_ref).abs().max().item() <= 1e-5 * max(1.0, logits_ref.abs().max().item())
    for k, p in params.items():
        scale = p.grad.abs().max().item()
        assert (ours[k] - p.grad).abs().max().item() <= 1e-4 * max(scale, 1e-8), k


def test_forward_errors_name_the_problem():
    ref = reference_model("paper", num_classes=10)
    params = dict(ref.named_parameters())
    with pytest.raises(alexnet_rs.ShapeError, match=r"\(N, 3, H, W\)"):
        alexnet_rs._native.forward("paper", params, torch.zeros(1, 1, 224, 224), False, 10)
    del params["fc8.bias"]
    with pytest.raises(alexnet_rs.ConfigError, match="fc8.bias"):
        alexnet_rs._native.forward("paper", params, torch.zeros(1, 3, 224, 224), False, 10)
    with pytest.raises(alexnet_rs.ConfigError, match="conv backend"):
        alexnet_rs._native.forward("paper", dict(ref.named_parameters()), torch.zeros(1, 3, 224, 224), False, 10, "cudnn")
