"""The host emulation of CUDA (kernels/emu/) does what it claims, and the kernel sweep built on it
(tests/cuda_emu/emu.py, `make cuda-emu`) catches deliberately broken kernels.

The sweep itself (every case, plain and under ASan/UBSan) runs from `make test` through
`make cuda-emu cuda-emu-sanitize`; these tests cover the emulator's semantics against
independent expectations (torch casts and matmul, hand-computed results) and the planted bugs.
"""

import ctypes
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cuda_emu"))
import emu  # noqa: E402

NAN = float("nan")


@pytest.fixture(scope="module")
def lib():
    e = emu.Emu(emu.build())
    return e, e.lib


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


# ---- half / bfloat16 conversions ----


def _special_floats():
    """Values around every rounding edge of half and bfloat16: ties, subnormals, overflow."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(200_000, generator=g, dtype=torch.float64)
    scales = torch.pow(2.0, torch.randint(-30, 20, (200_000,), generator=g).double())
    vals = [r * scales]
    # Exact midpoints between neighbouring half and bfloat16 values (ties to even), and their
    # float neighbours.
    h = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16).double()
    mid_h = (h[:-1] + h[1:]) / 2
    b = torch.arange(0, 0x7F80, 7, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).double()
    mid_b = (b[:-1] + b[1:]) / 2
    for m in (mid_h, mid_b):
        f = m.float()
        vals += [m, torch.nextafter(f, torch.tensor(math.inf)).double(), torch.nextafter(f, torch.tensor(-math.inf)).double()]
    vals.append(torch.tensor([0.0, -0.0, math.inf, -math.inf, 65504.0, 65519.99, 65520.0, 3.4e38, 1e-8, 5.96e-8,
                              2.98e-8, 2.99e-8, 1e-40, -1e-45]))
    v = torch.cat(vals)
    return torch.cat([v, -v])


def _bits16(t):
    return t.view(torch.int16).to(torch.int32) & 0xFFFF


def _convert(fn, src, n_out_dtype=torch.int16):
    out = torch.empty(src.numel(), dtype=n_out_dtype)
    fn(_p(src), _p(out), ctypes.c_int64(src.numel()))
    return out


def test_float_to_half_and_bfloat16_round_like_torch(lib):
    _, L = lib
    f = _special_floats().float()
    for fn, dt in ((L.emu_float_to_half, torch.float16), (L.emu_float_to_bf16, torch.bfloat16)):
        got = _convert(fn, f)
        want = f.to(dt)
        nan = torch.isnan(want)
        assert torch.isnan(got.view(dt)[nan]).all()
        assert torch.equal(_bits16(got)[~nan], _bits16(want)[~nan]), fn.__name__


def test_widening_is_exact_for_every_bit_pattern(lib):
    _, L = lib
    allbits = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16)
    for fn, dt in ((L.emu_half_to_float, torch.float16), (L.emu_bf16_to_float, torch.bfloat16)):
        got = _convert(fn, allbits, torch.float32)
        want = allbits.view(dt).float()
        nan = torch.isnan(want)
        assert torch.isnan(got[nan]).all()
        assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32)), fn.__name__


def _round_exact(d: float, mant_bits: int, min_exp: int, max_finite: float) -> float:
    """d rounded to nearest even with `mant_bits` significant bits and subnormals below 2^min_exp:
    the scaled value is exact in float64, and Python's round() of a float is round-half-even."""
    if math.isnan(d) or math.isinf(d) or d == 0:
        return d
    e = max(math.frexp(d)[1] - 1, min_exp)
    scale = 2.0 ** (e - (mant_bits - 1))
    r = round(d / scale) * scale
    if abs(r) > max_finite:
        return math.copysign(math.inf, d)
    return r


