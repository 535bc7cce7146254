"""Fine-tuning from the command line: `alexnet train --init-from` a torchvision state_dict (.pth,
read without running pickle code), an alexnet run, or a safetensors file, with `--freeze`: the
frozen tensors stay bit for bit those of the file, the class layer is re-initialised for the
dataset's classes, the rest trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from conftest import needs_fashion

pytestmark = needs_fashion
BIN = Path(__file__).resolve().parents[2] / "target" / "release" / "alexnet"
FEATURES = "features.0,features.3,features.6,features.8,features.10"
SMALL = ["--input-size", "63", "--epochs", "1", "--limit-train", "32", "--limit-test", "16", "--batch-size", "8",
         "--threads", "1"]


def train(*args, steps=3):
    return subprocess.run([BIN, "train", *SMALL, "--max-steps", str(steps), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))


def newest(run):
    return load_file(sorted((run / "checkpoints").glob("ckpt-*"))[-1] / "weights.safetensors")


@pytest.mark.parametrize("zipfile,crc", [(True, True), (False, True), (True, False)],
                         ids=["zip", "legacy", "zip-without-crc"])
def test_torchvision_pth_with_frozen_features(tmp_path, zipfile, crc):
    """zip-without-crc: torch.serialization.set_crc32_options(False) writes 0 for every entry's
    CRC-32 (torch.load reads it); it was refused as corrupt (CRC-32 mismatch)."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet()
    torch.serialization.set_crc32_options(crc)
    try:
        torch.save(tv.state_dict(), tmp_path / "tv.pth", _use_new_zipfile_serialization=zipfile)
    finally:
        torch.serialization.set_crc32_options(True)
    run = tmp_path / "run"
    r = train("--preset", "torchvision", "--init-from", tmp_path / "tv.pth", "--freeze", FEATURES, "--out", run)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "classifier.6 has 1000 outputs there and 10 here: it is re-initialised" in r.stderr
    got, file = newest(run), tv.state_dict()
    for k in file:
        if k.startswith("features."):
            assert torch.equal(got[k], file[k]), f"{k} is frozen"
        elif k.startswith("classifier.6"):
            assert got[k].shape[0] == 10, k
        else:
            assert not torch.equal(got[k], file[k]), f"{k} trains"


def test_init_from_a_run_and_a_safetensors_file(tmp_path):
    first = tmp_path / "first"
    assert train("--preset", "paper", "--torch-init", "--out", first).returncode == 0
    start = newest(first)
    second = tmp_path / "second"
    r = train("--preset", "paper", "--init-from", first, "--freeze", "conv1,fc6", "--out", second)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "another network" not in r.stderr
    got = newest(second)
    for k in start:
        same = torch.equal(got[k], start[k])
        assert same == (k.split(".")[0] in ("conv1", "fc6")), k
    save_file(start, tmp_path / "w.safetensors")
    r = train("--preset", "paper", "--init-from", tmp_path / "w.safetensors", "--freeze", "fc8", "--out",
              tmp_path / "third", steps=1)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.equal(newest(tmp_path / "third")["fc8.weight"], start["fc8.weight"])
    # A paper run's weights have the shapes of the caffe network's and of a paper network without
    # LRN: loaded in silence, they were taken for that network's.
    for extra, why in ((["--preset", "caffe"], "the paper preset, not caffe"),
                       (["--preset", "paper", "--no-lrn"], "with LRN, not without LRN")):
        other = tmp_path / extra[-1]
        r = train(*extra, "--init-from", first, "--freeze", "conv1", "--out", other, steps=1)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"--init-from {first}: trained as another network ({why}):" in r.stderr, r.stderr
        assert torch.equal(newest(other)["conv1.weight"], start["conv1.weight"])


@pytest.mark.parametrize("case", ["other-preset", "evil-pickle", "not-weights", "unknown-layer", "nan", "missing",
                                  "scalar-head", "optimizer-state", "frozen-new-head", "int-weights",
                                  "head-bias-of-this-network", "head-bias-of-another"])
