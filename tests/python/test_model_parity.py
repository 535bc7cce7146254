"""The Rust functional forward against independent PyTorch models holding the same weights:
torchvision's AlexNet for `torchvision`, plain torch.nn (benches/torch_alexnet.py) for `paper` and
`caffe`. Logits and every parameter gradient must agree; and the Rust training loop must follow a
plain PyTorch loop over the same model step for step."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import alexnet_rs
from conftest import FASHION, first_seed_without_flip, needs_fashion

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))
from torch_alexnet import reference_model  # noqa: E402

SIZES = {"paper": 224, "torchvision": 224, "caffe": 227}


@pytest.mark.parametrize("preset", ["paper", "torchvision", "caffe"])
@pytest.mark.parametrize("backend", ["ours", "stock"])
def test_logits_and_gradients_match(preset, backend):
    """Logits in float32; gradients in float64. In float32 a max-pool window whose two largest
    inputs differ by less than the rounding of ours and the reference's sums sends its gradient
    to either: on 1 input in 6 some weight's gradient differed by 1-3 % (an unseeded test failing
    at random); in float64 the two agree to the last bit."""
    torch.manual_seed(0)
    ref = reference_model(preset, num_classes=10).eval()
    params = dict(ref.named_parameters())
    assert sorted(params) == sorted(name for name, _ in alexnet_rs.param_shapes(preset, 10))
    x = torch.randn(2, 3, SIZES[preset], SIZES[preset])
    y = torch.tensor([3, 7])
    with torch.no_grad():
        logits, logits_ref = alexnet_rs._native.forward(preset, params, x, False, 10, backend), ref(x)
    assert (logits - logits_ref).abs().max().item() <= 1e-5 * max(1.0, logits_ref.abs().max().item())

    ref.double()
    F.cross_entropy(alexnet_rs._native.forward(preset, params, x.double(), False, 10, backend), y).backward()
    ours = {k: p.grad.clone() for k, p in params.items()}
    ref.zero_grad()
    F.cross_entropy(ref(x.double()), y).backward()
    for k, p in params.items():
        scale = p.grad.abs().max().item()
        assert scale > 0, k
        assert (ours[k] - p.grad).abs().max().item() <= 1e-9 * scale, k


@pytest.mark.parametrize("preset, size", [("paper", 67), ("paper", 131), ("caffe", 131), ("caffe", 48)])
def test_lrn_counts_on_the_presets_pixel_scale(preset, size):
    """On standard-normal inputs LRN is nearly the identity (its sum of squares is tiny against
    k), so the test above cannot tell LRN over all channels from LRN per tower. Here pixels are on
    the presets' 0-255 scale, through the fused CPU path (no observer), NCHW (67) and
    channels_last (131)."""
    torch.manual_seed(0)
    ref = reference_model(preset, num_classes=10, input_size=size).eval()
    ours = alexnet_rs.AlexNet(preset, num_classes=10, input_size=size).eval()
    ours.load_state_dict(ref.state_dict())
    x = 255 * torch.rand(2, 3, size, size)
    with torch.no_grad():
        want, got = ref(x), ours(x)
        whole = ref.conv1(x).relu()
        per_tower = torch.cat([F.local_response_norm(t, 5, 1e-4, 0.75, 2.0) for t in whole.chunk(2, 1)], 1)
        assert (F.local_response_norm(whole, 5, 1e-4, 0.75, 2.0) - per_tower).abs().max() > 1e-3  # it counts
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("preset", ["paper", "torchvision", "caffe"])
def test_gradient_penalty_matches(preset):
    """Double backprop (an input-gradient penalty, create_graph=True) through the whole network:
    every parameter's gradient equals the reference model's, in float64."""
    torch.manual_seed(0)
    ref = reference_model(preset, num_classes=10).double().eval()
    params = dict(ref.named_parameters())
    x = torch.randn(1, 3, SIZES[preset], SIZES[preset], dtype=torch.float64)

    def penalty_grads(forward):
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(forward(z).logsumexp(1).sum(), z, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), list(params.values()), allow_unused=True)

    ours = penalty_grads(lambda z: alexnet_rs._native.forward(preset, params, z, False, 10, "ours"))
    theirs = penalty_grads(ref)
    for k, a, b in zip(params, ours, theirs):
        assert a is not None, k
        scale = b.abs().max().item()
        assert scale > 0, k
        assert (a - b).abs().max().item() <= 1e-9 * scale, k


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


@needs_fashion
@pytest.mark.parametrize("preset,devices", [("paper", "cpu"), ("paper", "cpu,cpu"), ("caffe", "cpu")])
def test_training_loop_follows_a_plain_pytorch_loop(preset, devices, tmp_path):
    """The Rust loop (our LRN/pool and grouped-conv kernels, the two-device split, the paper's
    update rule fused into the FC backward) against torch.nn with F.local_response_norm and the
    paper's rule written out below: same initial weights (each preset's: the paper's N(0, 0.01)
    and biases of 1), same batches from our loader, the paper's lr 0.01 under a cosine schedule
    (a new lr every step), weight decay 5e-4, dropout off (torch and we draw different masks). At
    this size the paper's initialisation makes the loss jump to ~36 and back within 10 steps: a
    hard trajectory to follow. The two sides round differently (our LRN, the fused FC update), so
    a near-tie may flip: conftest.first_seed_without_flip (measured: relative loss differences
    1e-7 to 4e-7 over seeds 0-3 at lr 0.01 and 0.001, no flip)."""
    from alexnet_rs.data import DataLoader

    steps, batch, size, limit, lr0, momentum, wd = 40, 16, 63, 320, 0.01, 0.9, 5e-4
    per_epoch, epochs = limit // batch, 3

    def run(seed):
        out, events = tmp_path / f"seed{seed}", []
        alexnet_rs.train(dict(preset=preset, devices=devices, data=str(FASHION), input_size=size, batch_size=batch,
                              epochs=epochs, max_steps=steps, lr=lr0, momentum=momentum, weight_decay=wd,
                              update_rule="paper", schedule="cosine", dropout=0.0, seed=seed, limit_train=limit,
                              limit_test=batch, threads=2, out=str(out)), on_step=events.append)
        ours = [e for e in events if "train_error" in e]

        torch.manual_seed(seed)  # the Rust run drew its initial weights from torch's generator so seeded
        init = dict(alexnet_rs._native.init_params(preset, 10, size))
        ref = reference_model(preset, num_classes=10)
        ref.fc6 = torch.nn.Linear(init["fc6.weight"].shape[1], 4096)  # at 63x63 conv5 pools to 1x1
        ref.load_state_dict(init)
        ref.eval()  # dropout off; the model has no other train-mode layer
        params = dict(ref.named_parameters())
        velocity = {k: torch.zeros_like(p) for k, p in params.items()}
        loader = DataLoader(str(FASHION), preset=preset, crop=size, view="train", batch_size=batch, threads=2,
                            seed=seed, shuffle=True, drop_last=True, limit=limit)
        theirs = []
        for epoch in range(epochs):
            for x, y in loader.epoch(epoch):
                if len(theirs) == steps:
                    break
                lr = 0.5 * lr0 * (1 + math.cos(math.pi * len(theirs) / per_epoch / epochs))
                ref.zero_grad()
                loss = F.cross_entropy(ref(x), y)
                loss.backward()
                with torch.no_grad():  # the paper's rule: v = m v - wd lr w - lr g; w += v (no decay on biases)
                    for k, p in params.items():
                        v = velocity[k].mul_(momentum).add_(p.grad, alpha=-lr)
                        if k.endswith("weight"):
                            v.add_(p, alpha=-wd * lr)
                        p.add_(v)
                theirs.append((loss.item(), lr))
        assert [e["step"] for e in ours] == list(range(1, steps + 1)) and len(theirs) == steps
        for e, (_, lr) in zip(ours, theirs):
            assert e["lr"] == pytest.approx(lr, rel=1e-12), e["step"]
        diffs = [abs(e["loss"] - loss) / loss for e, (loss, _) in zip(ours, theirs)]
        return diffs, (out, params, max(loss for loss, _ in theirs))

    seed, diffs, (out, params, highest) = first_seed_without_flip(run)
    print(f"{preset} on {devices}, seed {seed}: max relative loss difference {max(diffs):.1e} over {steps} steps")
    if preset == "paper":
        assert highest > 10, "the paper's initialisation no longer makes the loss jump"
    final = load_file(sorted((out / "checkpoints").glob("ckpt-*"))[-1] / "weights.safetensors")
    assert sorted(final) == sorted(params)
    # A share of each tensor's largest value, plus an absolute term for conv biases the run moved by
    # ~1e-6 only (their gradients are sums over every position that nearly cancel, which float32
    # rounds unevenly). paper: 1e-4 and 1e-7 (one float32 ulp at 1.0); measured <= 2e-6 and 4e-9.
    # caffe: 1e-3 and 1e-6; measured on an AVX2 AMD EPYC up to 3.1e-4 (conv5.weight) and 5.5e-7
    # (conv3.bias, moved 3.2e-5 from 0), 1.4e-5 or less on an AVX-512 Xeon (where the FC update is
    # fused into the backward): its two sides drift apart more than the paper's.
    share, floor = (1e-3, 1e-6) if preset == "caffe" else (1e-4, 1e-7)
    for k, p in params.items():
        diff, scale = (final[k] - p.detach()).abs().max().item(), p.abs().max().item()
        assert diff <= share * scale + floor, (k, diff, scale)