def test_double_to_half_and_bfloat16_round_once(lib):
    """CUDA's __double2half / __double2bfloat16 round directly from double (torch's casts go
    through float and can round twice), so the reference here is exact rounding."""
    _, L = lib
    g = torch.Generator().manual_seed(1)
    d = torch.randn(4000, generator=g, dtype=torch.float64) * torch.pow(2.0, torch.randint(-28, 18, (4000,), generator=g).double())
    # Just above a float-rounded tie: rounding through float would round twice, wrongly.
    h = torch.arange(1, 0x7BFF, 97, dtype=torch.int32).to(torch.int16).view(torch.float16).double()
    mid = (h + torch.nextafter(h.half(), torch.tensor(math.inf, dtype=torch.float16)).double()) / 2
    d = torch.cat([d, mid + mid.abs() * 2.0**-40, mid - mid.abs() * 2.0**-40, torch.tensor([65520.0, 65519.999999])])
    d = torch.cat([d, -d])
    for fn, dt, mant, min_exp, maxf in (
        (L.emu_double_to_half, torch.float16, 11, -14, 65504.0),
        (L.emu_double_to_bf16, torch.bfloat16, 8, -126, float(torch.finfo(torch.bfloat16).max)),
    ):
        got = _convert(fn, d).view(dt).double()
        want = torch.tensor([_round_exact(v, mant, min_exp, maxf) for v in d.tolist()], dtype=torch.float64)
        bad = (got != want).nonzero()
        assert bad.numel() == 0, (fn.__name__, [(d[i].item(), got[i].item(), want[i].item()) for i in bad[:5, 0]])


# ---- launches, barriers, shared memory ----


def test_bad_launch_configurations_are_reported_and_run_nothing(lib):
    _, L = lib
    L.emu_launch_config.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)]
    ran = ctypes.c_int()
    cases = {
        (0, 1, 1, 32, 1, 1, 0): 9,  # zero-sized grid
        (1, 1, 1, 0, 1, 1, 0): 9,  # zero-sized block
        (1, 1, 1, 1025, 1, 1, 0): 9,  # more than 1024 threads
        (1, 1, 1, 32, 32, 2, 0): 9,  # 2048 threads in all
        (1, 1, 1, 1, 1, 65, 0): 9,  # block z > 64
        (1, 65536, 1, 32, 1, 1, 0): 9,  # grid y > 65535
        (1, 1, 1, 32, 1, 1, 48 * 1024 + 1): 1,  # too much dynamic shared memory
        (2, 3, 4, 8, 4, 2, 0): 0,
        (1, 1, 1, 1024, 1, 1, 0): 0,
    }
    for (gx, gy, gz, bx, by, bz, smem), want in cases.items():
        err = L.emu_launch_config(gx, gy, gz, bx, by, bz, smem, ctypes.byref(ran))
        assert err == want, (gx, gy, gz, bx, by, bz, smem)
        assert ran.value == (1 if want == 0 else 0)


@pytest.mark.parametrize("threads", [256, 1000, 1024])
def test_syncthreads_is_a_real_barrier(lib, threads):
    e, L = lib
    L.emu_reverse.restype = ctypes.c_char_p
    blocks = 3
    want = torch.arange(threads - 1, -1, -1, dtype=torch.float32).repeat(blocks)
    for schedule in (0, 1, 2):
        L.cuda_emu_set_schedule(schedule)
        out = torch.full((blocks * threads,), NAN)
        assert L.emu_reverse(_p(out), blocks, threads, 1) is None
        assert torch.equal(out, want), schedule
        # Without the barrier a thread reads a slot its partner has not written yet, in every order.
        out = torch.full((blocks * threads,), NAN)
        assert L.emu_reverse(_p(out), blocks, threads, 0) is None
        assert not torch.equal(out, want), schedule
    L.cuda_emu_set_schedule(0)


def test_barrier_in_divergent_code_is_a_fault(lib):
    e, L = lib
    L.emu_divergent_barrier.restype = ctypes.c_char_p
    out = torch.zeros(64)
    L.cuda_emu_clear_fault()
    assert L.emu_divergent_barrier(_p(out)) == b"unspecified launch failure"
    assert "barrier in divergent code" in L.cuda_emu_last_fault().decode()


def test_shared_memory_is_private_to_each_block(lib):
    _, L = lib
    L.emu_shared_per_block.restype = ctypes.c_char_p
    out = torch.zeros(4)
    assert L.emu_shared_per_block(_p(out), 4) is None
    assert out[0] == 42 and torch.isnan(out[1:]).all()  # blocks 1..3 never wrote theirs


