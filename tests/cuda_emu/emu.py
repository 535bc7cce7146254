"""Our CUDA kernels (kernels/*.cu) built for the host against the CUDA emulation in kernels/emu/,
loaded with ctypes, and checked against independent references (F.local_response_norm,
F.conv2d and their autograd gradients, in float64).

    python tests/cuda_emu/emu.py [--sanitize] [--jobs 2] [--quick]

prints one line per failing case and, last, one JSON summary line
(`{"cases": N, "failures": 0, ...}`); exits 1 on any failure. `make cuda-emu` runs it twice:
plain, and under AddressSanitizer + UndefinedBehaviorSanitizer.

Every case runs under two thread schedules (forward and reversed order within a block); the two
results must be bit-identical (our kernels are deterministic: no atomics), and each must be
within the dtype's tolerance of the reference. Outputs start as NaN, so an element the kernel
never writes fails.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"
EMU = KERNELS / "emu"
HERE = Path(__file__).resolve().parent
KERNEL_SOURCES = ("lrn.cu", "grouped_conv.cu")
# The LRN launcher's grid cap in the emulated build: 40 blocks of 256 threads cover 10,240
# elements per grid-stride sweep, so the sweep's larger cases take several sweeps.
LRN_MAX_BLOCKS = 40
LRN_SWEEP = LRN_MAX_BLOCKS * 256
# The convolution launcher's cap on grid y (row tiles) and z (groups), 65535 on a GPU: 2 here, so
# that shapes of more than two groups or 128 output rows launch in slices.
CONV_MAX_GRID_YZ = 2
# Split-K of the weight gradient: about 1024 blocks, chunks of at least 4096 on a GPU; here 24
# and 32, so that small shapes split (conv1 into 2 chunks, edge shapes up to 24, last chunks short).
CONV_SPLIT_BLOCKS, CONV_SPLIT_MIN_K = 24, 32
SCHEDULES = (0, 1)  # forward, reversed (2, a fixed shuffle, is used by the self-tests)
SANITIZE_FLAGS = ["-O2", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]

# ---------------------------------------------------------------------------------------------
# Build


def _sources_digest(mutations, sanitize: bool) -> str:
    h = hashlib.sha256()
    for p in sorted(EMU.glob("*")) + sorted(KERNELS.glob("*.cu*")) + [KERNELS / "cuda_api.h", HERE / "selftest.cu"]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(repr((mutations, sanitize, LRN_MAX_BLOCKS, CONV_MAX_GRID_YZ, CONV_SPLIT_BLOCKS, CONV_SPLIT_MIN_K)).encode())
    return h.hexdigest()[:16]


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}\n{r.stdout}{r.stderr}")
    return r


def _gather_shared(obj: Path) -> None:
    """Moves the object's .bss (only `__shared__` statics in a kernel file) into the section the
    emulator poisons before each block, after checking that nothing else lives there."""
    sections = sorted(set(re.findall(r"\]\s+(\.bss\S*)", _run(["readelf", "-SW", obj]).stdout)))
    symbols = _run(["nm", obj]).stdout.splitlines()
    for line in symbols:
        parts = line.split()
        if len(parts) == 3 and parts[1] in "bBdD" and not parts[2].startswith("_ZZ"):
            raise RuntimeError(f"{obj.name}: static storage `{parts[2]}` that is not a __shared__ variable")
        if len(parts) == 3 and parts[2].startswith("_ZGV"):
            raise RuntimeError(f"{obj.name}: `{parts[2]}`: a __shared__ variable with dynamic initialisation")
    args = []
    for s in sections:
        args += ["--rename-section", f"{s}=cuda_emu_shared,alloc"]
    if args:
        _run(["objcopy", *args, obj, obj])


def build(sanitize: bool = False, mutations: tuple = (), out_root: Path | None = None) -> Path:
    """Builds (or reuses) the emulated kernels as a shared library and returns its path.

    `mutations`: (file, old, new) text replacements applied to kernel sources first (planted
    bugs); each `old` must occur exactly once."""
    out_root = out_root or ROOT / "target" / "cuda-emu"
    out = out_root / _sources_digest(mutations, sanitize)
    lib = out / "libcuda_emu.so"
    if lib.exists():
        return lib
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "src").mkdir(parents=True)
    kernel_files = []
    for name in KERNEL_SOURCES:
        text = (KERNELS / name).read_text()
        for file, old, new in mutations:
            if file == name:
                if text.count(old) != 1:
                    raise ValueError(f"mutation of {name}: {old!r} occurs {text.count(old)} times, not once")
                text = text.replace(old, new)
        (tmp / "src" / name).write_text(text)
        kernel_files.append(tmp / "src" / name)
    cxx = os.environ.get("CXX", "g++")
    common = ["-std=c++17", "-fPIC", "-g0", "-I", str(EMU), "-I", str(KERNELS), f"-DALEXNET_LRN_MAX_BLOCKS={LRN_MAX_BLOCKS}",
              f"-DALEXNET_CONV_MAX_GRID_YZ={CONV_MAX_GRID_YZ}", f"-DALEXNET_CONV_SPLIT_BLOCKS={CONV_SPLIT_BLOCKS}",
              f"-DALEXNET_CONV_SPLIT_MIN_K={CONV_SPLIT_MIN_K}"]
    common += SANITIZE_FLAGS if sanitize else ["-O2"]
    if "f16c" in Path("/proc/cpuinfo").read_text():
        common.append("-mf16c")  # hardware half <-> float conversions (the same IEEE rounding)
    # Uninitialised locals get a fixed garbage pattern instead of whatever the stack held.
    kernel_flags = ["-x", "c++", "-ftrivial-auto-var-init=pattern"]
    jobs = [([cxx, *common, *kernel_flags, "-c", f, "-o", tmp / (f.stem + ".o")], tmp / (f.stem + ".o"), True)
            for f in [*kernel_files, HERE / "selftest.cu"]]
    jobs.append(([cxx, *common, "-c", EMU / "emu.cpp", "-o", tmp / "emu.o"], tmp / "emu.o", False))
    procs = []
    for cmd, obj, is_kernel in jobs:  # two at a time (the machines have two cores)
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), cmd, obj,
                      is_kernel))
        if len(procs) >= 2:
            _finish(procs.pop(0))
    while procs:
        _finish(procs.pop(0))
    # -Bsymbolic: our cudaGetLastError & co. must win over libcudart's, which torch has loaded.
    link = [cxx, "-shared", "-Wl,-Bsymbolic", *(SANITIZE_FLAGS if sanitize else []), *[o for _, o, _ in jobs], "-o",
            tmp / lib.name]
    _run(link)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return lib


def _finish(job):
    p, cmd, obj, is_kernel = job
    text, _ = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}\n{text}")
    if is_kernel:
        _gather_shared(obj)


def asan_runtime() -> str:
    return subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# ctypes bindings of the C interface (kernels/cuda_api.h) and the emulator controls

DTYPE_CODE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}


class LrnShape(ctypes.Structure):
    _fields_ = [("N", ctypes.c_int64), ("C", ctypes.c_int64), ("S", ctypes.c_int64), ("channels_last", ctypes.c_int)]


class ConvShape(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in "N Cin H W Cout KH KW OH OW SH SW PH PW".split()] + [
        ("groups", ctypes.c_int)
    ]


class Emu:
    def __init__(self, path: Path):
        self.lib = lib = ctypes.CDLL(str(path))
        p, d, i64, i32 = ctypes.c_void_p, ctypes.c_double, ctypes.c_int64, ctypes.c_int
        sig = {
            "alexnet_rs_lrn_cuda_forward": [i32, p, p, LrnShape, i64, d, d, d, p],
            "alexnet_rs_lrn_cuda_backward": [i32, p, p, p, LrnShape, i64, d, d, d, p],
            "alexnet_rs_conv_cuda_forward": [i32, p, p, p, p, ConvShape, p],
            "alexnet_rs_conv_cuda_backward_data": [i32, p, p, p, ConvShape, p],
            "alexnet_rs_conv_cuda_backward_weight": [i32, p, p, p, p, ConvShape, p],
        }
        for name, args in sig.items():
            f = getattr(lib, name)
            f.argtypes, f.restype = args, ctypes.c_char_p
        lib.alexnet_rs_conv_cuda_backward_weight_workspace.argtypes = [i32, ConvShape]
        lib.alexnet_rs_conv_cuda_backward_weight_workspace.restype = i64
        lib.cuda_emu_set_schedule.argtypes = [i32]
        lib.cuda_emu_last_fault.restype = ctypes.c_char_p
        lib.cuda_emu_counters.argtypes = [ctypes.POINTER(ctypes.c_uint64)]

    def call(self, name: str, schedule: int, *args) -> str | None:
        """Calls an entry point under `schedule`; returns None or the error (with the fault's detail)."""
        self.lib.cuda_emu_clear_fault()
        self.lib.cuda_emu_set_schedule(schedule)
        err = getattr(self.lib, name)(*args)
        if err is None:
            return None
        detail = self.lib.cuda_emu_last_fault().decode()
        return err.decode() + (f" ({detail})" if detail else "")

    def counters(self) -> list[int]:
        out = (ctypes.c_uint64 * 4)()
        self.lib.cuda_emu_counters(out)
        return list(out)


# ---------------------------------------------------------------------------------------------
# Tolerances. A result passes where |got - ref| <= tol elementwise, with
#   tol = c * u_acc * scale + u_out * |ref| + tiny_out
# - u_acc: unit roundoff of the accumulation type (2^-24 for float32/float16/bfloat16, which
#   accumulate in float; 2^-53 for float64);
# - scale: the sum of the magnitudes of every term that enters the result (for a convolution
#   conv(|x|, |w|) + |b|; for LRN the magnitudes of the two terms of its gradient), computed in
#   float64. Rounding errors of a sum are bounded by multiples of u_acc * scale, whatever the
#   cancellation in the result itself;
# - c: for a convolution 4 sqrt(K) + 8 for K accumulated products: rounding errors of a long
#   float sum grow like sqrt(K) (a worst-case K would hide a dropped term at large K), plus the
#   bias add; for LRN 32 (forward: a window sum of at most 7 squares, a square root or pow, two
#   products) and 64 (backward: up to 7 such terms summed);
# - u_out |ref| + tiny_out: the final rounding to the storage dtype (half an ulp: 2^-11 float16,
#   2^-8 bfloat16, 2^-24 float32, 2^-53 float64) and half its smallest subnormal.
# Operand rounding needs no term: the reference is computed from the very values (already in
# the storage dtype) the kernel reads, and products of two 16-bit floats are exact in float.
U = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11, "bfloat16": 2.0**-8}
U_ACC = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-24, "bfloat16": 2.0**-24}
TINY = {"float32": 2.0**-150, "float64": 0.0, "float16": 2.0**-25, "bfloat16": 2.0**-134}


