"""Data pipeline throughput: alexnet_rs's Rust loader against torchvision's ImageFolder +
transforms + DataLoader with the same number of workers, in one run.

    .venv/bin/python benches/data_loader.py [--threads 1 2] [--epochs 3]

Sets: the 100 ImageNet-like 512x512 JPEGs of the ai-benchmark wheel, and the same images plus
foolbox's re-encoded at 500x375 (JPEG quality 90), both as two-class image folders under
.cache/bench/. Work per image: decode + resize shorter side to 256 + random 224 crop + flip +
normalise (torchvision: Resize(256), RandomCrop(224), RandomHorizontalFlip, ToTensor, Normalize).
Ours also runs the paper's recipe (square centre crop + PCA colour noise). Prints images/s and
the per-core ratio (ours / torchvision) as a markdown table.
"""

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
BIN = ROOT / "target" / "release" / "alexnet"


def _two_class_folder(d, srcs, put):
    """`d` with `srcs` alternately in classes a/ and b/ (`put(src, folder, i)`), built beside it
    and renamed into place: an interrupted build is not reused as the whole set."""
    if d.exists():
        return d
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, p in enumerate(srcs):
        (tmp / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        put(p, tmp / "ab"[i % 2], i)
    tmp.rename(d)
    return d


def make_sets():
    src512 = sorted((CACHE / "data" / "ai_benchmark").glob("*.jpg"))
    if not src512:
        raise SystemExit("run `make setup` first (fetches the ai-benchmark images)")
    srcs = src512 + sorted((CACHE / "data" / "foolbox").glob("imagenet_*.jpg"))

    def reencode(p, folder, i):
        Image.open(p).convert("RGB").resize((500, 375), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)

    return {
        f"ai-benchmark 512x512 ({len(src512)})": _two_class_folder(
            CACHE / "bench" / "ai_benchmark_512", src512, lambda p, folder, i: (folder / p.name).symlink_to(p)),
        f"500x375 JPEG ({len(srcs)})": _two_class_folder(CACHE / "bench" / "jpeg_500x375", srcs, reencode),
    }


def ours(path, threads, epochs, preset):
    out = subprocess.run([BIN, "bench", "data", path, "--threads", str(threads), "--epochs", str(epochs),
                          "--preset", preset, "--batch-size", "64"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def torchvision_rate(path, threads, epochs):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = ImageFolder(path, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=threads,
                                     persistent_workers=True)
    for _ in dl:  # a whole epoch before timing: the workers started, nothing of it in flight
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in dl:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| set | workers | torchvision (img/s) | ours, torchvision recipe (img/s) | ratio | ours, paper recipe + PCA (img/s) |")
    print("|---|---|---|---|---|---|")
    for name, path in make_sets().items():
        for th in args.threads:
            tv = torchvision_rate(path, th, args.epochs)
            o = ours(path, th, args.epochs, "torchvision")
            p = ours(path, th, args.epochs, "paper")
            print(f"| {name} | {th} | {tv:.0f} | {o:.0f} | {o / tv:.2f}x | {p:.0f} |", flush=True)


if __name__ == "__main__":
    main()
