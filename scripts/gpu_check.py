"""GPU checks of alexnet_rs's CUDA kernels, one run (see scripts/gpu-check).

Parts: the `alexnet` CLI from the installed wheel (a few training steps of `paper` on one device
and on the two-device path over the same device, --bf16, --channels-last, both conv backends, then
eval and predict); CUDA-vs-CPU parity of values and gradients for lrn and grouped_conv2d (AlexNet's
grouped layers, and a depthwise layer of more groups than a grid dimension takes) in float32,
bfloat16 and float16; the fused relu_lrn_max_pool2d against the stock composition, and its
backward refusing indices outside the plane; float64 gradcheck and opcheck on CUDA; compute-sanitizer memcheck on a
small case; benchmarks (LRN vs F.local_response_norm and vs the measured HBM copy bandwidth;
grouped conv vs F.conv2d(groups=2) on conv2/conv4/conv5 at batch 128 in float32 and bfloat16; the
paper network's bfloat16 training step at batch 128: ours, PyTorch eager, torch.compile).
With --cpu, the parts that need no GPU run on the CPU with small sizes and the rest are listed
as skipped. Writes report.md and report.json to --out (default: $OUT, else ./gpu-check-out)
after every part, so a run stopped from outside keeps what it measured; the CLI's runs go to a
scratch folder, deleted at the end. Parts that would start after --deadline seconds are listed as
skipped; once a CUDA error has left this process's context unusable, the in-process GPU parts
that follow are skipped (the subprocess ones still run).
"""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import alexnet_rs
from alexnet_rs.ops import grouped_conv2d, lrn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))
from torch_alexnet import reference_model  # noqa: E402

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
# Max |got - ref| / max |ref|, the references computed from the very inputs the op got (rounded to
# its dtype), so the tolerance is the op's own rounding: its output's (bf16 2^-8 = 3.9e-3, fp16
# 4.9e-4) over float32 accumulation (the CPU's float16 convolution measured 1.5e-3 on dx).
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float64: 1e-10}
# (name, x shape at batch 1, w shape, padding): AlexNet's grouped layers (paper preset).
CONV_SHAPES = [("conv2", (96, 27, 27), (256, 48, 5, 5), 2), ("conv4", (384, 13, 13), (384, 192, 3, 3), 1),
               ("conv5", (384, 13, 13), (256, 192, 3, 3), 1)]


# When parts stop being started (main sets it from --deadline); subprocess timeouts end near it.
DEADLINE = math.inf


def budget(cap):
    """Seconds a subprocess may take: at most cap, and not much past the deadline."""
    return max(30.0, min(cap, DEADLINE + 60 - time.time()))


class Report:
    def __init__(self):
        self.rows = []
        self.cuda_broken = False  # a CUDA error (an illegal address...) poisons this process's context

    def add(self, part, name, status, value="", detail=""):
        self.rows.append(dict(part=part, name=name, status=status, value=value, detail=detail))
        print(f"[{status:>7}] {part}: {name} {value} {detail}", flush=True)

    def run(self, part, fn):
        try:
            fn()
        except Exception as e:  # a failing part is reported, the others still run
            self.add(part, type(e).__name__, "FAIL", detail=(str(e).splitlines() or [""])[0][:300])
            traceback.print_exc()
            if "CUDA error" in str(e) or type(e).__name__ == "AcceleratorError":
                self.cuda_broken = True

    def failed(self):
        return [r for r in self.rows if r["status"] == "FAIL"]