@dataclass
class Outcome:
    name: str
    ok: bool
    detail: str = ""
    worst: float = 0.0  # max |got - ref| / tol over the elements
    split_k: bool = False  # a weight gradient summed over split-K chunks (a workspace was used)


def _bits(t):
    import torch

    view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.contiguous().view(view[t.dtype])


def _judge(name, dtype, got_by_schedule, errors, ref, tol):
    import torch

    if any(errors):
        return Outcome(name, False, "kernel error: " + next(e for e in errors if e))
    got = got_by_schedule[0]
    for s, other in enumerate(got_by_schedule[1:], 1):
        if not torch.equal(_bits(got), _bits(other)):
            n = int((_bits(got) != _bits(other)).sum())
            return Outcome(name, False, f"schedules 0 and {s} disagree in {n} elements (a race or missing barrier)")
    ref, tol = ref.detach(), tol.detach()
    diff = (got.double() - ref).abs()
    bad = ~(diff <= tol)  # NaN counts as bad
    worst = float((diff / tol.clamp_min(1e-300)).nan_to_num(float("inf")).max()) if diff.numel() else 0.0
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return Outcome(
            name,
            False,
            f"{int(bad.sum())}/{bad.numel()} elements out of tolerance; first at {idx}: "
            f"got {float(got.double()[idx])!r}, reference {float(ref[idx])!r}, tol {float(tol[idx]):.3g}",
            worst,
        )
    return Outcome(name, True, worst=worst)


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