def test_thread_and_block_indices_in_three_dimensions(lib):
    _, L = lib
    L.emu_indices.restype = ctypes.c_char_p
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = math.prod(grid), math.prod(block)
    out = torch.zeros(nb * nt * 4, dtype=torch.int32)
    assert L.emu_indices(_p(out), *grid, *block) is None
    rows = out.view(-1, 4)
    assert torch.equal(rows[:, 0], torch.arange(nb).repeat_interleave(nt).int())
    assert torch.equal(rows[:, 1], torch.arange(nt).repeat(nb).int())
    assert (rows[:, 2] == nt).all() and (rows[:, 3] == nb).all()


# ---- WMMA ----


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wmma_tile_product_matches_matmul_in_every_layout(lib, dtype):
    _, L = lib
    L.emu_wmma.restype = ctypes.c_char_p
    g = torch.Generator().manual_seed(3)
    code = emu.DTYPE_CODE[str(dtype).split(".")[1]]
    for a_col in (0, 1):
        for b_col in (0, 1):
            for c_col in (0, 1):
                for d_col in (0, 1):
                    lda, ldb, ldc = 24, 32, 20  # padded rows: 48/64 bytes, 80 bytes
                    A = torch.randn(16, 16, generator=g).to(dtype)
                    B = torch.randn(16, 16, generator=g).to(dtype)
                    C = torch.randn(16, 16, generator=g)

                    def lay(m, ld, col):  # memory holding m with leading dimension ld
                        buf = torch.full((16, ld), NAN, dtype=m.dtype)
                        buf[:, :16] = m.t() if col else m
                        return buf.contiguous()

                    a, b, c = lay(A, lda, a_col), lay(B, ldb, b_col), lay(C, ldc, c_col)
                    d = torch.full((16, ldc), NAN)
                    err = L.emu_wmma(code, _p(a), _p(b), _p(c), _p(d), lda, ldb, ldc, a_col, b_col, c_col, d_col, 0)
                    assert err is None
                    D = d[:, :16].t() if d_col else d[:, :16]
                    want = A.double() @ B.double() + C.double()
                    scale = A.double().abs() @ B.double().abs() + C.double().abs()
                    assert ((D.double() - want).abs() <= 20 * 2.0**-24 * scale).all(), (a_col, b_col, c_col, d_col)


def test_wmma_alignment_and_ldm_rules_fault(lib):
    _, L = lib
    L.emu_wmma.restype = ctypes.c_char_p
    a = torch.zeros(16, 64, dtype=torch.float16)
    b = torch.zeros(16, 16, dtype=torch.float16)
    c = torch.zeros(16, 16)
    d = torch.zeros(16, 16)
    for args, what in (
        ((16, 16, 16, 0), None),
        ((16, 16, 16, 1), "not 256-bit aligned"),  # A's pointer one element off
        ((20, 16, 16, 0), "ldm 20 is not a multiple of 16 bytes"),  # 40-byte rows of half
        ((16, 16, 18, 0), "ldm 18 is not a multiple of 16 bytes"),  # 72-byte rows of float
    ):
        lda, ldb, ldc, offset = args
        L.cuda_emu_clear_fault()
        err = L.emu_wmma(2, _p(a), _p(b), _p(c), _p(d), lda, ldb, ldc, 0, 0, 0, 0, offset)
        if what is None:
            assert err is None
        else:
            assert err == b"misaligned address" and what in L.cuda_emu_last_fault().decode()


def test_wmma_lanes_that_disagree_fault(lib):
    _, L = lib
    L.emu_wmma_divergent.restype = ctypes.c_char_p
    a = torch.zeros(64, dtype=torch.float16)
    d = torch.zeros(32)
    L.cuda_emu_clear_fault()
    assert L.emu_wmma_divergent(_p(a), _p(d)) == b"unspecified launch failure"
    assert "disagrees with lane 0 in wmma::load_matrix_sync" in L.cuda_emu_last_fault().decode()
    L.emu_wmma_partial_warp.restype = ctypes.c_char_p
    L.cuda_emu_clear_fault()
    assert L.emu_wmma_partial_warp(_p(a), _p(d)) == b"unspecified launch failure"
    assert "16 lanes wait in wmma::load_matrix_sync while thread (0,0,0) has exited" in L.cuda_emu_last_fault().decode()