def rel_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def timed(fn, device, repeats=20):
    """Median seconds of fn() (synchronised on CUDA), after two warm-ups."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def fwd_bwd(fn, *inputs, grad=None):
    inputs = [t.detach().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*inputs)
    y.backward(grad if grad is not None else torch.ones_like(y))
    return [y.detach()] + [t.grad for t in inputs if t is not None]


# ---- parity ----

def parity(rep, dev):
    torch.manual_seed(0)  # the same inputs every run: an error near a tolerance does not come and go
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for cl in (False, True):
            # Inputs rounded to the dtype first: the reference (float64) sees what the op sees.
            x = (torch.randn(4, 96, 27, 27).relu() * 40).to(dtype).double()
            g = torch.randn_like(x).to(dtype).double()
            xd = x.to(dev, dtype)
            if cl:
                xd = xd.contiguous(memory_format=torch.channels_last)
            got = fwd_bwd(lambda t: lrn(t, **LRN), xd, grad=g.to(dev, dtype))
            ref = fwd_bwd(lambda t: F.local_response_norm(t, 5, 1e-4, 0.75, 2.0), x, grad=g)
            errs = [rel_err(a.float(), b) for a, b in zip(got, ref)]
            ok = max(errs) <= TOL[dtype]
            rep.add("parity", f"lrn {dtype} {'channels_last' if cl else 'contiguous'}", "ok" if ok else "FAIL",
                    f"max rel err y {errs[0]:.2e} dx {errs[1]:.2e}")
        for name, xs, ws, pad in CONV_SHAPES:
            x, w, b = (t.to(dtype).double() for t in (torch.randn(2, *xs), torch.randn(*ws) * 0.05, torch.randn(ws[0])))
            g = torch.randn(2, ws[0], xs[1], xs[2]).to(dtype).double()
            got = fwd_bwd(lambda x, w, b: grouped_conv2d(x, w, b, 1, pad, 2), x.to(dev, dtype), w.to(dev, dtype),
                          b.to(dev, dtype), grad=g.to(dev, dtype))
            ref = fwd_bwd(lambda x, w, b: F.conv2d(x, w, b, 1, pad, 1, 2), x.double(), w.double(), b.double(),
                          grad=g.double())
            errs = [rel_err(a.float(), r) for a, r in zip(got, ref)]
            ok = max(errs) <= TOL[dtype]
            rep.add("parity", f"grouped_conv2d {name} {dtype}", "ok" if ok else "FAIL",
                    "max rel err y/dx/dw/db " + "/".join(f"{e:.1e}" for e in errs))
        # More groups than a CUDA grid's z dimension takes (65535): the kernels launch in slices.
        groups = 70000
        x, w, g = (t.to(dtype).double() for t in (torch.randn(1, groups, 4, 4), torch.randn(groups, 1, 3, 3),
                                                   torch.randn(1, groups, 4, 4)))
        got = fwd_bwd(lambda x, w: grouped_conv2d(x, w, None, 1, 1, groups), x.to(dev, dtype), w.to(dev, dtype),
                      grad=g.to(dev, dtype))
        ref = fwd_bwd(lambda x, w: F.conv2d(x, w, None, 1, 1, 1, groups), x.double(), w.double(), grad=g.double())
        errs = [rel_err(a.float(), r) for a, r in zip(got, ref)]
        ok = max(errs) <= TOL[dtype]
        rep.add("parity", f"grouped_conv2d depthwise {groups} groups {dtype}", "ok" if ok else "FAIL",
                "max rel err y/dx/dw " + "/".join(f"{e:.1e}" for e in errs))
        # conv1 at batch 16: a small filter bank over a long reduction (48,400 output pixels), whose
        # weight gradient the CUDA kernel sums in chunks (split-K) on a GPU; the input needs no grad.
        x, w, g = (t.to(dtype).double() for t in (torch.randn(16, 3, 227, 227), torch.randn(96, 3, 11, 11) * 0.05,
                                                   torch.randn(16, 96, 55, 55)))
        got = fwd_bwd(lambda w: grouped_conv2d(x.to(dev, dtype), w, None, 4, 0, 1), w.to(dev, dtype),
                      grad=g.to(dev, dtype))
        ref = fwd_bwd(lambda w: F.conv2d(x, w, None, 4), w, grad=g)
        errs = [rel_err(a.float(), r) for a, r in zip(got, ref)]
        ok = max(errs) <= TOL[dtype]
        rep.add("parity", f"grouped_conv2d conv1 b16 (split-K weight gradient) {dtype}", "ok" if ok else "FAIL",
                "max rel err y/dw " + "/".join(f"{e:.1e}" for e in errs))


def misuse(rep, dev):
    """A CUDA model given a CPU batch, or given a new head left on the CPU (the activations were
    copied to it, CPU logits returned), is refused by name (no CPU-only test can make one)."""
    model = alexnet_rs.AlexNet("paper", num_classes=10).to(dev)
    try:
        model(torch.randn(1, 3, 224, 224))
        ok, detail = False, "a CPU batch was accepted"
    except alexnet_rs.ShapeError as e:
        ok, detail = "x is on cpu but conv1.weight is on cuda:0" in str(e), str(e)
    rep.add("misuse", "a CPU batch for a CUDA model", "ok" if ok else "FAIL", detail=detail[-300:])
    model = alexnet_rs.AlexNet("torchvision", num_classes=10).to(dev)
    model.classifier[6] = torch.nn.Linear(4096, 10)
    try:
        model(torch.randn(1, 3, 224, 224, device=dev))
        ok, detail = False, "a CPU head was accepted"
    except alexnet_rs.ShapeError as e:
        want = "parameter `classifier.6.weight` is on cpu but the network's first layer is on cuda:0"
        ok, detail = want in str(e), str(e)
    rep.add("misuse", "a CPU head on a CUDA model", "ok" if ok else "FAIL", detail=detail[-300:])


def lrn_pool(rep, dev):
    """The fused relu -> LRN -> max-pool op (conv1's stage): values against the stock composition in
    float64 on the CPU, the input gradient against the composition's routed through the op's own
    maxima (near-ties may pick another element in low precision); indices outside the plane are
    refused before anything is written (in a subprocess: a missed one ends the CUDA context)."""
    op = torch.ops.alexnet_rs.relu_lrn_max_pool2d_with_indices
    args = (5, 1e-4, 0.75, 2.0, 3, 2, False)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = (torch.randn(4, 96, 27, 27) * 20).to(dtype).double()  # what the op sees, for the reference too
        g = torch.randn(4, 96, 13, 13).to(dtype).double()
        xd = x.to(dev, dtype).requires_grad_(True)
        y = torch.ops.alexnet_rs.relu_lrn_max_pool2d(xd, *args)
        y.backward(g.to(dev, dtype))
        idx = op(xd.detach(), *args)[1].cpu()
        xr = x.clone().requires_grad_(True)
        h = F.local_response_norm(F.relu(xr), 5, 1e-4, 0.75, 2.0)
        y_ref = F.max_pool2d(h, 3, 2)
        h.backward(torch.ops.aten.max_pool2d_with_indices_backward(g, h, [3, 3], [2, 2], [0, 0], [1, 1], False, idx))
        errs = [rel_err(y.detach().float(), y_ref), rel_err(xd.grad.float(), xr.grad)]
        ok = max(errs) <= TOL[dtype]
        rep.add("lrn_pool", f"relu_lrn_max_pool2d {dtype} {dev.type}", "ok" if ok else "FAIL",
                f"max rel err y {errs[0]:.2e} dx {errs[1]:.2e}")
    script = f"""
import torch, alexnet_rs
x = torch.randn(1, 3, 5, 5, device="{dev}")
for bad in (100000000, 25, -1):
    try:
        torch.ops.alexnet_rs.relu_lrn_max_pool2d_backward(torch.randn(1, 3, 2, 2, device=x.device), x,
            torch.full((1, 3, 2, 2), bad, dtype=torch.long, device=x.device), 3, 0.5, 0.75, 1.0, 3, 2, False)
        print("accepted", bad)
    except ValueError as e:
        print("refused", bad, "must index the 5x5 plane" in str(e))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=budget(300))
    ok = r.returncode == 0 and r.stdout.split("\n")[:3] == [f"refused {b} True" for b in (100000000, 25, -1)]
    rep.add("lrn_pool", f"backward indices outside the plane refused on {dev.type}", "ok" if ok else "FAIL",
            detail="" if ok else (r.stdout + r.stderr)[-300:])


