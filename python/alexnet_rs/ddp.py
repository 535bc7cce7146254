"""An example: wrapping ``alexnet_rs.AlexNet`` in PyTorch's ``DistributedDataParallel`` yourself, each
rank reading its shard of the data from the Rust loader:

    torchrun --nproc_per_node 2 -m alexnet_rs.ddp --preset torchvision --input-size 63 --steps 100

gloo on CPU, NCCL on GPU. Every rank reads the same shuffled order in global batches of
``batch_size * world_size`` and takes its own slice. Plain ``torch.optim.SGD``, no checkpoints:
for real runs use ``torchrun ... -m alexnet_rs.train`` (the Rust training loop with checkpoints,
resume, schedules, the paper's SGD, metrics and elastic restarts; README "Scaling out"). Without
torchrun it runs as a single process. A global batch whose images were all unreadable is no
step (every rank skips it together); otherwise each rank's loss is summed over its slice and
divided by the global batch's readable images, so the averaged gradients are those of the global
mean. Each rank draws its own dropout masks. Writes ``OUT/weights-rank<r>.safetensors`` and
``OUT/losses-rank<r>.json`` (the mean loss of the rank's slice at each step, null where it was
empty).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from . import _native
from ._boundary import checked as _checked
from ._boundary import one_line_errors as _one_line_errors
from ._boundary import torchrun_environment as _torchrun_environment
from ._files import write_atomic as _write_atomic
from .data import DataLoader
from .errors import ConfigError, DataError, DivergedError
from .model import AlexNet

PROG = "python -m alexnet_rs.ddp"

FASHION = "/usr/share/datasets/fashion-mnist"


def parse(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--preset", default="torchvision")
    ap.add_argument("--data", default=FASHION, help="dataset (default: Fashion-MNIST)")
    ap.add_argument("--input-size", type=int, default=63)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use a seeded subset of the training set")
    ap.add_argument("--threads", type=int, default=1, help="decoding threads per rank")
    ap.add_argument("--no-dropout", action="store_true", help="train in eval mode (deterministic)")
    ap.add_argument("--out", default="runs/ddp")
    args = ap.parse_args(argv)
    for name in ("lr", "momentum", "weight_decay"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            ap.error(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}")
    for name in ("input_size", "batch_size", "steps"):  # (the loader's error named its `crop`)
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


@_one_line_errors(PROG)
def main(argv=None):
    args = parse(argv)
    try:
        world, rank, local, _ = _torchrun_environment()
    except ValueError as e:  # a partial torchrun environment
        raise ConfigError(str(e)) from None
    distributed = world > 1
    cuda = torch.cuda.is_available()
    if distributed:
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world)
        except ValueError as e:  # MASTER_ADDR or MASTER_PORT missing
            raise ConfigError(f"{e} (torchrun sets it)") from None
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    # A shard even in one process: a batch of only unreadable images comes empty (its place in the
    # epoch is kept), as on every rank.
    loader = DataLoader(args.data, preset=args.preset, crop=args.input_size, batch_size=args.batch_size,
                        seed=args.seed, shuffle=True, drop_last=True, threads=args.threads, limit=args.limit,
                        rank=rank, world_size=world)
    if len(loader) == 0:  # every epoch empty: the loop below would never reach --steps
        raise ConfigError(f"{loader.num_samples} training samples make no global batch of "
                         f"{args.batch_size} x {world} rank(s): lower --batch-size or raise --limit")
    out = Path(args.out)
    try:  # before the training (a file there was a traceback after it, the weights lost)
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--out {out}: a file is in the way of this folder") from None
    except OSError as e:
        raise ConfigError(f"--out {out}: {e.strerror or e}") from None
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = AlexNet(args.preset, num_classes=len(loader.classes), input_size=args.input_size).to(device)
    model.train(not args.no_dropout)
    net = DDP(model, device_ids=[local] if cuda else None) if distributed else model
    torch.manual_seed(args.seed + rank)  # each rank its own dropout masks (the same ones were drawn on every rank)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    losses, step, epoch = [], 0, 0
    while step < args.steps:
        steps_before = step
        for x, y in loader.epoch(epoch):
            # The global batch's readable images, known to every rank before the forward pass.
            count = torch.tensor([float(len(y))], device=device)
            if distributed:
                dist.all_reduce(count)
            images = count.item()
            if images == 0:
                continue  # every image of the global batch was unreadable: no step, on any rank
            opt.zero_grad()
            loss = F.cross_entropy(net(x.to(device)), y.to(device), reduction="sum")
            # DDP averages the gradients over the ranks: x world, / images gives the global mean's.
            (loss * world / images).backward()
            opt.step()
            losses.append(loss.item() / len(y) if len(y) else None)  # this rank's slice's mean (None: empty)
            total = loss.detach().clone()
            if distributed:
                dist.all_reduce(total)
            mean = total.item() / images  # the global batch's, the same on every rank
            if not math.isfinite(mean):
                raise DivergedError(f"the loss is {mean} at step {step + 1}: lower --lr")
            step += 1
            if rank == 0 and step % 50 == 0:
                print(f"step {step}: loss {mean:.4f}", flush=True)
            if step >= args.steps:
                break
        if step == steps_before:
            raise DataError(f"{args.data}: no training image of epoch {epoch + 1} could be read: nothing to train on")
        epoch += 1
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _checked(_native.save_tensors)(str(out / f"weights-rank{rank}.safetensors"), weights)
    _write_atomic(out / f"losses-rank{rank}.json", json.dumps(losses))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