# ---- the sweep's coverage ----


def test_sweep_covers_what_the_issue_asks():
    lrn, conv = emu.lrn_cases(), emu.conv_cases()
    assert {c["C"] for c in lrn} == {1, 2, 3, 5, 96, 257}
    assert {c["size"] for c in lrn} == set(range(1, 8)) and {c["cl"] for c in lrn} == {False, True}
    for C in {c["C"] for c in lrn}:
        assert {c["sweeps"] > 1 for c in lrn if c["C"] == C} == {False, True}
    edge = [c["shape"] for c in conv if c["shape"][0] == "edge"]
    _, N, Cin, H, W, Cout, K, S, P, G, _ = zip(*edge)
    assert set(G) == {1, 2, 3, 4} and set(K) == {1, 3, 5, 11} and set(S) == {1, 2, 3, 4} and set(P) == {0, 1, 2, 3}
    assert set(N) == {1, 2, 3}
    assert any((cin // g) * k * k % 16 for cin, g, k in zip(Cin, G, K))  # K off the 16-step
    assert any((co // g) % 64 and co // g > 64 for co, g in zip(Cout, G))  # more than one ragged M tile
    assert any((h + 2 * p - k) // s + 1 == 1 for h, p, k, s in zip(H, P, K, S))  # 1x1 outputs
    assert {c["dtype"] for c in conv} == set(emu.DTYPE_CODE) == {c["dtype"] for c in lrn}
    assert len(lrn) * 2 + sum(len(c["shape"][-1]) for c in conv) >= 500
    # Every AlexNet layer shape at batch 2, in every pass (conv1's backward-data at 35x35: conv_shapes says why).
    full = {c["shape"][2:10]: c["shape"][-1] for c in conv if c["shape"][0] != "edge" and c["shape"][1] == 2}
    for layers in emu.ALEXNET_LAYERS.values():
        for cin, hw, cout, k, s, p, g in layers:
            conv1 = cin == 3
            assert full[(cin, hw, hw, cout, k, s, p, g)] == (("forward", "backward-weight") if conv1 else emu.PASSES)
            if conv1:
                assert any(c["shape"][2:11] == (cin, 35, 35, cout, k, s, p, g, ("backward-data",)) for c in conv)


def test_alexnet_layer_shapes_are_the_presets():
    """The sweep's AlexNet shapes equal every convolution in alexnet_rs's own layer tables."""
    alexnet_rs = pytest.importorskip("alexnet_rs")
    for preset, layers in emu.ALEXNET_LAYERS.items():
        rows = alexnet_rs.layer_table(preset, None, 1000)
        got, prev = [], rows[0]
        for r in rows[1:]:
            m = re.match(r"conv (\d+)x\1/(\d+) pad (\d+)(?: groups (\d+))?", r[1])
            if m:
                k, s, p, g = int(m[1]), int(m[2]), int(m[3]), int(m[4] or 1)
                got.append((prev[2][0], prev[2][1], r[2][0], k, s, p, g))
            prev = r
        assert got == layers, preset


# ---- planted bugs ----


@pytest.mark.parametrize("bug", sorted(emu.PLANTED))
def test_planted_bug_is_caught(bug):
    what, _, kinds, dtypes = emu.PLANTED[bug]
    r = subprocess.run([sys.executable, str(HERE.parent / "cuda_emu" / "emu.py"), "--quick", "--plant", bug,
                        "--kinds", kinds, "--dtypes", dtypes], capture_output=True, text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    failures = [l for l in lines if l.startswith("FAIL ")]
    how = sorted({re.sub(r"\d+", "#", f.split(": ", 2)[-1].split(";")[0])[:80] for f in failures})
    print(f"{bug} ({what}): {summary['failures']} of {summary['cases']} cases fail; how: {how[:3]}")
    assert r.returncode == 1 and summary["failures"] > 0, r.stdout[-2000:] + r.stderr[-2000:]
    if bug.startswith("split-k"):
        assert summary["split_k"] > 0, summary  # the quick sweep takes the split-K path