def gradcheck_opcheck(rep, dev):
    x = (torch.randn(2, 6, 4, 4, dtype=torch.float64, device=dev) * 3).requires_grad_(True)
    ok = torch.autograd.gradcheck(lambda t: lrn(t, 3, 0.5, 0.75, 1.0), (x,))
    rep.add("gradcheck", f"lrn float64 {dev}", "ok" if ok else "FAIL")
    xc = torch.randn(2, 4, 6, 6, dtype=torch.float64, device=dev, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, dtype=torch.float64, device=dev, requires_grad=True)
    bc = torch.randn(6, dtype=torch.float64, device=dev, requires_grad=True)
    ok = torch.autograd.gradcheck(lambda x, w, b: grouped_conv2d(x, w, b, 2, 1, 2), (xc, wc, bc))
    rep.add("gradcheck", f"grouped_conv2d float64 {dev}", "ok" if ok else "FAIL")
    xo = torch.randn(2, 6, 5, 5, device=dev, requires_grad=True)
    torch.library.opcheck(torch.ops.alexnet_rs.lrn.default, (xo, 5, 1e-4, 0.75, 2.0))
    rep.add("opcheck", f"lrn {dev}", "ok")
    wo = torch.randn(6, 3, 3, 3, device=dev, requires_grad=True)
    torch.library.opcheck(torch.ops.alexnet_rs.grouped_conv2d.default, (xo, wo, None, [1, 1], [1, 1], 2))
    rep.add("opcheck", f"grouped_conv2d {dev}", "ok")


