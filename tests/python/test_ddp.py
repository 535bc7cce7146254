"""DDP on CPU with 2 processes (gloo): identical parameters on both ranks, equal to one process
training on the concatenated batches."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, needs_fashion

pytestmark = needs_fashion
ARGS = ["--preset", "torchvision", "--input-size", "63", "--steps", "3", "--limit", "64", "--no-dropout",
        "--lr", "0.01", "--seed", "4"]


def test_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    r = subprocess.run([*torchrun, "-m", "alexnet_rs.ddp", *ARGS, "--batch-size", "4", "--out", tmp_path / "ddp"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "alexnet_rs.ddp", *ARGS, "--batch-size", "8", "--out", tmp_path / "one"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = load_file(tmp_path / "ddp" / "weights-rank0.safetensors")
    w1 = load_file(tmp_path / "ddp" / "weights-rank1.safetensors")
    single = load_file(tmp_path / "one" / "weights-rank0.safetensors")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(w0[k], single[k], rtol=1e-4, atol=1e-6, msg=f"DDP vs single process: {k}")
