"""Where a CPU training step's time goes: torch.profiler over our nn.Module's step (the same Rust
forward as `alexnet bench train`; backward through autograd, torch.optim.SGD for the update, and
without the trainer's caching CPU allocator, so large fresh outputs pay their page faults here).

    .venv/bin/python benches/profile_step.py [--preset torchvision] [--batch 16] [--steps 3]

Prints the profiler's table of ATen ops by self CPU time, grouped by input shape (totals over
--steps steps, after two warm-up steps). BENCHMARKS.md quotes it per step.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import alexnet_rs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="torchvision")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = alexnet_rs.AlexNet(args.preset, 1000)
    side = 227 if args.preset == "caffe" else 224
    x = torch.randn(args.batch, 3, side, side)
    target = torch.randint(0, 1000, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        opt.step()

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    print(f"preset {args.preset}, batch {args.batch}, {args.threads} threads, totals over {args.steps} steps")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