SANITIZER_CASE = """
import torch, alexnet_rs
from alexnet_rs.ops import lrn, grouped_conv2d
for dt in (torch.float32, torch.bfloat16):
    x = torch.randn(2, 8, 7, 7, device='cuda', dtype=dt, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, device='cuda', dtype=dt, requires_grad=True)
    (lrn(grouped_conv2d(x, w, None, 1, 1, 2), 5, 1e-4, 0.75, 2.0)).sum().backward()
torch.cuda.synchronize()
"""


def sanitizer(rep, _dev):
    """memcheck (out-of-bounds and misaligned accesses) and racecheck (shared-memory hazards: a
    missing barrier in the tiled and WMMA kernels) over a small case, float32 and bfloat16."""
    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None)
    name = "lrn + grouped_conv2d fwd/bwd (small, float32 and bfloat16)"
    if tool is None:
        rep.add("sanitizer", name, "skipped", detail="compute-sanitizer is not installed here")
        return
    # Without torch's caching allocator every tensor is an allocation of its own: an access past
    # one is flagged (inside a cached 2 MiB block it lands in a neighbour, unseen).
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    for check in ("memcheck", "racecheck"):
        cmd = [tool, "--tool", check, "--error-exitcode", "3", sys.executable, "-c", SANITIZER_CASE]
        # A session of its own: a timeout ends the tool and the Python under it (left running, it
        # would hold the GPU during the benchmarks).
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=budget(240))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise
        p = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        text = p.stdout + p.stderr
        summary = [ln.strip("= ") for ln in text.splitlines() if "SUMMARY" in ln]
        if p.returncode == 0 or p.returncode == 3 or summary:
            rep.add(check, name, "ok" if p.returncode == 0 else "FAIL", summary[-1] if summary else f"exit {p.returncode}",
                    "" if p.returncode == 0 else text[-300:])
        else:  # no summary: the tool did not run the case (gVisor: "Device not supported")
            rep.add(check, name, "skipped", f"exit {p.returncode}", "the sanitizer could not run here: " + text[-200:])


# ---- benchmarks ----