def test_bad_init_and_freeze_are_clear_errors(tmp_path, case):
    if case == "int-weights":  # cast to float in silence, then trained to a NaN loss blamed on --lr
        sd = {k: (v * 100).long() for k, v in torchvision.models.alexnet().state_dict().items()}
        torch.save(sd, tmp_path / "int.pth")
        args, needle = ["--preset", "torchvision", "--init-from", tmp_path / "int.pth"], \
            "`classifier.1.bias` holds int64 values, not floating-point weights"
    elif case.startswith("head-bias"):
        # A class layer of 1000 rows with a bias of this network's 10: the warning said the layer
        # was re-initialised while its bias was the file's. And 10 rows with a bias of 1000.
        sd = torchvision.models.alexnet().state_dict()
        if case == "head-bias-of-this-network":
            sd["classifier.6.bias"] = torch.full((10,), 7.0)
            needle = "`classifier.6.bias` has shape [10], yet `classifier.6.weight` has 1000 rows"
        else:
            sd["classifier.6.weight"] = sd["classifier.6.weight"][:10].clone()
            needle = "`classifier.6.bias` has shape [1000], this network's is [10]"
        torch.save(sd, tmp_path / "mixed.pth")
        args = ["--preset", "torchvision", "--init-from", tmp_path / "mixed.pth"]
    elif case == "nan":  # trained to a NaN loss, blamed on --lr
        sd = torchvision.models.alexnet().state_dict()
        sd["features.3.weight"][0, 0, 0, 0] = float("nan")
        torch.save(sd, tmp_path / "nan.pth")
        args, needle = ["--preset", "torchvision", "--init-from", tmp_path / "nan.pth"], \
            "`features.3.weight` holds NaN or infinite values"
    elif case == "scalar-head":  # a 0-dim class layer weight panicked in the re-initialisation warning
        sd = torchvision.models.alexnet().state_dict()
        sd["classifier.6.weight"] = torch.tensor(1.0)
        save_file(sd, tmp_path / "scalar.safetensors")
        args, needle = ["--preset", "torchvision", "--init-from", tmp_path / "scalar.safetensors"], \
            "`classifier.6.bias` has shape [1000], this network's is [10]"  # not a new class layer
    elif case == "frozen-new-head":  # a random class layer, frozen: trained nothing, with a warning only
        torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "tv.pth")
        args, needle = ["--preset", "torchvision", "--init-from", tmp_path / "tv.pth", "--freeze",
                        f"{FEATURES},classifier.6"], "--freeze classifier.6: the class layer is re-initialised"
    elif case == "missing":  # a mistyped path without an extension was "not weights"
        args, needle = ["--preset", "paper", "--init-from", tmp_path / "tv"], "tv: no such file or folder"
    elif case == "other-preset":
        torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "tv.pth")
        args, needle = ["--preset", "paper", "--init-from", tmp_path / "tv.pth"], "no tensor `conv1.bias`"
    elif case == "evil-pickle":
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pth")
        args, needle = ["--preset", "paper", "--init-from", tmp_path / "evil.pth"], "system"
    elif case == "optimizer-state":  # the momentum has the weights' names and shapes: it was taken as them
        sd = {k: v * 0 for k, v in torchvision.models.alexnet().state_dict().items()}
        (tmp_path / "ckpt").mkdir()
        save_file(sd, tmp_path / "ckpt" / "optimizer.safetensors")
        args, needle = ["--preset", "torchvision", "--init-from", tmp_path / "ckpt" / "optimizer.safetensors"], \
            "optimizer.safetensors: a checkpoint's optimizer state (momentum), not weights"
    elif case == "not-weights":
        (tmp_path / "w.txt").write_text("hello")
        args, needle = ["--preset", "paper", "--init-from", tmp_path / "w.txt"], "expected an alexnet run"
    else:
        args, needle = ["--preset", "torchvision", "--freeze", "conv1"], "no layer `conv1` with parameters"
    # An earlier run's metrics in the folder: they were moved to earlier-1/ (and classes.json
    # written) before the weights were found wrong.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    r = train(*args, "--out", tmp_path / "run")
    assert r.returncode == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name != ".lock") == ["metrics.jsonl"]
    assert "panicked" not in r.stderr
    if case == "evil-pickle":
        assert not marker.exists(), "the pickle's code ran"


def test_a_pth_is_read_as_views_of_its_storages(tmp_path):
    """A .pth holds storages, its tensors views of them. Read as one copy of the storage per
    tensor, 64 views of one 32 MiB buffer took 2 GB; made contiguous, a broadcast of one element
    to 2^20 x 2^20 (a file of a few hundred bytes) asked for 4 TiB. Views until the network's
    own tensors are copied out: the memory is the file's, and the broadcast is a shape error."""
    flat = torch.zeros(8 << 20)
    torch.save({f"p{k}": flat[k * 1000:(k + 1) * 1000] for k in range(64)}, tmp_path / "views.pth")
    peak = subprocess.run(
        [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], "
         "capture_output=True, text=True); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN)"
         ".ru_maxrss // 1024); print(r.stderr)",
         BIN, "train", *SMALL, "--preset", "torchvision", "--init-from", tmp_path / "views.pth", "--out",
         tmp_path / "run"], capture_output=True, text=True, timeout=600)
    rc, mib = map(int, peak.stdout.split("\n")[0].split())
    assert rc == 1 and "no tensor `classifier.1.bias`" in peak.stdout, peak.stdout
    assert mib < 1000, f"peak RSS {mib} MiB for a 32 MiB file"
    sd = torchvision.models.alexnet().state_dict()
    sd["features.0.weight"] = torch.zeros(1).expand(1 << 20, 1 << 20)
    torch.save(sd, tmp_path / "broadcast.pth")
    r = train("--preset", "torchvision", "--init-from", tmp_path / "broadcast.pth", "--out", tmp_path / "run")
    assert r.returncode == 1 and "`features.0.weight` has shape [1048576, 1048576], this network's is [64, 3, 11, 11]" \
        in r.stderr, r.stderr
