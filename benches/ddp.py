"""Data-parallel training on the CPU: 2 ranks x 1 thread (torchrun, gloo) against 1 process x 2
threads, the same global batch, in one run; and the all-reduce time per step.

    .venv/bin/python benches/ddp.py [--preset paper] [--input-size 224] [--batch 16] [--steps 8]

Both sides run `python -m alexnet_rs.train` (the Rust loop). Images/s: the median over the timed
steps of metrics.jsonl's images_per_s (global images / step wall time, on rank 0); the first 2
steps are warm-up. All-reduce: each rank times `torch.distributed.all_reduce` (this script wraps
it) and rank 0's median per step is reported. Needs Fashion-MNIST (or --data).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(stats_file: str, args: list) -> int:
    """One rank under torchrun: alexnet_rs.train with a timed all_reduce."""
    import importlib

    import torch.distributed as dist

    entry = importlib.import_module("alexnet_rs.train")  # the module (`alexnet_rs.train` is a function)

    real, times = dist.all_reduce, []

    def timed(t, *a, **k):
        t0 = time.perf_counter()
        r = real(t, *a, **k)
        times.append((time.perf_counter() - t0, t.numel()))
        return r

    dist.all_reduce = timed
    code = entry.main(args)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(stats_file).write_text(json.dumps(times))
    return code


def images_per_s(run: Path, warmup: int) -> float:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[warmup:])


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16, help="global batch")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--data", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="alexnet-ddp-bench-") as d:
        tmp = Path(d)
        common = ["--preset", a.preset, "--input-size", str(a.input_size), "--torch-init", "--max-steps", str(a.steps),
                  "--epochs", "1", "--limit-train", str(a.batch * (a.steps + 1)), "--limit-test", str(a.batch),
                  "--threads", "1", "--keep", "1"] + (["--data", a.data] if a.data else [])
        py = sys.executable
        one = subprocess.run([py, "-m", "alexnet_rs.train", *common, "--batch-size", str(a.batch), "--out", tmp / "one"],
                             env=dict(os.environ, OMP_NUM_THREADS="2"), capture_output=True, text=True)
        assert one.returncode == 0, one.stderr[-2000:]
        stats = tmp / "all_reduce.json"
        two = subprocess.run([py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
                              "--rdzv-endpoint", "localhost:0", __file__, "--worker", str(stats), *common,
                              "--batch-size", str(a.batch // 2), "--out", str(tmp / "two")],
                             env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
        assert two.returncode == 0, two.stderr[-2000:]
        times = json.loads(stats.read_text())
        big = [t for t, n in times if n > 1000]  # the gradient buffer, not the evaluation's 4 sums
        i1, i2 = images_per_s(tmp / "one", 2), images_per_s(tmp / "two", 2)
        ar = statistics.median(big[2:]) if len(big) > 2 else float("nan")
        load = os.getloadavg()[0]
        print(f"{a.preset} {a.input_size}x{a.input_size}, global batch {a.batch}, {a.steps} steps (2 warm-up), "
              f"load {load:.2f}")
        print(f"1 process x 2 threads: {i1:.2f} images/s")
        print(f"2 ranks x 1 thread (gloo): {i2:.2f} images/s ({i2 / i1:.2f}x), all-reduce {ar * 1000:.1f} ms/step "
              f"({max(n for _, n in times) * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
