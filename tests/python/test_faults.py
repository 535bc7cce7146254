"""Fault injection: `alexnet train` killed (``abort``: no unwinding, no cleanup, as SIGKILL) or
failing on a full disk (``enospc``) at each named point of checkpoint and metrics writing
(``ALEXNET_FAULT``, src/fault.rs). After every one, ``alexnet eval`` and Python's
``AlexNet.load_checkpoint`` read what is left, ``--resume`` finishes the run, and the result equals
the uninterrupted run: metrics.jsonl and epochs.csv byte for byte except their timing fields
(``images_per_s``, ``seconds``: wall-clock measurements, masked), the last checkpoint's weights
byte for byte, and no temporary folder left behind. Deterministic: no timers, no races.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import alexnet_rs
from conftest import image_folder

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "alexnet"

# cnn4 (the Fig. 1 network: small, so that 50 runs take a minute) at 28x28 on 64 training images
# in batches of 16: 4 steps per epoch, 2 epochs, a checkpoint every 2 steps. Saves: 1 (step 2), 2 (step 4), 3 (step 4 again at the epoch's end:
# a same-step replacement), 4 (6), 5 (8), 6 (8 again). Metrics writes: 1-4 (steps 1-4),
# 5 (epoch 1's row), 6-9 (steps 5-8), 10 (epoch 2's row).
FAULTS = [
    ("ckpt-tmp-partial", 3),
    ("ckpt-tmp-written", 3),
    ("ckpt-old-away", 1),  # the first replacement (save 3)
    ("ckpt-old-away", 2),  # the last save of the run (save 6)
    ("ckpt-renamed", 3),
    ("ckpt-before-prune", 3),
    ("metrics-mid-line", 3),  # a metrics.jsonl line
    ("metrics-mid-line", 5),  # an epochs.csv row
]
MODES = ["abort", "enospc"]


def train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--preset", "cnn4", "--input-size", "28", "--batch-size", "16", "--epochs", "2",
            "--seed", "3", "--data", str(data), "--checkpoint-every", "2", "--keep", "1", "--threads", "2",
            "--out", str(out)]


def alexnet(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ALEXNET_FAULT"}
    if fault:
        env["ALEXNET_FAULT"] = fault
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def masked(run: Path) -> tuple[str, str]:
    jsonl = re.sub(r'"images_per_s":[^,}]*', '"images_per_s":*', (run / "metrics.jsonl").read_text())
    csv = re.sub(r",[^,\n]*$", ",*", (run / "epochs.csv").read_text(), flags=re.M)
    return jsonl, csv


def last_weights(run: Path) -> bytes:
    last = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    return (last / "weights.safetensors").read_bytes()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("fault-data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    r = alexnet(*train_args(data, out))
    assert r.returncode == 0, r.stderr
    return out


def test_the_hook_rejects_an_unknown_point(tmp_path):
    r = alexnet("train", "--out", tmp_path, fault="ckpt-typo")
    assert r.returncode == 2 and "points: ckpt-tmp-partial" in r.stderr


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("point, n", FAULTS, ids=[f"{p}@{n}" for p, n in FAULTS])
def test_a_fault_loses_nothing(data, reference, tmp_path, point, n, mode):
    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault=f"{point}:{mode}@{n}")
    if mode == "abort":
        assert r.returncode == -signal.SIGABRT, r.stderr
    else:
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
    # What is left is readable: by the CLI, and by Python through the Rust validator.
    e = alexnet("eval", run, "--limit", "8")
    assert e.returncode == 0, e.stderr
    model = alexnet_rs.AlexNet.load_checkpoint(run)
    assert model.classes == ["class0", "class1"] and model.input_size == 28
    # --resume finishes the run, as if nothing had happened.
    r = alexnet("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    assert masked(run) == masked(reference)
    assert last_weights(run) == last_weights(reference)
    left = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert left == [], left


@pytest.mark.parametrize("mode", MODES)
def test_a_figure_that_cannot_be_written_does_not_stop_training(data, reference, tmp_path, mode):
    """curves.png is drawn from metrics.jsonl and epochs.csv at every epoch's end: a figure is
    derived data, so a full disk while writing it is a warning and training goes on (the next
    epoch redraws it); a kill while writing it leaves a `.partial` file that the resumed run
    replaces, and never a half-written curves.png. The figure comes after the epoch's checkpoint:
    a kill or a full disk while drawing it costs no training."""
    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault=f"figure-write:{mode}@1")
    if mode == "abort":
        assert r.returncode == -signal.SIGABRT, r.stderr
        assert not (run / "curves.png").exists()
        last = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
        state = json.loads((last / "state.json").read_text())
        assert (state["epoch"], state["batch_in_epoch"]) == (1, 0), state
        r = alexnet("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    if mode == "enospc":
        assert "warning:" in r.stderr and "curves.png" in r.stderr and "No space left" in r.stderr, r.stderr
    assert masked(run) == masked(reference)
    assert last_weights(run) == last_weights(reference)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in run.iterdir() if p.name.endswith(".partial")] == []


@pytest.mark.parametrize("mode", MODES)
def test_a_fault_while_resume_rewrites_the_metrics_loses_nothing(data, reference, tmp_path, mode):
    """A resume drops an unreadable metrics.jsonl line by rewriting the file (src/metrics.rs
    `cut`: `<name>.partial`, fsync, rename). Killed or out of disk between the write and the
    rename (`file-partial`), the old file stays whole (its history, the bad line included) and
    the next resume rewrites it and finishes the run."""
    run = tmp_path / "run"
    # Killed after step 3's update: checkpoint 2 and the metrics lines of steps 1 and 2.
    r = alexnet(*train_args(data, run), fault="train-step:abort@3")
    assert r.returncode == -signal.SIGABRT, r.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [l.startswith('{"step":') for l in lines] == [True, True], lines
    damaged = "garbage from a bad disk\n" + lines[1]
    (run / "metrics.jsonl").write_text(damaged)
    # The resume's writes: classes.json (1), the metrics rewrite (2).
    r = alexnet("train", "--resume", run, fault=f"file-partial:{mode}@2")
    partial = run / "metrics.jsonl.partial"
    if mode == "abort":
        assert r.returncode == -signal.SIGABRT, r.stderr
        assert partial.read_text() == lines[1]  # the fault hit the rewrite, not another file
    else:
        assert r.returncode == 1 and "No space left on device" in r.stderr and "metrics.jsonl" in r.stderr, r.stderr
        assert not partial.exists()
    assert (run / "metrics.jsonl").read_text() == damaged
    r = alexnet("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    assert "line 1 is unreadable and is dropped: garbage from a bad disk" in r.stderr, r.stderr
    assert not partial.exists()
    jsonl, csv = masked(run)
    ref_jsonl, ref_csv = masked(reference)
    assert jsonl == "".join(ref_jsonl.splitlines(keepends=True)[1:])  # all but step 1's line
    assert csv == ref_csv
    assert last_weights(run) == last_weights(reference)


def test_a_panic_is_an_error_line_in_the_cli_and_an_exception_in_python(data, tmp_path, monkeypatch):
    """A bug (a Rust panic) ends `alexnet` with one `error:` line and exit code 1 (not Rust's 101),
    and raises an AlexNetError in Python (not pyo3's PanicException, which `except Exception`
    does not catch). Rust's own "thread 'main' panicked at ..." lines came first; with
    RUST_BACKTRACE set they still do (a backtrace is asked for)."""
    monkeypatch.delenv("RUST_BACKTRACE", raising=False)
    r = alexnet(*train_args(data, tmp_path / "cli"), fault="train-step:panic")
    assert r.returncode == 1, r.stderr
    assert "error: internal error (a bug in alexnet_rs, please report it): ALEXNET_FAULT: panic at train-step" in r.stderr
    assert "panicked" not in r.stderr and "RUST_BACKTRACE" not in r.stderr, r.stderr
    code = ("import alexnet_rs\n"
            "try:\n"
            f"    alexnet_rs.train({{'preset': 'cnn4', 'input_size': 28, 'batch_size': 16, 'data': {str(data)!r},"
            f" 'out': {str(tmp_path / 'py')!r}}})\n"
            "except Exception as e:\n"
            "    print(isinstance(e, alexnet_rs.AlexNetError), e)\n")
    env = dict(os.environ, ALEXNET_FAULT="train-step:panic")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0 and p.stdout.startswith("True internal error"), p.stdout + p.stderr
    assert "panicked" not in p.stderr, p.stderr
    p = subprocess.run([BIN, *map(str, train_args(data, tmp_path / "bt"))], capture_output=True, text=True,
                       timeout=600, env=dict(env, RUST_BACKTRACE="1"))
    assert p.returncode == 1 and "panicked at" in p.stderr and "stack backtrace" in p.stderr, p.stderr


def test_a_signal_delivered_twice_at_once_is_one_request(data, tmp_path):
    """A torchrun worker gets a scheduler's SIGTERM to the job's process group and, milliseconds
    later, torchrun's forwarded copy: it took the copy for a second signal ("quit at once") and
    died before its checkpoint. A repeat within 2 s is the same request; a later one still quits."""
    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault="train-step:term2@3")
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert r.stderr.count("stopping after this step with a checkpoint") == 1, r.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "ckpt-000000003", r.stderr


def test_a_signal_during_the_start_up_ends_the_process_by_the_signal(data, tmp_path):
    """RELIABILITY.md: a signal before training starts ends the process by the signal itself. The
    handler was installed first: the run trained a step, wrote a checkpoint and exited 143, and
    rerunning the command was then refused ("already holds a run")."""
    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault="file-partial:term@1")  # classes.json, at the start
    assert "SIGTERM at file-partial" in r.stderr, r.stderr
    assert r.returncode == -signal.SIGTERM, r.stderr
    assert not (run / "checkpoints").exists()
    r = alexnet(*train_args(data, run))
    assert r.returncode == 0, r.stderr


def test_resuming_an_older_checkpoint_keeps_a_crashs_hidden_newer_one(data, tmp_path):
    """A kill left step 4's complete checkpoint hidden (`.ckpt-4.tmp`): `--resume` of ckpt-2 deleted
    it as a leftover, cut the metrics back to step 2 and trained on, instead of refusing to resume
    a checkpoint older than the run's newest."""
    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault="ckpt-tmp-written:abort@2")
    assert r.returncode == -signal.SIGABRT, r.stderr
    root = run / "checkpoints"
    assert (root / ".ckpt-000000004.tmp" / "state.json").is_file()
    r = alexnet("train", "--resume", root / "ckpt-000000002", "--max-steps", "1")
    assert r.returncode == 1 and "not the newest checkpoint of its run" in r.stderr, r.stderr
    assert (root / "ckpt-000000004" / "state.json").is_file()  # recovered, not deleted
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_resuming_the_checkpoints_folder_of_a_live_run_touches_nothing(data, tmp_path):
    """`--resume <run>/checkpoints` took its lock in checkpoints/ (not the run's), recovered the
    run under a training process (deleting the checkpoint it was writing) and only then was
    refused. Here this test holds the run's lock, as a training process does."""
    import fcntl

    run = tmp_path / "run"
    r = alexnet(*train_args(data, run), fault="ckpt-tmp-written:abort@2")
    assert r.returncode == -signal.SIGABRT, r.stderr
    hidden = run / "checkpoints" / ".ckpt-000000004.tmp"
    with open(run / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = alexnet("train", "--resume", run / "checkpoints", "--max-steps", "1")
    assert r.returncode == 1 and "being written by another training process" in r.stderr, r.stderr
    assert (hidden / "state.json").is_file()
    assert not (run / "checkpoints" / ".lock").exists()


def test_pythons_own_writes_replace_a_file_whole(tmp_path):
    """export_onnx, compare's reports and the ddp example write through _files.write_atomic, the
    Rust side's files::write: killed between the partial file and its rename, the old file is
    whole; failing there (a full disk), the old file stays and no partial one is left; unharmed,
    the new file replaces the old one whole."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    export = ("import sys, alexnet_rs; "
              "alexnet_rs.export_onnx(alexnet_rs.AlexNet('torchvision', num_classes=3), sys.argv[1])")

    def run(fault: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "ALEXNET_FAULT"}
        if fault:
            env["ALEXNET_FAULT"] = fault
        return subprocess.run([sys.executable, "-c", export, str(target)], capture_output=True, text=True,
                              timeout=300, env=env)

    r = run("file-partial:kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert target.read_bytes() == b"old"
    assert (tmp_path / "model.onnx.partial").read_bytes().startswith(b"\x08")  # the new one, not renamed
    (tmp_path / "model.onnx.partial").unlink()
    r = run("file-partial:enospc")
    assert r.returncode == 1 and f"AlexNetIOError: export_onnx: {target}: No space left on device" in r.stderr, r.stderr
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    r = run(None)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes().startswith(b"\x08")  # an ONNX ModelProto: field 1 (ir_version), a varint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
