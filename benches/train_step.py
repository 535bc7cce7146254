"""One training step of AlexNet in plain PyTorch (torch.nn, grouped nn.Conv2d,
F.local_response_norm; torchvision's own model for the torchvision preset), eager or under
torch.compile: the anchors that `alexnet bench train` runs in the same invocation, each in a
process of its own (so each side's peak resident memory is its own). Prints one JSON line.

    .venv/bin/python benches/train_step.py --preset paper --batch 16 --steps 5 [--mode compile]
        [--threads N] [--input-size 224] [--channels-last] [--cpu-cache]

`--mode compile` wraps the model in `torch.compile` (inductor, default mode; the SGD update stays
eager, as torch.compile(model) users have it). Compilation happens in the first forward and
backward: `compile_s` is the warm-up step's time minus the median step, excluded from the rate.
`--cpu-cache` runs the steps inside `alexnet_rs.ops.cpu_cache()` (our caching CPU allocator, opt-in
for a user's own loop; not the anchor), to show what the allocator alone is worth to eager PyTorch.
"""

import argparse
import contextlib
import json
import resource
import time

import torch
import torch.nn.functional as F

from torch_alexnet import reference_model


def rss_mib(field):
    """VmRSS / VmHWM (peak) of this process, MiB (Linux), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true",
                    help="model and input in torch.channels_last (not the anchor: users' default is NCHW)")
    ap.add_argument("--cpu-cache", action="store_true",
                    help="steps inside alexnet_rs.ops.cpu_cache() (not the anchor: opt-in)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.input_size or (227 if args.preset == "caffe" else 224)
    torch.manual_seed(0)
    base_rss = rss_mib("VmRSS")
    model = reference_model(args.preset, input_size=size).to(args.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model) if args.mode == "compile" else model
    y = torch.randint(0, 1000, (args.batch,), device=args.device)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize(args.device)  # the timed device, not the current one
        return time.perf_counter() - t0

    scope = contextlib.nullcontext()
    if args.cpu_cache:
        import alexnet_rs

        scope = alexnet_rs.ops.cpu_cache()
    with scope:
        warm = step()  # warm-up (and compilation)
        times = sorted(step() for _ in range(args.steps))
    t = times[len(times) // 2]
    print(json.dumps({
        "mode": args.mode,
        "cpu_cache": args.cpu_cache,
        "images_per_s": args.batch / t,
        "seconds_per_step": t,
        "compile_s": warm - t if args.mode == "compile" else 0.0,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": rss_mib("VmHWM"),
        "base_rss_mib": base_rss,
    }))


if __name__ == "__main__":
    main()