def bench_lrn(rep, dev, batch):
    x0 = torch.empty((64 if dev.type == "cuda" else 8) << 20, device=dev)
    t_copy = timed(lambda: x0.clone(), dev)
    bw = 2 * x0.numel() * 4 / t_copy  # bytes/s, read + write
    rep.add("bench", "copy bandwidth", "info", f"{bw / 1e9:.0f} GB/s")
    # (CPU's F.local_response_norm has no bfloat16 avg_pool3d.)
    for dtype in (torch.float32, torch.bfloat16) if dev.type == "cuda" else (torch.float32,):
        for name, chw in (("conv1 96x55x55", (96, 55, 55)), ("conv2 256x27x27", (256, 27, 27))):
            x = (torch.randn(batch, *chw, device=dev).relu() * 40).to(dtype)
            g = torch.randn_like(x)
            t_ours = timed(lambda: fwd_bwd(lambda t: lrn(t, **LRN), x, grad=g), dev)
            t_ref = timed(lambda: fwd_bwd(lambda t: F.local_response_norm(t, 5, 1e-4, 0.75, 2.0), x, grad=g), dev)
            # The kernels alone (no autograd): the forward and backward ops called directly.
            ops = torch.ops.alexnet_rs
            with torch.no_grad():
                t_kernels = timed(lambda: (ops.lrn(x, 5, 1e-4, 0.75, 2.0), ops.lrn_backward(g, x, 5, 1e-4, 0.75, 2.0)),
                                  dev)
            # The floor: fwd reads x, writes y; bwd reads x, dy, writes dx (HBM only; on a CPU the
            # copy timing includes page faults and means little).
            floor = 5 * x.numel() * x.element_size() / bw
            vs_floor = f", kernels alone {t_kernels / floor:.2f}x the bandwidth floor" if dev.type == "cuda" else ""
            rep.add("bench", f"lrn fwd+bwd {name} b{batch} {dtype}", "info",
                    f"ours {t_ours * 1e3:.2f} ms (kernels alone {t_kernels * 1e3:.2f}), F.local_response_norm "
                    f"{t_ref * 1e3:.2f} ms, speed-up {t_ref / t_ours:.1f}x{vs_floor}")


def bench_conv(rep, dev, batch):
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        for dtype in (torch.float32, torch.bfloat16):
            # float32 against float32: cuDNN would otherwise multiply in TF32 (its default), which
            # our kernels do not.
            torch.backends.cudnn.allow_tf32 = tf32 and dtype != torch.float32
            bench_conv_shapes(rep, dev, batch, dtype)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def bench_conv_shapes(rep, dev, batch, dtype):
    for name, xs, ws, pad in CONV_SHAPES:
        x = torch.randn(batch, *xs, device=dev, dtype=dtype)
        w = torch.randn(*ws, device=dev, dtype=dtype) * 0.05
        b = torch.zeros(ws[0], device=dev, dtype=dtype)
        t_ours = timed(lambda: fwd_bwd(lambda x, w, b: grouped_conv2d(x, w, b, 1, pad, 2), x, w, b), dev, 10)
        t_ref = timed(lambda: fwd_bwd(lambda x, w, b: F.conv2d(x, w, b, 1, pad, 1, 2), x, w, b), dev, 10)
        # On the CPU our op calls ATen's convolution: the two sides are one computation, and
        # the ratio is the op's overhead, not a comparison of kernels.
        same = "" if dev.type == "cuda" else " (both ATen's convolution on the CPU: the op's overhead alone)"
        rep.add("bench", f"grouped conv fwd+bwd {name} b{batch} {dtype}", "info",
                f"ours {t_ours * 1e3:.2f} ms, F.conv2d {t_ref * 1e3:.2f} ms, ours/stock speed {t_ref / t_ours:.2f}x"
                f"{same}")


