"""Side-by-side with torchvision: the same weights in torchvision's AlexNet and in ours.

    python -m alexnet_rs.compare [--batches 1 16 64] [--repeats 5] [--out compare]
    python -m alexnet_rs.compare --train [--steps 60] [--data DIR] [--out compare]

Reports the maximum |difference| of the logits, of every parameter's gradient after one backward,
the forward and training-step throughput of ours / torchvision's at each batch size on the current
device (CUDA if available), and peak memory on CUDA; writes OUT/report.md and OUT/chart.png.

`--train`: step for step, torchvision's AlexNet in a plain PyTorch loop (torch.optim.SGD, a
cosine schedule, weight decay on weights only) against ours in the Rust training loop
(`alexnet_rs.train`, PyTorch's update rule), from the same initial weights, on the same batches
from our loader, dropout off (stated: torch's and our dropout draw different masks). Writes
OUT/report.md and OUT/train.png (our run's metrics stay in OUT/rust-run, its checkpoints are
removed); the last line printed is
`max relative loss difference: <x> over <n> steps`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ._boundary import one_line_errors as _one_line_errors
from ._files import write_atomic as _write_atomic
from .errors import ConfigError
from .model import from_torchvision

PROG = "python -m alexnet_rs.compare"


def _timed_pair(fa, fb, device, repeats):
    """Median seconds of fa and of fb, run alternately (a, b, a, b, ...) after a warm-up of each,
    so that drifts of a shared machine hit both alike."""
    # The device timed (the current one may be another GPU).
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = ([], [])
    for f in (fa, fb):
        f()
    for _ in range(repeats):
        for f, ts in zip((fa, fb), times):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
    return tuple(sorted(ts)[len(ts) // 2] for ts in times)


def _peak(fn, device, models):
    """MiB of CUDA memory fn() adds at its peak to what is allocated before it, with no model
    holding gradients (the total counted the other model's weights and gradients too)."""
    if device.type != "cuda":
        return None
    for m in models:
        m.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _chart(path, size, draw):
    """A chart drawn by draw(ax), with a legend, saved to path (returned); a note instead when
    matplotlib is missing (None)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no {path.name}")
        return None
    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    _write_atomic(path, png.getvalue())
    return path


def _train_side_by_side(args) -> float:
    """The `--train` comparison; returns the max relative loss difference."""
    import math

    import torchvision

    from . import _native
    from .data import DataLoader

    out = Path(args.out)
    # A shard of one, as the Rust loop's loader: a batch of only unreadable images comes empty, in
    # its place in the epoch (which the learning rate depends on).
    loader = DataLoader(args.data, preset="torchvision", crop=args.input_size, view="train",
                        batch_size=args.batch_size, threads=args.threads, seed=args.seed, shuffle=True, drop_last=True,
                        limit=args.limit, rank=0, world_size=1)
    per_epoch = len(loader)  # the data's, which may hold fewer images than --limit
    if per_epoch == 0:
        raise ConfigError(f"{args.data} has {loader.num_samples} training images, fewer than one --batch-size "
                         f"({args.batch_size})")
    epochs = -(-args.steps // per_epoch) + 1  # the cosine spans more than the steps run
    settings = dict(preset="torchvision", data=args.data, input_size=args.input_size, batch_size=args.batch_size,
                    epochs=epochs, max_steps=args.steps, lr=args.lr, momentum=0.9, weight_decay=5e-4,
                    update_rule="pytorch", schedule="cosine", dropout=0.0, seed=args.seed, limit_train=args.limit,
                    limit_test=args.batch_size, threads=args.threads, out=str(out / "rust-run"))
    shutil.rmtree(out / "rust-run", ignore_errors=True)  # a fresh run each time (a run folder holds one run)
    ours = [e for e in _collect(settings) if "train_error" in e]
    # The comparison keeps the losses (rust-run/metrics.jsonl), not the weights: ~0.5 GB a checkpoint.
    shutil.rmtree(out / "rust-run" / "checkpoints", ignore_errors=True)
    # torchvision from the same initial weights: the Rust run drew them from a generator of its
    # own seeded with the seed, which gives what torch.manual_seed(seed) and the same draws give.
    torch.manual_seed(args.seed)
    classes = len(loader.classes)
    init = dict(_native.init_params("torchvision", classes, args.input_size))
    tv = torchvision.models.alexnet(weights=None, num_classes=classes)
    tv.load_state_dict(init)
    for m in tv.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tv.train()
    decay = [p for n, p in tv.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in tv.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([dict(params=decay, weight_decay=5e-4), dict(params=no_decay, weight_decay=0.0)],
                          lr=args.lr, momentum=0.9)
    theirs, lrs, step = [], [], 0
    for epoch in range(epochs):
        for place, (x, y) in enumerate(loader.epoch(epoch)):
            if step == args.steps:
                break
            if len(y) == 0:
                continue  # no step, as in the Rust loop
            lr = 0.5 * args.lr * (1 + math.cos(math.pi * (epoch + place / per_epoch) / epochs))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad()
            loss = F.cross_entropy(tv(x), y)
            loss.backward()
            opt.step()
            theirs.append(loss.item())
            lrs.append(lr)
            step += 1
    n = len(ours)
    if n != len(theirs) or n == 0:
        # zip() compared the shorter list alone, and the report said "same batches".
        raise RuntimeError(f"the Rust loop took {n} steps and the reference loop {len(theirs)} (--steps {args.steps}): "
                           "they did not train on the same batches")
    diffs = [abs(o["loss"] - t) / abs(t) for o, t in zip(ours, theirs)]
    worst = max(diffs)
    lines = [
        f"# Training step for step: alexnet_rs (Rust loop) vs torchvision + torch.optim.SGD ({time.strftime('%Y-%m-%d')})",
        "",
        f"torchvision preset, {args.data}: {loader.num_samples} training images at {args.input_size}x{args.input_size}, batch "
        f"{args.batch_size}, lr {args.lr} with a cosine schedule, momentum 0.9, weight decay 5e-4 (weights only), "
        f"PyTorch's update rule, dropout off, same initial weights, same batches, {n} steps, torch {torch.__version__}.",
        "",
        f"max relative loss difference: {worst:.3e}; max |lr difference|: "
        f"{max(abs(o['lr'] - l) for o, l in zip(ours, lrs)):.3e}",
        "",
        "| step | loss ours | loss torchvision | relative difference |",
        "|---|---|---|---|",
        *[f"| {i + 1} | {o['loss']:.6f} | {t:.6f} | {d:.2e} |" for i, (o, t, d) in enumerate(zip(ours, theirs, diffs))
          if i < 5 or (i + 1) % 10 == 0],
    ]
    _write_atomic(out / "report.md", "\n".join(lines) + "\n")

    def draw(ax):
        ax.plot(range(1, n + 1), [o["loss"] for o in ours], lw=2.5, alpha=0.6, label="alexnet_rs (Rust loop)")
        ax.plot(range(1, n + 1), theirs, lw=1, color="k", label="torchvision + torch.optim.SGD")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"step-for-step training, max relative difference {worst:.1e}")

    chart = _chart(out / "train.png", (7, 3.5), draw)
    print("\n".join(lines))
    print(f"\nwrote {out / 'report.md'}" + (f" and {chart}" if chart else ""))
    print(f"max relative loss difference: {worst:.3e} over {n} steps")
    return worst


def _collect(settings):
    events = []
    from . import train

    train(settings, on_step=events.append)
    return events


@_one_line_errors(PROG)
def main(argv=None):
    import torchvision

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] + " " + __doc__.split("\n\n")[2],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="batch sizes to time")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (the median is reported)")
    ap.add_argument("--out", default="compare", help="folder for report.md and the charts")
    ap.add_argument("--train", action="store_true",
                    help="compare training step for step instead: torchvision's AlexNet in a plain PyTorch loop "
                         "against ours in the Rust training loop, same initial weights and batches")
    ap.add_argument("--steps", type=int, default=60, help="--train: steps")
    ap.add_argument("--data", default=os.environ.get("ALEXNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"),
                    help="--train: dataset")
    ap.add_argument("--input-size", type=int, default=63, help="--train: input side")
    ap.add_argument("--batch-size", type=int, default=16, help="--train: batch size")
    ap.add_argument("--limit", type=int, default=640, help="training images (a seeded subset)")
    ap.add_argument("--lr", type=float, default=0.01, help="--train: base lr of the cosine schedule")
    ap.add_argument("--seed", type=int, default=0, help="--train: seed of the initial weights and the data order")
    ap.add_argument("--threads", type=int, default=2, help="decoding threads")
    args = ap.parse_args(argv)
    for name, least in [("steps", 1), ("input_size", 1), ("batch_size", 1), ("limit", 1), ("repeats", 1), ("threads", 0)]:
        if getattr(args, name) < least:
            ap.error(f"--{name.replace('_', '-')} must be >= {least}")
    if args.train and args.limit < args.batch_size:
        ap.error(f"--limit ({args.limit}) must be at least one --batch-size ({args.batch_size})")
    if not args.train and min(args.batches) < 1:
        ap.error(f"--batches must be >= 1, got {min(args.batches)}")
    # Before any measurement: an --out that cannot be a folder fails at once.
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {args.out}: {e.strerror or e}")
    if args.train:
        return _train_side_by_side(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).to(device).eval()
    ours = from_torchvision(tv).to(device).eval()

    x = torch.randn(4, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (4,), device=device)
    with torch.no_grad():
        d_logits = (ours(x) - tv(x)).abs().max().item()
    F.cross_entropy(ours(x), y).backward()
    F.cross_entropy(tv(x), y).backward()
    theirs = dict(tv.named_parameters())
    d_grads = {n: (p.grad - theirs[n].grad).abs().max().item() for n, p in ours.named_parameters()}

    rows = []
    for b in args.batches:
        xb = torch.randn(b, 3, 224, 224, device=device)
        yb = torch.randint(0, 1000, (b,), device=device)

        def fwd(m):
            with torch.no_grad():
                m(xb)

        def train_step(m, opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(xb), yb).backward()
            opt.step()

        r = {"batch": b}
        # lr 0: the two models stay equal while we time their training steps.
        opt_o, opt_t = (torch.optim.SGD(m.parameters(), lr=0.0) for m in (ours, tv))
        for m in (ours, tv):
            m.eval()
        f_o, f_t = _timed_pair(lambda: fwd(ours), lambda: fwd(tv), device, args.repeats)
        for m in (ours, tv):
            m.train()
        t_o, t_t = _timed_pair(lambda: train_step(ours, opt_o), lambda: train_step(tv, opt_t), device, args.repeats)
        r.update(fwd_ours=b / f_o, fwd_torchvision=b / f_t, train_ours=b / t_o, train_torchvision=b / t_t)
        r["peak_ours"] = _peak(lambda: train_step(ours, opt_o), device, (ours, tv))
        r["peak_torchvision"] = _peak(lambda: train_step(tv, opt_t), device, (ours, tv))
        rows.append(r)

    out = Path(args.out)
    lines = [
        f"# alexnet_rs vs torchvision AlexNet ({device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')})",
        "",
        f"max |logits difference| (same weights, eval, batch 4): {d_logits:.3e}",
        "",
        f"max |gradient difference| over parameters after one backward: {max(d_grads.values()):.3e}",
        "",
        "| parameter | max abs gradient difference |",
        "|---|---|",
        *[f"| {n} | {v:.3e} |" for n, v in d_grads.items()],
        "",
        "| batch | forward ours (img/s) | forward torchvision | ratio | train step ours | train step torchvision | ratio | step's peak MiB above the weights, ours / torchvision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = "n/a (CPU)" if r["peak_ours"] is None else f"{r['peak_ours']:.0f} / {r['peak_torchvision']:.0f}"
        lines.append(
            f"| {r['batch']} | {r['fwd_ours']:.1f} | {r['fwd_torchvision']:.1f} | {r['fwd_ours'] / r['fwd_torchvision']:.2f}x "
            f"| {r['train_ours']:.1f} | {r['train_torchvision']:.1f} | {r['train_ours'] / r['train_torchvision']:.2f}x | {peak} |"
        )
    _write_atomic(out / "report.md", "\n".join(lines) + "\n")

    def draw(ax):
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [r["fwd_ours"] / r["fwd_torchvision"] for r in rows], 0.4, label="forward")
        ax.bar([i + 0.2 for i in xs], [r["train_ours"] / r["train_torchvision"] for r in rows], 0.4, label="train step")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(xs), [str(r["batch"]) for r in rows])
        ax.set_xlabel("batch size")
        ax.set_ylabel("speed, ours / torchvision")
        ax.set_title(f"alexnet_rs vs torchvision ({device})")

    chart = _chart(out / "chart.png", (6, 3.5), draw)
    print("\n".join(lines))
    print(f"\nwrote {out / 'report.md'}" + (f" and {chart}" if chart else ""))
    return d_logits


if __name__ == "__main__":
    main()
