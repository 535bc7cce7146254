"""The fused relu -> [LRN] -> max-pool op on the CPU, per layout: the figures behind the layout and
fusion choices in src/model/forward.rs (BENCHMARKS.md, "CPU training step").

    .venv/bin/python benches/lrn_pool.py [--threads 2] [--repeats 15]

1. torch.ops.alexnet_rs.relu_lrn_max_pool2d_with_indices and its backward, each timed alone, with
   NCHW and channels_last input, at the paper's conv1 and conv2 stages (batch 16, 224 input).
2. Without LRN (size 0): our op's forward + backward against ATen's relu_ + max_pool2d (the
   unfused stage of the model; a clone stands in for the conv output ReLU overwrites, and its
   time is subtracted), at the torchvision preset's three pooled stages at 224 (batch 16) and
   at the demo's 63x63 (batch 64).
Median of --repeats after a warm-up.
"""

import argparse

import torch
import torch.nn.functional as F

import alexnet_rs  # noqa: F401  (registers torch.ops.alexnet_rs)
from timing import median_ms

OPS = torch.ops.alexnet_rs
PAPER = (5, 1e-4, 0.75, 2.0)
NO_LRN = (0, 0.0, 0.0, 0.0)
FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def pooled(side):
    return (side - 3) // 2 + 1


def fused_by_layout(repeats):
    print("| stage (batch 16) | layout | forward (ms) | backward (ms) |")
    print("|---|---|---|---|")
    for name, c, side in [("paper conv1 96x55x55", 96, 55), ("paper conv2 256x27x27", 256, 27)]:
        for fmt_name, fmt in FORMATS.items():
            x = (torch.randn(16, c, side, side) * 20).contiguous(memory_format=fmt)
            y, idx = OPS.relu_lrn_max_pool2d_with_indices(x, *PAPER, 3, 2, False)
            g = torch.randn(y.shape).contiguous(memory_format=fmt)
            fwd = median_ms(lambda: OPS.relu_lrn_max_pool2d_with_indices(x, *PAPER, 3, 2, False), repeats)
            bwd = median_ms(lambda: OPS.relu_lrn_max_pool2d_backward(g, x, idx, *PAPER, 3, 2, False), repeats)
            print(f"| {name} | {fmt_name} | {fwd:.2f} | {bwd:.2f} |")


def relu_pool_against_aten(repeats):
    print("\n| stage | layout | ours relu+max-pool fwd+bwd (ms) | ATen relu_ + max_pool2d fwd+bwd (ms) |")
    print("|---|---|---|---|")
    stages = [("torchvision conv1 64x55x55, b16", 16, 64, 55, "channels_last"),
              ("torchvision conv2 192x27x27, b16", 16, 192, 27, "channels_last"),
              ("torchvision conv5 256x13x13, b16", 16, 256, 13, "channels_last"),
              ("demo conv1 64x15x15, b64", 64, 64, 15, "NCHW"),
              ("demo conv2 192x7x7, b64", 64, 192, 7, "NCHW"),
              ("demo conv5 256x3x3, b64", 64, 256, 3, "NCHW")]
    for name, n, c, side, fmt_name in stages:
        fmt = FORMATS[fmt_name]
        x0 = (torch.randn(n, c, side, side) * 20).contiguous(memory_format=fmt)
        g = torch.randn(n, c, pooled(side), pooled(side)).contiguous(memory_format=fmt)

        def ours():
            x = x0.detach().requires_grad_()
            OPS.relu_lrn_max_pool2d(x, *NO_LRN, 3, 2, False).backward(g)

        # The clone stands in for the conv output that relu_ overwrites: its forward is subtracted,
        # and its backward passes the gradient on as it is (an `x * 1` here added a full-size
        # multiply to ATen's backward that nothing subtracted).
        def aten():
            x = x0.detach().requires_grad_()
            F.max_pool2d(F.relu_(x.clone()), 3, 2).backward(g)

        def copy():
            x = x0.detach().requires_grad_()
            x.clone()

        aten_ms = median_ms(aten, repeats) - median_ms(copy, repeats)
        print(f"| {name} | {fmt_name} | {median_ms(ours, repeats):.2f} | {aten_ms:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, median of {args.repeats}\n")
    fused_by_layout(args.repeats)
    relu_pool_against_aten(args.repeats)


if __name__ == "__main__":
    main()