def bench_train(rep, dev, batch, dtype):
    ref = reference_model("paper").to(dev, dtype)
    params = dict(ref.named_parameters())
    x = torch.randn(batch, 3, 224, 224, device=dev, dtype=dtype)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)

    def step(forward):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x).float(), y).backward()
        opt.step()

    variants = {
        "alexnet_rs (Rust forward, auto convs)": lambda t: alexnet_rs._native.forward("paper", params, t, True),
        "PyTorch eager": ref,
    }
    if dev.type == "cuda":  # (on the CPU our convolution is ATen's, as auto's: one computation twice)
        variants["alexnet_rs (Rust forward, ours convs)"] = lambda t: alexnet_rs._native.forward(
            "paper", params, t, True, conv_backend="ours")
        variants["torch.compile (eager net)"] = torch.compile(ref)
    for name, fwd in variants.items():
        t = timed(lambda: step(fwd), dev, 5)
        rep.add("bench", f"paper train step b{batch} {dtype}: {name}", "info", f"{batch / t:.0f} images/s")


def synthetic_images(root: Path) -> Path:
    """A small image folder (train/ and val/, two classes of 32x32 PPM images that differ): the
    GPU machine has no dataset and no network."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 32), ("val", 8)):
        for c in range(2):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                px = (torch.randint(0, 128, (32, 32, 3), generator=g) + 100 * c).to(torch.uint8)
                (d / f"{i}.ppm").write_bytes(b"P6 32 32 255\n" + px.numpy().tobytes())
    return root


# Loss tolerances between the one- and two-device placements (the same function; the two-device
# path gathers activations and sums in another order): float32 to rounding, bfloat16 autocast to
# its 8-bit mantissa over a few steps. The stock convolutions are cuDNN's, in TF32 by default
# (10-bit mantissa) with algorithms chosen per shape, and the two-device path has other shapes.
CLI_TOL = {("float32", "ours"): 1e-4, ("float32", "stock"): 2e-3, ("bf16", "ours"): 5e-2, ("bf16", "stock"): 5e-2}


def cli_train(rep, dev, work: Path):
    """The `alexnet` CLI from the installed wheel (`python -m alexnet_rs`, the console script's
    code): a few training steps of `paper` on one device and on the two-device path over the same
    device, with --bf16 and --channels-last, conv backends ours and stock; then eval and predict."""
    shutil.rmtree(work, ignore_errors=True)  # fresh runs: a run folder holds one run
    data = synthetic_images(work / "data")
    one, two = ("cuda:0", "cuda:0,cuda:0") if dev.type == "cuda" else ("cpu", "cpu,cpu")

    def alexnet(*args):
        r = subprocess.run([sys.executable, "-m", "alexnet_rs", *map(str, args)], capture_output=True, text=True,
                           timeout=budget(300))
        if r.returncode != 0:
            raise RuntimeError(f"alexnet {' '.join(map(str, args))}: {r.stderr.strip()[-500:]}")
        return r

    def losses(run):
        return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]

    kept = work / "run-float32-plain-ours-1dev"  # for eval and predict
    for flags, kind in (([], "float32"), (["--bf16"], "bf16"), (["--channels-last"], "float32")):
        for backend in ("ours", "stock"):
            name = f"paper {' '.join(flags) or 'float32'} --conv-backend {backend}: {one} vs {two}"
            runs = {}
            try:  # one failing combination is reported, the others still run
                for devices in (one, two):
                    run = work / f"run-{kind}-{'-'.join(flags) or 'plain'}-{backend}-{devices.count(',') + 1}dev"
                    alexnet("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--batch-size", "8",
                            "--max-steps", "3", "--threads", "2", "--data", data, "--devices", devices,
                            "--conv-backend", backend, "--out", run, *flags)
                    runs[devices] = losses(run)
                    if run != kept:
                        shutil.rmtree(run)  # its checkpoint is ~150 MB
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                rep.add("cli train", name, "FAIL", detail=str(e)[-300:])
                continue
            a, b = runs[one], runs[two]
            finite = all(map(math.isfinite, a + b))
            diff = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
            tol = CLI_TOL[kind, backend]
            ok = finite and len(a) == len(b) == 3 and diff <= tol
            rep.add("cli train", name, "ok" if ok else "FAIL", f"max rel loss diff {diff:.2e} (tol {tol:g})",
                    f"losses {a}")
    r = alexnet("eval", kept, "--devices", one, "--batch-size", "8")
    rep.add("cli eval", f"on {one}", "ok", r.stdout.strip())
    r = alexnet("predict", kept, next((data / "val" / "class1").iterdir()), "--devices", one)
    rep.add("cli predict", f"on {one}", "ok", r.stdout.strip().splitlines()[1].strip())


def write_reports(out: Path, rep: Report, meta: dict):
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(dict(meta=meta, rows=rep.rows), indent=1))
    lines = [f"# gpu-check {meta['date']}: {meta['device']}, torch {meta['torch']}, build {meta['build']}, "
             f"{meta['seconds']} s", "", "| part | check | status | result |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['name']} | {r['status']} | {r['value']} {r['detail']} |" for r in rep.rows]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main():
    global DEADLINE
    ap = argparse.ArgumentParser(description="alexnet_rs GPU checks")
    ap.add_argument("--cpu", action="store_true", help="run only what needs no GPU, on the CPU, small sizes")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds after which no part starts (the rest are listed as skipped) [default: 480 on a "
                         "GPU, for the device machine's command limit; none with --cpu]")
    ap.add_argument("--build", default=os.environ.get("ALEXNET_BUILD", "unknown"),
                    help="the commit the wheel was built from (scripts/gpu-check reads dist/BUILD)")
    args = ap.parse_args()
    rep = Report()
    has_gpu = torch.cuda.is_available() and not args.cpu
    if not args.cpu and not has_gpu:
        sys.exit("gpu-check: torch sees no CUDA device (use --cpu on a CPU-only machine)")
    dev = torch.device("cuda" if has_gpu else "cpu")
    print(f"alexnet_rs {alexnet_rs.__version__} ({args.build}), torch {torch.__version__}, device "
          f"{torch.cuda.get_device_name() if has_gpu else 'cpu'}", flush=True)
    t0 = time.time()
    if args.deadline is None:
        args.deadline = math.inf if args.cpu else 480
    DEADLINE = t0 + args.deadline
    out, scratch = Path(args.out), Path(tempfile.mkdtemp(prefix="gpu-check-"))
    meta = dict(device=torch.cuda.get_device_name() if has_gpu else "cpu", torch=torch.__version__,
                alexnet_rs=alexnet_rs.__version__, build=args.build, date=time.strftime("%Y-%m-%d"), seconds=0)
    batch = 128 if has_gpu else 2
    # (part, what it runs, needs a GPU, runs in this process): the checks first, then the benchmarks.
    parts = [
        ("parity", lambda: parity(rep, dev), False, True),
        ("lrn_pool", lambda: lrn_pool(rep, dev), False, True),
        ("gradcheck/opcheck", lambda: gradcheck_opcheck(rep, dev), False, True),
        ("misuse", lambda: misuse(rep, dev), True, True),
        ("sanitizer", lambda: sanitizer(rep, dev), True, False),
        ("cli", lambda: cli_train(rep, dev, scratch / "cli"), False, False),
        ("bench lrn", lambda: bench_lrn(rep, dev, batch), False, True),
        ("bench conv", lambda: bench_conv(rep, dev, batch), False, True),
        ("bench train", lambda: bench_train(rep, dev, batch, torch.bfloat16 if has_gpu else torch.float32), False,
         True),
    ]
    try:
        for part, fn, gpu_only, in_process in parts:
            if gpu_only and not has_gpu:
                rep.add(part, "needs a GPU", "skipped")
            elif time.time() > DEADLINE:
                rep.add(part, f"not started: past --deadline {args.deadline:g} s", "skipped")
            elif in_process and has_gpu and rep.cuda_broken:
                rep.add(part, "not started: an earlier CUDA error left this process's context unusable", "skipped")
            else:
                rep.run(part, fn)
            meta["seconds"] = round(time.time() - t0)
            write_reports(out, rep, meta)  # after every part: a run stopped from outside keeps them
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"wrote {out / 'report.md'} and report.json; {len(rep.failed())} failed", flush=True)
    sys.exit(1 if rep.failed() else 0)


if __name__ == "__main__":
    main()
