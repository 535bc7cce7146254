"""One training step of AlexNet in plain PyTorch eager (torch.nn, grouped nn.Conv2d,
F.local_response_norm; torchvision's own model for the torchvision preset): the anchor that
`alexnet bench train` runs in the same invocation. Prints one JSON line.

    .venv/bin/python benches/train_step.py --preset paper --batch 16 --steps 5 [--input-size 224]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from torch_alexnet import reference_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    size = args.input_size or (227 if args.preset == "caffe" else 224)
    torch.manual_seed(0)
    model = reference_model(args.preset).to(args.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    print(json.dumps({"images_per_s": args.batch / t, "seconds_per_step": t, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
