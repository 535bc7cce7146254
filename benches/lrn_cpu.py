"""CPU LRN, forward + backward: alexnet_rs.ops.lrn against F.local_response_norm, in one run.

    .venv/bin/python benches/lrn_cpu.py [--batch 32] [--repeats 10] [--threads N] [--split] [--first N]
                                        [--gathered]

AlexNet's two LRN shapes (after conv1 and conv2), float32, the paper's parameters. Each timing is
the median of --repeats runs of forward + backward (upstream gradient of ones-like random), after
a warm-up; both paths see the same input and thread count. Prints a markdown table: first with
PyTorch's CPU allocator (every output above glibc's mmap threshold is a fresh, page-faulted
mapping), then with both sides inside `alexnet_rs.ops.cpu_cache()` (freed blocks reused, as in a
training loop that opens it). --gathered adds the inputs our kernels gather into float tiles
(channels_last, float16, bfloat16), against F.local_response_norm on the same input.
"""

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

import alexnet_rs  # registers torch.ops.alexnet_rs
from alexnet_rs.ops import lrn
from timing import median_ms

SHAPES = {"conv1 96x55x55": (96, 55, 55), "conv2 256x27x27": (256, 27, 27)}
SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0


def fwd_bwd(fn, x, g):
    x = x.detach().requires_grad_(True)
    fn(x).backward(g)
    return x.grad


def median_time(fn, x, g, repeats):
    return median_ms(lambda: fwd_bwd(fn, x, g), repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--split", action="store_true", help="also time forward, backward and a fresh output alone")
    ap.add_argument("--gathered", action="store_true", help="also time gathered inputs: channels_last at "
                    "conv2, float16/bfloat16 feature vectors (16384 channels x 1 position; F.local_response_norm "
                    "has no 4-D half CPU kernel)")
    ap.add_argument("--first", type=int, default=0, metavar="N",
                    help="first time our op's first N iterations at conv1 one by one, before anything else in "
                         "this process (the cold start: fresh memory page-faulted in)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = lambda t: lrn(t, SIZE, ALPHA, BETA, K)  # noqa: E731
    stock = lambda t: F.local_response_norm(t, SIZE, ALPHA, BETA, K)  # noqa: E731
    if args.first:
        x = torch.randn(args.batch, *SHAPES["conv1 96x55x55"]).relu() * 50
        g = torch.randn_like(x)
        first = []
        for _ in range(args.first):
            t0 = time.perf_counter()
            fwd_bwd(ours, x, g)
            first.append((time.perf_counter() - t0) * 1e3)
        print("our first iterations at conv1 (ms): " + ", ".join(f"{t:.1f}" for t in first))
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, float32, fwd+bwd median of {args.repeats}")
    print("| shape | allocator | F.local_response_norm (ms) | alexnet_rs lrn (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for allocator, scope in (("PyTorch's", contextlib.nullcontext), ("cpu_cache()", alexnet_rs.ops.cpu_cache)):
        for name, chw in SHAPES.items():
            x = torch.randn(args.batch, *chw).relu() * 50
            g = torch.randn_like(x)
            with scope():
                # Same answer before timing anything.
                assert torch.allclose(fwd_bwd(ours, x, g), fwd_bwd(stock, x, g), rtol=1e-4, atol=1e-6)
                t_stock = median_time(stock, x, g, args.repeats)
                t_ours = median_time(ours, x, g, args.repeats)
            print(f"| {name} | {allocator} | {t_stock:.1f} | {t_ours:.1f} | {t_stock / t_ours:.1f}x |")
    if args.split:
        # Where our time goes: each op alone, and the cost of a fresh output of that size.
        print("\n| shape | lrn forward (ms) | lrn_backward (ms) | empty_like + fill_ (ms) |")
        print("|---|---|---|---|")
        ops = torch.ops.alexnet_rs
        for name, chw in SHAPES.items():
            x = torch.randn(args.batch, *chw).relu() * 50
            g = torch.randn_like(x)
            cols = [median_ms(f, args.repeats) for f in (lambda: ops.lrn(x, SIZE, ALPHA, BETA, K),
                                                         lambda: ops.lrn_backward(g, x, SIZE, ALPHA, BETA, K),
                                                         lambda: torch.empty_like(x).fill_(1))]
            print(f"| {name} | " + " | ".join(f"{t:.1f}" for t in cols) + " |")
    if args.gathered:
        print("\n| input | F.local_response_norm (ms) | alexnet_rs lrn (ms) | speed-up |")
        print("|---|---|---|---|")
        for name, shape, dtype, fmt in (
            ("conv2 float32 channels_last", (256, 27, 27), torch.float32, torch.channels_last),
            ("16384x1 float16", (16384, 1), torch.float16, torch.contiguous_format),
            ("16384x1 bfloat16", (16384, 1), torch.bfloat16, torch.contiguous_format),
        ):
            x = (torch.randn(args.batch, *shape).relu() * 50).to(dtype).contiguous(memory_format=fmt)
            g = torch.randn_like(x)
            ref = fwd_bwd(stock, x.double(), g.double())
            assert ((fwd_bwd(ours, x, g).double() - ref).abs().max() / ref.abs().max()).item() < 1e-2
            t_stock = median_time(stock, x, g, args.repeats)
            t_ours = median_time(ours, x, g, args.repeats)
            print(f"| {name} | {t_stock:.1f} | {t_ours:.1f} | {t_stock / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