# ---------------------------------------------------------------------------------------------
# LRN


def lrn_cases():
    """C in {1,2,3,5,96,257}, window sizes 1..7, both layouts, all four dtypes; half the cases fit
    in one grid-stride sweep and half need several."""
    cases = []
    # The last: beta = 0 (the identity) with k = 0, on inputs with all-zero windows (run_lrn).
    params = [(1e-4, 0.75, 2.0), (0.02, 0.75, 1.0), (1.0, 0.5, 2.0), (0.3, 1.25, 0.5), (0.1, 0.0, 0.0)]
    for C in (1, 2, 3, 5, 96, 257):
        for size in range(1, 8):
            for cl in (False, True):
                for dtype in DTYPE_CODE:
                    i = len(cases)
                    above = (size + cl) % 2 == 1
                    N = 1 if C == 257 else 2
                    # smallest square spatial size past one sweep, or the largest within it
                    side = math.isqrt(LRN_SWEEP // (N * C))
                    side = side + 1 if above else max(1, min(side, 9))
                    alpha, beta, k = params[i % len(params)]
                    sweeps = -(-(N * C * side * side) // LRN_SWEEP)
                    assert (sweeps > 1) == above
                    cases.append(dict(kind="lrn", dtype=dtype, N=N, C=C, H=side, W=side, size=size, alpha=alpha,
                                      beta=beta, k=k, cl=cl, seed=i, sweeps=sweeps))
    return cases


def _lrn_scale_backward(x, dy, size, alpha, beta, k):
    """Magnitudes of the two terms of the LRN gradient, elementwise (float64, (N, C, S))."""
    import torch
    import torch.nn.functional as F

    pre, post = size // 2, (size - 1) // 2
    an = alpha / size
    d = k + an * F.pad(x * x, (0, 0, pre, post)).unfold(1, size, 1).sum(-1)
    p = d.pow(-beta)
    t = torch.where(d > 0, (dy * x).abs() * p / d, 0)  # the term is 0 where d = 0 (beta = 0)
    win = F.pad(t, (0, 0, post, pre)).unfold(1, size, 1).sum(-1)  # channels whose window holds j
    return dy.abs() * p + 2 * an * beta * x.abs() * win


def run_lrn(emu: Emu, c: dict) -> list[Outcome]:
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, c["dtype"])
    g = torch.Generator().manual_seed(c["seed"])
    shape = (c["N"], c["C"], c["H"], c["W"])
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dt)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dt)
    if c["k"] == 0:  # windows of zeros: d = 0 there
        x[:, : (c["C"] + 1) // 2] = 0
    fmt = torch.channels_last if c["cl"] else torch.contiguous_format
    x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
    size, alpha, beta, k = c["size"], c["alpha"], c["beta"], c["k"]
    x64 = x.double().requires_grad_()
    y64 = F.local_response_norm(x64, size, alpha, beta, k)
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    y64 = y64.detach()
    sh = LrnShape(c["N"], c["C"], c["H"] * c["W"], int(c["cl"]))
    code = DTYPE_CODE[c["dtype"]]
    name = (f"lrn {c['dtype']} N{c['N']} C{c['C']} {c['H']}x{c['W']} size{size} "
            f"{'channels_last' if c['cl'] else 'contiguous'} ({c['sweeps']} sweep{'s' * (c['sweeps'] > 1)})")
    ys, dxs, errs_f, errs_b = [], [], [], []
    for s in SCHEDULES:
        y = torch.full_like(x, float("nan"))
        errs_f.append(emu.call("alexnet_rs_lrn_cuda_forward", s, code, _ptr(x), _ptr(y), sh, size, alpha, beta, k, None))
        ys.append(y)
        dx = torch.full_like(x, float("nan"))
        errs_b.append(emu.call("alexnet_rs_lrn_cuda_backward", s, code, _ptr(dy), _ptr(x), _ptr(dx), sh, size, alpha, beta,
                               k, None))
        dxs.append(dx)
    dtn = c["dtype"]
    tol_f = 32 * U_ACC[dtn] * y64.abs() + U[dtn] * y64.abs() + TINY[dtn]
    xs, dys = x.double().flatten(2), dy.double().flatten(2)
    scale_b = _lrn_scale_backward(xs, dys, size, alpha, beta, k).view(shape)
    tol_b = 64 * U_ACC[dtn] * scale_b + U[dtn] * dx64.abs() + TINY[dtn]
    return [_judge(name + " forward", dtn, ys, errs_f, y64, tol_f), _judge(name + " backward", dtn, dxs, errs_b, dx64, tol_b)]


# ---------------------------------------------------------------------------------------------
# Grouped convolution

# Every convolution of the three presets at batch 2: (Cin, H, Cout, kernel, stride, pad, groups).
# tests/python/test_cuda_emu.py checks this list against alexnet_rs's own layer table.
ALEXNET_LAYERS = {
    "paper": [(3, 224, 96, 11, 4, 2, 1), (96, 27, 256, 5, 1, 2, 2), (256, 13, 384, 3, 1, 1, 1),
              (384, 13, 384, 3, 1, 1, 2), (384, 13, 256, 3, 1, 1, 2)],
    "torchvision": [(3, 224, 64, 11, 4, 2, 1), (64, 27, 192, 5, 1, 2, 1), (192, 13, 384, 3, 1, 1, 1),
                    (384, 13, 256, 3, 1, 1, 1), (256, 13, 256, 3, 1, 1, 1)],
    "caffe": [(3, 227, 96, 11, 4, 0, 1), (96, 27, 256, 5, 1, 2, 2), (256, 13, 384, 3, 1, 1, 1),
              (384, 13, 384, 3, 1, 1, 2), (384, 13, 256, 3, 1, 1, 2)],
}


PASSES = ("forward", "backward-data", "backward-weight")


def conv_shapes(quick: bool = False):
    """(tag, N, Cin, H, W, Cout, kernel, stride, pad, groups, passes): small shapes that cover the
    edges (groups 1-4; channel counts off the 64x64 tile; K off the 16-step; strides 1-4; padding
    0-3; kernels 1, 3, 5, 11; batch 1-3; outputs down to 1x1), then every distinct AlexNet layer
    at batch 2, all three passes.

    One exception: conv1's backward-data at 224 (M = 3 input channels in 64-row tiles, K = 11,616)
    is ~1.2 million emulated block-steps, an hour of CPU per dtype, and training never computes
    it (images need no gradient). It runs at conv1's channels, kernel, stride and padding on a
    35x35 input, batch 1."""
    import random

    rnd = random.Random(2012)
    shapes = []
    for i in range(40):
        groups = (1, 2, 3, 4)[i % 4]
        kernel = (1, 3, 5, 11)[(i // 4) % 4]
        stride = 1 + (i // 2) % 4
        pad = (i + i // 4) % 4
        batch = 1 + i % 3
        cin = groups * rnd.choice((1, 2, 3, 5, 7, 13))
        cout = groups * rnd.choice((1, 3, 6, 17, 65, 70) if i % 5 else (67,))
        lo = max(1, kernel - 2 * pad)
        h = lo if i % 6 == 0 else lo + rnd.randrange(0, 12)  # i % 6 == 0: a 1x1 output
        w = lo + rnd.randrange(0, 12) if i % 6 == 3 else h
        shapes.append(("edge", batch, cin, h, w, cout, kernel, stride, pad, groups, PASSES))
    seen = set()
    for preset, layers in ALEXNET_LAYERS.items():
        for cin, hw, cout, kernel, stride, pad, groups in layers:
            if (cin, hw, cout, kernel, stride, pad, groups) in seen:
                continue
            seen.add((cin, hw, cout, kernel, stride, pad, groups))
            layer = layers.index((cin, hw, cout, kernel, stride, pad, groups)) + 1
            if layer == 1:
                shapes.append((f"{preset} L1", 2, cin, hw, hw, cout, kernel, stride, pad, groups,
                               ("forward", "backward-weight")))
                shapes.append((f"{preset} L1 at 35x35", 1, cin, 35, 35, cout, kernel, stride, pad, groups,
                               ("backward-data",)))
            else:
                shapes.append((f"{preset} L{layer}", 2, cin, hw, hw, cout, kernel, stride, pad, groups, PASSES))
    if quick:
        shapes = [s for s in shapes if s[0] == "edge"]
    return shapes


def conv_cases(quick: bool = False):
    return [dict(kind="conv", dtype=dt, shape=s, seed=i * 4 + j)
            for i, s in enumerate(conv_shapes(quick)) for j, dt in enumerate(DTYPE_CODE)]


def run_conv(emu: Emu, c: dict) -> list[Outcome]:
    import torch
    import torch.nn.functional as F

    tag, N, Cin, H, W, Cout, Kk, S, P, G, which = c["shape"]
    dtn = c["dtype"]
    dt = getattr(torch, dtn)
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(N, Cin, H, W, generator=g, dtype=torch.float64).to(dt)
    w = (torch.randn(Cout, Cin // G, Kk, Kk, generator=g, dtype=torch.float64) / 2).to(dt)
    b = torch.randn(Cout, generator=g, dtype=torch.float64).to(dt)
    OH, OW = (H + 2 * P - Kk) // S + 1, (W + 2 * P - Kk) // S + 1
    dy = torch.randn(N, Cout, OH, OW, generator=g, dtype=torch.float64).to(dt)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = F.conv2d(x64, w64, b.double(), S, P, 1, G)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    # Magnitude of every term of each sum: the same computation on absolute values.
    xa, wa = x.double().abs().requires_grad_(), w.double().abs().requires_grad_()
    ya = F.conv2d(xa, wa, b.double().abs(), S, P, 1, G)
    dxa, dwa = torch.autograd.grad(ya, (xa, wa), dy.double().abs())
    sh = ConvShape(N, Cin, H, W, Cout, Kk, Kk, OH, OW, S, S, P, P, G)
    code = DTYPE_CODE[dtn]
    name = f"conv {dtn} {tag}: N{N} {Cin}x{H}x{W} -> {Cout}x{OH}x{OW} k{Kk} s{S} p{P} g{G}"
    # The weight gradient's split-K workspace, as the glue allocates it; fresh NaN bytes for each
    # call, so that a partial sum the kernel never writes shows (not an earlier schedule's).
    ws_bytes = emu.lib.alexnet_rs_conv_cuda_backward_weight_workspace(code, sh)

    def workspace():
        return torch.full((ws_bytes,), 0xFF, dtype=torch.uint8) if ws_bytes > 0 else None

    passes = [
        ("forward", "alexnet_rs_conv_cuda_forward", (x, w, b), y64.detach(), ya.detach(), Cin // G * Kk * Kk),
        ("backward-data", "alexnet_rs_conv_cuda_backward_data", (dy, w), dx64, dxa, Cout // G * Kk * Kk),
        ("backward-weight", "alexnet_rs_conv_cuda_backward_weight", (dy, x), dw64, dwa, N * OH * OW, workspace),
    ]
    out = []
    for pname, fn, ins, ref, scale, K, *extra in passes:
        if pname not in which:
            continue
        results, errs = [], []
        for s in SCHEDULES:
            o = torch.full(ref.shape, float("nan"), dtype=dt)
            scratch = [make() for make in extra]  # kept alive through the call
            errs.append(emu.call(fn, s, code, *[_ptr(t) for t in ins], _ptr(o), *map(_ptr, scratch), sh, None))
            results.append(o)
        tol = (4 * math.sqrt(K) + 8) * U_ACC[dtn] * scale + U[dtn] * ref.abs() + TINY[dtn]
        out.append(_judge(f"{name} {pname}", dtn, results, errs, ref, tol))
        out[-1].split_k = bool(extra) and ws_bytes > 0
    return out


# ---------------------------------------------------------------------------------------------
# Planted bugs: broken variants of our kernels the sweep must report (tests/python/test_cuda_emu.py).
# name -> (what, mutations, the cases that exercise the code: kinds, dtypes)

PLANTED = {
    "conv-bound-off-by-one": (
        "forward's input bound check lets row H through (reads the next row, or past the tensor)",
        (("grouped_conv.cu", "if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return 0;\n    const int64_t c",
          "if (ih < 0 || ih > s.H || iw < 0 || iw >= s.W) return 0;\n    const int64_t c"),),
        "conv",
        "float32",
    ),
    "lrn-window-off-by-one": (
        "the LRN window's upper channel bound is C instead of C - 1",
        (("lrn.cu", "hi = min(g.C - 1, c + g.post);", "hi = min(g.C, c + g.post);"),),
        "lrn",
        "float32,bfloat16",
    ),
    "simt-no-barrier-after-staging": (
        "the SIMT GEMM reads its shared tiles without the __syncthreads() after staging them",
        (("grouped_conv.cu", "    }\n    __syncthreads();\n#pragma unroll\n    for (int kk = 0; kk < BK; ++kk) {",
          "    }\n#pragma unroll\n    for (int kk = 0; kk < BK; ++kk) {"),),
        "conv",
        "float32",
    ),
    "simt-no-barrier-before-restaging": (
        "the SIMT GEMM stages the next K step without the __syncthreads() that ends the current one",
        (("grouped_conv.cu", "acc[i][j] += av[i] * bv[j];\n    }\n    __syncthreads();\n  }",
          "acc[i][j] += av[i] * bv[j];\n    }\n  }"),),
        "conv",
        "float32",
    ),
    "wmma-wrong-ldm": (
        "the WMMA path loads B tiles with ldm BK (a legal stride, the wrong one)",
        (("grouped_conv.cu", "wmma::load_matrix_sync(fb, &Bs[0][wn * 32 + j * 16], BN);",
          "wmma::load_matrix_sync(fb, &Bs[0][wn * 32 + j * 16], BK);"),),
        "conv",
        "float16,bfloat16",
    ),
    "wmma-illegal-ldm": (
        "the WMMA path loads B tiles with ldm BN + 4 (not a multiple of 16 bytes)",
        (("grouped_conv.cu", "wmma::load_matrix_sync(fb, &Bs[0][wn * 32 + j * 16], BN);",
          "wmma::load_matrix_sync(fb, &Bs[0][wn * 32 + j * 16], BN + 4);"),),
        "conv",
        "float16,bfloat16",
    ),
    "conv-slice-ignores-first-group": (
        "the SIMT GEMM ignores its launch's first group: a launch sliced over the groups recomputes the first slice",
        (("grouped_conv.cu", "  __shared__ A Bs[BK][BN + 1];\n  const int g = g0 + int(blockIdx.z);",
          "  __shared__ A Bs[BK][BN + 1];\n  const int g = int(blockIdx.z);"),),
        "conv",
        "float32",
    ),
    "split-k-sum-drops-last-chunk": (
        "the weight gradient's split-K sum leaves out the last chunk's partial sums",
        (("grouped_conv.cu", "for (int64_t c = 0; c < chunks; ++c)", "for (int64_t c = 0; c + 1 < chunks; ++c)"),),
        "conv",
        "float32",
    ),
    "wmma-no-barrier-before-epilogue": (
        "the WMMA path reads the accumulator tile back without the __syncthreads() after storing it",
        (("grouped_conv.cu", "  __syncthreads();\n  for (int i = threadIdx.x; i < BM * BN; i += THREADS) {",
          "  for (int i = threadIdx.x; i < BM * BN; i += THREADS) {"),),
        "conv",
        "float16,bfloat16",
    ),
}

# ---------------------------------------------------------------------------------------------
# The sweep

_EMU = None


def _worker_init(lib_path: str):
    import torch

    torch.set_num_threads(1)
    global _EMU
    _EMU = Emu(Path(lib_path))


def _run_case(c: dict) -> list[Outcome]:
    return (run_lrn if c["kind"] == "lrn" else run_conv)(_EMU, c)


def cases(quick: bool = False, kinds=("lrn", "conv"), dtypes=tuple(DTYPE_CODE)):
    out = []
    if "lrn" in kinds:
        out += lrn_cases()
    if "conv" in kinds:
        out += conv_cases(quick)
    out = [c for c in out if c["dtype"] in dtypes]
    # Longest first, so the two workers finish together.
    return sorted(out, key=lambda c: -_cost(c))


def _cost(c):
    if c["kind"] == "lrn":
        return c["N"] * c["C"] * c["H"] * c["W"] * c["size"]
    _, N, Cin, H, W, Cout, K, S, P, G, which = c["shape"]
    return len(which) * N * Cout * Cin // G * K * K * ((H + 2 * P - K) // S + 1) * ((W + 2 * P - K) // S + 1)


def sweep(lib: Path, case_list, jobs: int = 2, log=print):
    """Runs the cases in `jobs` processes; returns (outcomes, seconds)."""
    t0 = time.time()
    outcomes = []
    with ProcessPoolExecutor(jobs, initializer=_worker_init, initargs=(str(lib),)) as ex:
        try:
            for res in ex.map(_run_case, case_list, chunksize=1):
                for o in res:
                    outcomes.append(o)
                    if not o.ok:
                        log(f"FAIL {o.name}: {o.detail}")
        except BrokenProcessPool:
            # A sanitizer report (printed above by the worker) or a crash ends the sweep.
            o = Outcome("worker crashed", False, "a worker process died: see the sanitizer report or signal above")
            outcomes.append(o)
            log(f"FAIL {o.name}: {o.detail}")
    return outcomes, time.time() - t0


def summary(outcomes, seconds, sanitize):
    by_op = {}
    for o in outcomes:
        key = o.name.split()[0] + " " + o.name.split()[-1] if o.name.split()[0] in ("lrn", "conv") else o.name
        d = by_op.setdefault(key, {"cases": 0, "failures": 0, "worst": 0.0})
        d["cases"] += 1
        d["failures"] += not o.ok
        d["worst"] = max(d["worst"], round(o.worst, 4))
    dtypes = sorted({o.name.split()[1] for o in outcomes if o.name.split()[0] in ("lrn", "conv")})
    return {
        "cases": len(outcomes),
        "failures": sum(not o.ok for o in outcomes),
        "dtypes": dtypes,
        "schedules": len(SCHEDULES),
        "split_k": sum(o.split_k for o in outcomes),
        "sanitizers": "address,undefined" if sanitize else "none",
        "seconds": round(seconds, 1),
        "by_op": by_op,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sanitize", action="store_true", help="build and run under ASan + UBSan")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="leave out the AlexNet layer shapes")
    ap.add_argument("--kinds", default="lrn,conv")
    ap.add_argument("--dtypes", default=",".join(DTYPE_CODE))
    ap.add_argument("--plant", choices=sorted(PLANTED), help="sweep a deliberately broken variant (must fail)")
    args = ap.parse_args(argv)
    mutations = PLANTED[args.plant][1] if args.plant else ()
    if args.sanitize and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        # libasan must be the first library of the process: restart under it.
        lib = build(sanitize=True, mutations=mutations)  # build before the restart (the compiler must not run under ASan)
        env = dict(os.environ, LD_PRELOAD=asan_runtime(), ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])], env)
    t0 = time.time()
    lib = build(sanitize=args.sanitize, mutations=mutations)
    what = "ASan+UBSan" if args.sanitize else "plain"
    print(f"cuda-emu: {lib} ({what}{', planted bug ' + args.plant if args.plant else ''}, built in "
          f"{time.time() - t0:.1f} s)", flush=True)
    outcomes, seconds = sweep(lib, cases(args.quick, tuple(args.kinds.split(",")), tuple(args.dtypes.split(","))),
                              args.jobs)
    s = summary(outcomes, seconds, args.sanitize)
    print(json.dumps(s), flush=True)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
