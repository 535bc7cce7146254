"""The `alexnet` command line: its numbers, its help, and clear errors for bad flags and files."""

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import alexnet_rs
from conftest import needs_fashion

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "alexnet"
IMG = ROOT / ".cache" / "data" / "foolbox" / "imagenet_00_243.jpg"


def run(*args):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_info_numbers():
    paper = run("info", "--preset", "paper").stdout
    assert "total parameters: 60,965,224" in paper and "spatial sizes: 224 -> 55 -> 27 -> 13 -> 6" in paper
    assert "total parameters: 61,100,840" in run("info", "--preset", "torchvision").stdout
    assert "227 -> 55 -> 27 -> 13 -> 6" in run("info", "--preset", "caffe").stdout


@pytest.mark.parametrize("preset", ["paper", "torchvision", "caffe", "cnn4"])
def test_info_columns_line_up(preset):
    """torchvision's `features.10.pool` overflowed the 14-wide name column and pushed its row's
    op out of line."""
    lines = run("info", "--preset", preset).stdout.splitlines()
    table = lines[1:lines.index(next(ln for ln in lines if ln.startswith(("spatial", "total"))))]
    assert len(table) > 5
    ops = {ln.index(ln.split()[1], len(ln.split()[0])) for ln in table if ln.strip()}
    assert len(ops) == 1, table


@pytest.mark.parametrize("sub", ["", "info", "forward", "train", "eval", "predict", "placement", "stats", "prepare",
                                 "bench", "bench data", "bench train", "experiment"])
def test_help(sub):
    r = run(*sub.split(), "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout


def test_placement_table_is_the_same_from_python():
    r = run("placement", "--preset", "paper", "--devices", "cpu,cpu")
    assert r.returncode == 0
    assert r.stdout == alexnet_rs.Placement("paper", "cpu,cpu").table()
    # At another input size fc6 has another size: Python's table always showed the preset's.
    small = run("placement", "--preset", "paper", "--devices", "cpu,cpu", "--input-size", "63")
    assert small.returncode == 0 and small.stdout != r.stdout
    assert small.stdout == alexnet_rs.Placement("paper", "cpu,cpu", input_size=63).table()
    rows = {(name, shard, device + " " + slot) for name, shard, device, slot in
            (line.split()[:4] for line in r.stdout.splitlines()[2:] if not line.startswith("total"))}
    assert ("fc8.weight", "0..1000", "cpu #0") in rows  # the class layer: whole, on the first device
    assert {("conv1.weight", "0..48", "cpu #0"), ("conv1.weight", "48..96", "cpu #1")} <= rows
    # Each device's total, told apart: halves of every layer, and the whole class layer on #0.
    totals = [int(n.replace(",", "")) for n in re.findall(r"^total on cpu #[01]: ([\d,]+) parameters$", r.stdout, re.M)]
    shapes = dict(alexnet_rs.param_shapes("paper"))
    numel = {k: math.prod(v) for k, v in shapes.items()}
    assert len(totals) == 2 and sum(totals) == sum(numel.values())
    assert totals[0] - totals[1] == numel["fc8.weight"] + numel["fc8.bias"]


def test_forward_on_a_real_photo():
    r = run("forward", "--preset", "caffe", IMG)
    assert r.returncode == 0, r.stderr
    assert "labels [243]" in r.stdout and "logits [1, 1000]" in r.stdout


def test_forward_labels_from_names_and_on_two_devices(tmp_path):
    # The label is the number after the last `_` (--help), else 0: `5.png` was label 5, and
    # `2024.png` an error.
    for name in ("5.png", "2024.png", "x_7.png"):
        shutil.copy(IMG, tmp_path / name)
    r = run("forward", "--preset", "cnn4", "--num-classes", "10", *(tmp_path / n for n in ("5.png", "2024.png", "x_7.png")))
    assert r.returncode == 0, r.stderr
    assert "labels [0, 0, 7]" in r.stdout
    # --devices: the paper's two-tower split computes the same loss as one device.
    loss = {}
    for devices in ("cpu", "cpu,cpu"):
        r = run("forward", "--preset", "paper", "--devices", devices, IMG)
        assert r.returncode == 0, r.stderr
        loss[devices] = float(re.search(r"loss ([0-9.]+)", r.stdout)[1])
    assert loss["cpu"] == pytest.approx(loss["cpu,cpu"], abs=2e-4) and loss["cpu"] > 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["info", "--preset", "vgg"], "possible values: paper, torchvision, caffe"),
        (["info", "--input-size", "32"], "too small"),
        # info runs no convolution: the flag was accepted and did nothing
        (["info", "--conv-backend", "ours"], "unexpected argument '--conv-backend'"),
        (["placement", "--devices", "cpu", "--input-size", "32"], "too small"),
        (["train", "--lr=-1", "--limit-train", "64"], "lr must be positive"),
        (["train", "--lr", "-1", "--limit-train", "64"], "lr must be positive"),  # was "unexpected argument '-1'"
        (["train", "--momentum", "-0.5", "--limit-train", "64"], "momentum"),
        # Past the pipeline's limit: aborted on a 120 GB allocation, or failed in libtorch's allocator.
        (["forward", "--input-size", "100000", "/etc/hostname"], "input size 100000 is over the limit of 8192"),
        (["bench", "data", "/etc", "--crop", "100000"], "100000 is not in 1..=8192"),
        (["prepare", "/etc", "/tmp/x", "--size", "100000"], "100000 is not in 1..=8192"),
        # --out checked before the data is read (it failed after the whole pass, with "Is a directory").
        (["stats", "/no/such/data", "--out", "/tmp"], "/tmp: is a folder: give the statistics a file name"),
        (["stats", "/no/such/data", "--out", "new/"], "new/: is a folder: give the statistics a file name"),
        (["stats", "/no/such/data", "--out", "/etc/hostname/s.st"], "/etc/hostname: is a file, not a folder"),
        (["train", "--update-rule", "adam"], "possible values: paper, pytorch"),
        (["train", "--devices", "tpu:0"], "unknown device"),
        (["train", "--data", "/no/such/folder", "--limit-train", "8"], "/no/such/folder"),
        (["stats", "/dev/null"], "/dev/null: is neither a file nor a folder"),  # "no such file or folder"
        (["eval", "/no/such/run"], "/no/such/run"),
        # "Not a directory (os error 20)"; "evaluation set is empty", naming no flag
        (["eval", "/etc/hostname"], "/etc/hostname: is a file: expected a run folder or a checkpoint folder"),
        (["eval", "--limit", "0", "/no/such/run"], "invalid value '0' for '--limit <LIMIT>'"),
        # "input size 28 is too small ...": 28 was the experiment's, for cnn4, never given
        (["experiment", "relu-vs-tanh", "--preset", "paper", "--out", "/nonexistent/x"],
         "(input size 28: the relu-vs-tanh experiment's default for the cnn4 network; give --input-size for paper)"),
        (["forward", "/etc/hostname"], "not a recognised image format"),
        (["forward", "--label", "-1", IMG], "--label (-1) is outside 0..1000"),  # it blamed the image
        (["placement", "--devices", "cpu,cpu,cpu"], "one or two devices"),
        (["experiment", "vgg"], "possible values: relu-vs-tanh, lrn, overlap-pool, dropout"),
        (["experiment", "lrn", "--resume", "runs/x"], "unexpected argument '--resume'"),
        (["experiment", "lrn", "--auto-resume"], "unexpected argument '--auto-resume'"),  # it was ignored
        (["experiment", "relu-vs-tanh", "--target-errors", "1.5"], "--target-errors must be fractions"),
        (["experiment", "lrn", "--seeds", "0"], "--seeds must be >= 1"),
        # counted 0 runs ("[1/0]") in a release build, panicked in a debug one
        (["experiment", "lrn", "--seeds", "9223372036854775808"], "is too many runs to count"),
        # only relu-vs-tanh times training errors: the others ignored the flag without a word
        (["experiment", "lrn", "--target-errors", "0.2", "--out", "/nonexistent/x"],
         "--target-errors times relu-vs-tanh's runs"),
        (["experiment", "relu-vs-tanh", "--lrs", "0.01,nan"], "expected a finite number"),
        (["experiment", "relu-vs-tanh", "--lrs=0.01,-1", "--out", "/nonexistent/x"], "lr must be positive, got -1"),
        (["train", "--dropout", "1", "--limit-train", "64"], "dropout must be in [0, 1)"),
        # nan/inf are refused, not dropped as an unset option (which was: no budget, dropout 0.5)
        (["train", "--time-budget", "nan"], "expected a finite number"),
        (["train", "--dropout", "nan"], "expected a finite number"),
        (["train", "--momentum", "inf"], "expected a finite number"),
        (["train", "--time-budget=-1", "--limit-train", "64"], "time_budget_s must be a number of seconds >= 0"),
        (["train", "--eval-every", "0", "--limit-train", "64"], "eval_every is a number of epochs"),
        (["train", "--epochs", "0", "--limit-train", "64"], "epochs is a number of epochs and must be >= 1"),
        (["train", "--activation", "sigmoid"], "possible values: relu, tanh"),
        (["train", "--reset", "lrn", "--no-lrn"], "--reset lrn and --no-lrn are both given"),
        (["experiment", "lrn", "--reset", "limit-train", "--limit-train", "64"], "--reset limit_train and --limit-train"),
        (["train", "--reset", "rate"], "--reset rate: no such setting"),
        (["bench", "train", "--steps", "0"], "invalid value '0' for '--steps <STEPS>'"),
        (["bench", "train", "--batch", "0"], "invalid value '0' for '--batch <BATCH>'"),
        # libtorch's refusal of 2^32 threads was a panic ("internal error"); 2^32 + 2 ran on 2
        (["bench", "train", "--threads", "4294967296"], "invalid value '4294967296' for '--threads"),
        (["bench", "train", "--threads", "257"], "257 is not in 1..=256"),
        (["bench", "train", "--preset", "cnn4", "--sides", "ours", "--batch", "100000000000"],
         "--batch 100000000000: its input cannot be made"),  # was libtorch's allocator, as a bug
        (["forward", "--devices", "cuda:7", IMG], "cuda:7 does not exist here"),
        (["bench", "train", "--sides", "ours,ours"], "--sides lists ours twice"),  # a ratio of a side to itself
        # ours over two devices against anchors on one: a ratio of different hardware
        (["bench", "train", "--devices", "cpu,cpu", "--sides", "ours,eager"], "the PyTorch anchors run on one"),
        (["bench", "train", "--devices", "cuda:0", "--sides", "eager-cached"], "is not the CPU"),
        # found after our side had been measured (minutes at 224), or in the anchor's traceback
        (["bench", "train", "--devices", "cuda:7", "--sides", "eager"], "cuda:7 does not exist here"),
        (["bench", "train", "--sides", "ours,eager", "--python", "/nonexistent/python"],
         "/nonexistent/python: No such file or directory"),
        (["bench", "train", "--sides", "ours,eager", "--python", "/bin/false"], "/bin/false cannot import torch"),
        (["info", "--num-classes", "9999999999999"], "num_classes must be in 1..=1000000"),  # 40e15 parameters
        # read until the OOM killer ended it (23 GB resident)
        (["train", "--config", "/dev/zero"], "/dev/zero: is over 16 MiB: not a settings or state file"),
    ],
)
def test_bad_flags_and_files_are_clear_errors(args, needle):
    r = run(*args)
    assert r.returncode != 0
    assert needle in r.stderr, r.stderr
    assert "panicked" not in r.stderr and "RUST_BACKTRACE" not in r.stderr and "internal error" not in r.stderr


def test_the_experiments_input_size_note_is_for_its_own_default_alone():
    # It told to give --input-size when it was given.
    r = run("experiment", "relu-vs-tanh", "--preset", "paper", "--input-size", "28", "--out", "/nonexistent/x")
    assert r.returncode != 0 and "too small" in r.stderr and "experiment's default" not in r.stderr, r.stderr


def test_bench_data_over_images_none_of_which_reads_is_an_error(tmp_path):
    # It printed "0 images in 0.00 s ... 0.0 images/s, 4 skipped" and exited 0.
    (tmp_path / "list.txt").write_text("".join(f"gone{i}.png {i % 2}\n" for i in range(4)))
    r = run("bench", "data", tmp_path / "list.txt", "--crop", "16", "--batch-size", "2", "--epochs", "1")
    assert r.returncode != 0 and "no image could be read (4 skipped): nothing to time" in r.stderr, r.stderr


def test_bench_eager_cached_checks_its_python_imports_alexnet_rs_before_measuring(tmp_path):
    # A Python with torch but without the wheel (the system's, say) failed in the anchor's
    # traceback once our side had been measured (minutes at 224): only `import torch` was checked.
    shadow = tmp_path / "shadow" / "alexnet_rs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no alexnet_rs in this Python')\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shadow.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    small = ["--preset", "torchvision", "--batch", "1", "--steps", "1", "--threads", "1", "--python", python]
    r = run("bench", "train", "--sides", "ours,eager-cached", *small)
    assert r.returncode != 0
    assert "cannot import torch and alexnet_rs (eager-cached)" in r.stderr and "no alexnet_rs in this Python" in r.stderr, r.stderr
    assert r.stdout == "", r.stdout  # nothing measured
    r = run("bench", "train", "--sides", "ours,eager", *small)
    assert r.returncode == 0, r.stderr  # the plain anchor needs torch alone


def test_reset_puts_back_a_files_settings_and_leaves_a_resumed_runs_own(tmp_path):
    """--reset undoes what --config set (a switch, an optional value); with --resume a reset key
    is not given, so the run keeps its own value (it trained on with the built-in default, and
    --reset out wrote the checkpoint into runs/train)."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'preset = "cnn4"\ninput_size = 28\nepochs = 3\nlimit_train = 16\ntorch_init = true\n'
                   f'batch_size = 8\nthreads = 1\ndata = "{data}"\n')
    run_dir = tmp_path / "run"
    r = run("train", "--config", cfg, "--reset", "limit_train,torch-init", "--max-steps", "1", "--out", run_dir)
    assert r.returncode == 0, r.stderr
    state = lambda: json.loads(sorted((run_dir / "checkpoints").glob("ckpt-*"))[-1].joinpath("state.json").read_text())  # noqa: E731
    config = state()["config"]
    assert (config["limit_train"], config["torch_init"], config["epochs"]) == (None, False, 3), config
    r = run("train", "--resume", run_dir, "--reset", "epochs,out", "--max-steps", "1")
    assert r.returncode == 0, r.stderr
    assert state()["config"]["epochs"] == 3 and state()["step"] == 2, state()
    assert "warning" not in r.stderr, r.stderr


def test_auto_resume_of_a_missing_run_does_not_say_it_resumes(tmp_path):
    # The folder --out has no checkpoint, so --resume's run is the one: it was announced as
    # "resuming the run in /no/such/run" before the error that it does not exist.
    r = run("train", "--auto-resume", "--resume", "/no/such/run", "--out", str(tmp_path / "new"), "--limit-train", "8")
    assert r.returncode != 0
    assert "/no/such/run" in r.stderr and "resuming" not in r.stderr, r.stderr


@needs_fashion
def test_experiment_from_the_command_line(tmp_path):
    args = ["experiment", "relu-vs-tanh", "--seeds", "1", "--lrs", "0.01,0.03", "--target-errors", "0.99",
            "--limit-train", "640", "--limit-test", "64", "--batch-size", "32", "--epochs", "1", "--out", tmp_path]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    # One row per activation x rate; the 99 % target is met when the first 10-batch window is full.
    for row in ["| relu | 0.01 | 10 | 10 |", "| relu | 0.03 | 10 | 10 |", "| tanh | 0.01 | 10 | 10 |"]:
        assert row in r.stdout, r.stdout
    assert (tmp_path / "relu-vs-tanh.md").read_text() in r.stdout
    assert "[4/4]" in r.stderr
    again = run(*args)
    assert again.returncode == 0 and again.stderr.count("reusing") == 4


def test_bench_train_runs_its_pytorch_anchor_from_any_directory(tmp_path):
    """From outside the checkout, `bench train` ran the anchor with the system's python3 (no torch
    there: ModuleNotFoundError); it takes the venv the binary was built against."""
    args = ["bench", "train", "--sides", "ours,eager", "--batch", "1", "--steps", "1", "--threads", "1"]
    r = subprocess.run([BIN, *args, "--preset", "torchvision"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "eager" in r.stdout, r.stdout
    # Eager inside our caching allocator, as a side of its own (the README's claim for cpu_cache()).
    r = subprocess.run([BIN, *args[:2], "--sides", "eager,eager-cached", *args[4:], "--preset", "torchvision"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0 and "| PyTorch eager in cpu_cache() |" in r.stdout, r.stderr[-2000:]
    # A preset the anchors do not have is refused before anything is measured (it failed after ours).
    r = subprocess.run([BIN, *args, "--preset", "cnn4"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 1 and "not cnn4" in r.stderr and "images/s" not in r.stdout, r.stderr
    # Our side's non-default options are told in the header and the JSON line (a run with them
    # read as the default's).
    r = subprocess.run([BIN, "bench", "train", "--sides", "ours", "--preset", "cnn4", "--batch", "2", "--steps", "1",
                        "--channels-last", "--no-cpu-cache"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "ours with --no-cpu-cache --channels-last" in r.stdout, r.stderr[-2000:]
    assert json.loads(r.stdout.splitlines()[-1])["ours_options"] == ["--no-cpu-cache", "--channels-last"]


def test_experiment_settings_from_a_file_keep_the_experiments_defaults(tmp_path):
    """`--config` lays the file's settings over the experiment's defaults (relu-vs-tanh: cnn4 at 28,
    no weight decay, constant lr), as flags do, not over `alexnet train`'s; an `lr` in the file
    replaces the lr sweep as `--lr` does."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    cfg = tmp_path / "e.toml"
    cfg.write_text(f'lr = 0.05\nbatch_size = 16\nepochs = 1\ndata = "{data}"\nout = "{tmp_path / "exp"}"\n')
    r = run("experiment", "relu-vs-tanh", "--config", cfg, "--seeds", "1", "--target-errors", "0.99")
    assert r.returncode == 0, r.stderr
    assert "[2/2]" in r.stderr, r.stderr  # the file's lr alone, not the sweep of three
    runs = sorted(p.name for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert [r[:-9] for r in runs] == ["cnn4-28-relu-lr0.05-seed0", "cnn4-28-tanh-lr0.05-seed0"], runs
    config = json.loads((tmp_path / "exp" / runs[0] / "result.json").read_text())["config"]
    assert (config["weight_decay"], config["schedule"], config["batch_size"]) == (0.0, "constant", 16), config


def test_experiments_sharing_a_root_share_the_baseline_without_deleting_it(tmp_path):
    """Two ablations in one root (README: they share their baseline runs): the second waits for the
    baseline the first is training and then reuses it; it used to delete it as an unfinished run
    (the first then finished with half its metrics and no classes.json)."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    # lr 0.003: the paper network without LRN diverged at 0.01 on these images (a NaN at step 20).
    common = ["--seeds", "1", "--data", data, "--batch-size", "8", "--epochs", "40", "--limit-test", "8",
              "--lrs", "0.003", "--threads", "1", "--out", tmp_path / "exp"]
    first = subprocess.Popen([BIN, "experiment", "dropout", *map(str, common)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while (not list((tmp_path / "exp").glob("paper-63-relu-lr0.003-seed0-*/metrics.jsonl"))
           and first.poll() is None and time.monotonic() < deadline):
        time.sleep(0.02)
    [baseline] = (tmp_path / "exp").glob("paper-63-relu-lr0.003-seed0-*")  # the shared one
    second = run("experiment", "lrn", *common)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert "waiting for another process" in second.stderr, second.stderr
    assert f"reusing {baseline / 'result.json'}" in second.stderr, second.stderr
    assert len((baseline / "metrics.jsonl").read_text().splitlines()) == 320  # 40 epochs of 8 steps
    assert (baseline / "classes.json").is_file() and len((baseline / "epochs.csv").read_text().splitlines()) == 9


@needs_fashion
def test_progress_and_results_that_cannot_be_written_cost_no_checkpoint(tmp_path):
    """A stderr on a full disk (here /dev/full) made the first progress line panic, and the run
    died before its first checkpoint; a stdout that cannot be written (`eval > /dev/full`)
    panicked with a backtrace. Progress output is best effort; a result is a clear error."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([BIN, "train", "--preset", "cnn4", "--input-size", "28", "--epochs", "2", "--limit-train",
                            "64", "--limit-test", "16", "--batch-size", "8", "--out", tmp_path],
                           stdout=subprocess.PIPE, stderr=full, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("final: top-1"), r.stdout
        assert (tmp_path / "checkpoints" / "ckpt-000000016" / "state.json").is_file()
        for args in (["eval", tmp_path, "--limit", "16"], ["info"], ["predict", tmp_path, IMG], ["--help"]):
            r = subprocess.run([BIN, *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
            assert r.returncode == 1 and "error: stdout: No space left on device" in r.stderr, (args, r.stderr)
            assert "panicked" not in r.stderr


@needs_fashion
def test_train_without_a_terminal_still_reports_epochs_and_checkpoints(tmp_path):
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--epochs", "2", "--limit-train", "100",
            "--limit-test", "64", "--batch-size", "1", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch   1 step     100: train loss" in r.stderr and "epoch   2 step     200:" in r.stderr
    # Every 100 steps a progress line, epochs counted from 1 there too (its first said "epoch 0").
    assert "epoch 1 step 100: loss" in r.stderr and "epoch 2 step 200: loss" in r.stderr, r.stderr
    assert "epoch 0" not in r.stderr
    assert f"checkpoint {tmp_path}/checkpoints/ckpt-000000200" in r.stderr


def test_a_run_keeps_its_stats_file_and_works_from_any_directory(tmp_path):
    """A run trained with `--stats` by a relative path: predict, eval and `--resume` from another
    working directory, after the original file is gone, read the run's own copy."""
    from conftest import image_folder

    work = tmp_path / "work"
    image_folder(work / "data")

    def cli(*args, cwd):
        r = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)
        assert r.returncode == 0, r.stderr
        return r

    cli("stats", "data", "--size", "32", "--out", "s.safetensors", cwd=work)
    cli("train", "--preset", "paper", "--input-size", "63", "--torch-init", "--data", "data", "--stats",
        "s.safetensors", "--batch-size", "16", "--max-steps", "2", "--threads", "1", "--out", "run", cwd=work)
    assert (work / "run" / "stats.safetensors").read_bytes() == (work / "s.safetensors").read_bytes()
    # Stored absolute, as --data is (it was relative to the working directory of the train).
    state = json.loads(next((work / "run" / "checkpoints").glob("ckpt-*/state.json")).read_text())
    assert state["config"]["stats"] == str(work / "s.safetensors"), state["config"]
    query = Path("data") / "val" / "class1" / "0.png"
    here = cli("predict", "run", query, cwd=work).stdout
    (work / "s.safetensors").unlink()
    there = cli("predict", work / "run", work / query, cwd=tmp_path).stdout
    assert there == here.replace(str(query), str(work / query)) and "class1" in there
    cli("eval", work / "run", "--data", work / "data", cwd=tmp_path)
    cli("train", "--resume", work / "run", "--data", work / "data", "--max-steps", "1", cwd=tmp_path)


def test_a_resume_with_other_statistics_is_refused_and_keeps_the_runs_copy(tmp_path):
    """`--resume RUN --stats OTHER` overwrote the run's stats copy in silence: every earlier
    checkpoint of the run then evaluated (and predicted) with other normalisation numbers. The same
    file moved elsewhere is what `--stats` on a resume is for."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    for name, limit in (("a", "16"), ("b", "32")):
        assert run("stats", data, "--size", "32", "--limit", limit, "--out", tmp_path / f"{name}.safetensors").returncode == 0
    common = ["--batch-size", "8", "--max-steps", "1", "--threads", "1"]
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--stats", tmp_path / "a.safetensors",
            *common, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    before = run("eval", tmp_path / "run").stdout
    r = run("train", "--resume", tmp_path / "run", "--stats", tmp_path / "b.safetensors", *common)
    assert r.returncode == 1 and "b.safetensors" in r.stderr and "other statistics" in r.stderr, r.stderr
    assert (tmp_path / "run" / "stats.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    assert run("eval", tmp_path / "run").stdout == before
    # The same numbers from another place: taken.
    (tmp_path / "a.safetensors").rename(tmp_path / "moved.safetensors")
    r = run("train", "--resume", tmp_path / "run", "--stats", tmp_path / "moved.safetensors", *common)
    assert r.returncode == 0, r.stderr
    # A run trained without statistics does not take some on a resume either.
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, *common, "--out", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    r = run("train", "--resume", tmp_path / "plain", "--stats", tmp_path / "b.safetensors", *common)
    assert r.returncode == 1 and "without --stats" in r.stderr, r.stderr


def test_a_run_without_stats_does_not_take_an_earlier_runs_copy(tmp_path):
    """A run with --stats that stopped before its first checkpoint left its stats copy in the
    folder; a new run there without --stats trained without them, but eval, predict and --resume
    normalised its checkpoints with that copy."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    assert run("stats", data, "--size", "32", "--out", tmp_path / "s.safetensors").returncode == 0
    common = ["--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "8", "--max-steps", "1",
              "--threads", "1", "--out", tmp_path / "run"]
    assert run("train", *common, "--stats", tmp_path / "s.safetensors").returncode == 0
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if it had died before its first checkpoint
    earlier = {f: (tmp_path / "run" / f).read_bytes() for f in ("metrics.jsonl", "stats.safetensors")}
    r = run("train", *common)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run" / "stats.safetensors").exists()
    # The earlier run's files are set aside, not deleted (its metrics were removed without a word).
    assert f"moved to {tmp_path / 'run' / 'earlier-1'}" in r.stderr, r.stderr
    assert {f: (tmp_path / "run" / "earlier-1" / f).read_bytes() for f in earlier} == earlier
    # A run's own --stats file kept in its folder is not an earlier run's: it stays, and is used.
    own = tmp_path / "own"
    assert run("stats", data, "--size", "32", "--out", own / "stats.safetensors").returncode == 0
    r = run("train", *common[:-2], "--stats", own / "stats.safetensors", "--out", own)
    assert r.returncode == 0 and not (own / "earlier-1").exists(), r.stderr
    assert (own / "stats.safetensors").read_bytes() == (tmp_path / "s.safetensors").read_bytes()
    r = run("train", *common[:-2], "--out", tmp_path / "plain")
    assert r.returncode == 0, r.stderr
    assert run("eval", tmp_path / "run").stdout == run("eval", tmp_path / "plain").stdout


def test_a_training_set_of_unreadable_images_is_an_error_not_a_run(tmp_path):
    # Every training image zero bytes: 3 "epochs" of 0 steps, train loss 0.0000, a checkpoint of
    # the untrained weights, exit 0.
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    for f in (data / "train").rglob("*.png"):
        f.write_bytes(b"")
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "8", "--epochs", "3",
            "--threads", "1", "--out", tmp_path / "run")
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"{data}: no training image of epoch 1 could be read (64 skipped): nothing to train on" in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    # Every test image unreadable: named as a data problem, not "configuration error".
    data2 = image_folder(tmp_path / "data2")
    for f in (data2 / "val").rglob("*.png"):
        f.write_bytes(b"")
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data2, "--batch-size", "8", "--max-steps", "1",
            "--threads", "1", "--out", tmp_path / "run2")
    assert r.returncode == 1 and "no image of the evaluation set could be read (16 skipped)" in r.stderr, r.stderr


def test_a_dataset_without_a_test_split_says_it_validates_on_the_training_images(tmp_path):
    from conftest import image_folder

    data = image_folder(tmp_path / "data") / "train"
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "8", "--max-steps", "1",
            "--threads", "1", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"warning: {data} has no test split (a val/ or test/ folder beside train/): its training images serve as the test split" \
        in r.stderr


def test_a_dataset_with_val_and_test_folders_says_which_one_it_evaluates_on(tmp_path):
    """With val/ and test/ beside train/ (ImageNet's layout, its test/ often unlabelled), val/ is
    the test split: said, not left for the user to guess."""
    import shutil

    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    shutil.copytree(data / "val", data / "test")
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "8", "--max-steps", "1",
            "--threads", "1", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"warning: {data} has both val/ and test/: val/ is the test split (test/ is not read)" in r.stderr, r.stderr


def test_top5_of_five_classes_or_fewer_is_said_to_be_one(tmp_path):
    """With at most 5 classes top-5 counts every class: 1 by construction, printed as a result."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--batch-size", "8", "--max-steps", "1",
            "--threads", "1", "--out", tmp_path / "run")
    assert r.returncode == 0 and "note: 2 classes: top-5 counts every one of them (always 1)" in r.stderr, r.stderr
    r = run("eval", tmp_path / "run")
    assert r.returncode == 0 and "note: 2 classes: top-5 counts every one of them" in r.stderr, r.stderr


def test_experiment_runs_of_other_settings_live_beside_each_other(tmp_path):
    """An experiment's run folder is named by the settings that shape its result: a rerun with
    another --epochs trains new runs beside the finished ones (it deleted them and retrained in
    their place, leaving the earlier summary pointing at other numbers), and a rerun that changes
    nothing that shapes a result (--threads, the spelling of --out) reuses them (it retrained)."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    common = ["relu-vs-tanh", "--seeds", "1", "--lrs", "0.05", "--data", data, "--batch-size", "16",
              "--target-errors", "0.99", "--limit-test", "8"]
    first = subprocess.run([BIN, "experiment", *map(str, common), "--epochs", "1", "--threads", "1", "--out", "exp"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    runs = sorted(p for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert len(runs) == 2 and all(p.name.startswith("cnn4-28-") for p in runs), runs
    results = {p: (p / "result.json").read_text() for p in runs}
    again = run("experiment", *common, "--epochs", "1", "--threads", "2", "--out", tmp_path / "exp")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("reusing") == 2, again.stderr
    other = run("experiment", *common, "--epochs", "2", "--out", tmp_path / "exp")
    assert other.returncode == 0, other.stderr
    assert "reusing" not in other.stderr
    assert all((p / "result.json").read_text() == text for p, text in results.items())  # untouched
    epochs = sorted(json.loads((p / "result.json").read_text())["config"]["epochs"]
                    for p in (tmp_path / "exp").iterdir() if p.is_dir())
    assert epochs == [1, 1, 2, 2], epochs
    # Other images at the same path are other data: new runs (the old results were reused).
    from PIL import Image

    for f in sorted((data / "train" / "class0").glob("*.png"))[:4]:
        Image.new("RGB", (32, 32)).save(f)
    changed = run("experiment", *common, "--epochs", "1", "--out", tmp_path / "exp")
    assert changed.returncode == 0 and "reusing" not in changed.stderr, changed.stderr
    assert len([p for p in (tmp_path / "exp").iterdir() if p.is_dir()]) == 6
    assert all((p / "result.json").read_text() == text for p, text in results.items())


def test_an_experiment_run_whose_result_cannot_be_read_is_kept(tmp_path):
    """A finished run's result.json that this build cannot read (written by a build with a
    setting since removed) was taken for an unfinished attempt: the folder was deleted, notes
    and all, and the run retrained."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    args = ["experiment", "relu-vs-tanh", "--seeds", "1", "--lrs", "0.05", "--data", data, "--batch-size", "16",
            "--target-errors", "0.99", "--limit-test", "8", "--epochs", "1", "--out", tmp_path / "exp"]
    assert run(*args).returncode == 0
    one = sorted(p for p in (tmp_path / "exp").iterdir() if p.is_dir())[0]
    result = json.loads((one / "result.json").read_text())
    result["config"]["retired_setting"] = 1
    (one / "result.json").write_text(json.dumps(result))
    (one / "notes.txt").write_text("mine")
    r = run(*args)
    assert r.returncode == 1 and f"{one / 'result.json'}: a finished run's result this build cannot read" in r.stderr, \
        r.stderr
    assert (one / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, needle", [
    (["--lrs", "0.01,0.01"], "--lrs lists 0.01 twice"),  # the table compared an arm with itself
    (["--lrs", "0.01", "--lr", "0.1"], "--lr and --lrs"),  # --lr was ignored
])
def test_experiment_refuses_an_ambiguous_lr_sweep(args, needle, tmp_path):
    r = run("experiment", "lrn", "--seeds", "1", *args, "--out", tmp_path / "exp")
    assert r.returncode == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "exp").exists()


def test_train_refuses_an_out_folder_inside_its_image_folder(tmp_path):
    """The run's files (curves.png, a folder) were read back as images of a class: eval and
    --resume then failed or counted another image."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    for out in (data / "train" / "run", data / "train" / "class0" / "run"):
        r = run("train", "--preset", "cnn4", "--input-size", "28", "--data", data, "--out", out, "--epochs", "1")
        assert r.returncode == 1 and "is inside the dataset" in r.stderr, r.stderr
        assert not out.exists()


def test_an_output_that_would_replace_an_input_is_refused(tmp_path):
    """`stats list.txt --out list.txt` replaced the list with safetensors bytes, `stats data --out
    data/train/class0/0.png` a training image, `neighbours run q.png --out q.png` the query
    image: each exit 0. They are refused before any work, the input left as it was."""
    from conftest import image_folder

    data = image_folder(tmp_path / "data")
    image = data / "train" / "class0" / "0.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image} 0\n{data / 'train' / 'class1' / '0.png'} 1\n")
    before = image.read_bytes(), listing.read_bytes()
    for args in (["stats", listing, "--size", "16", "--out", listing],
                 ["stats", data, "--size", "16", "--out", image],
                 ["neighbours", tmp_path / "run", image, "--out", image],
                 ["neighbours", tmp_path / "run", "--test", "2", "--data", data, "--out", image],
                 ["eval", tmp_path / "run", "--data", data, "--confusion", image],
                 # a new image there is a new sample of the class
                 ["eval", tmp_path / "run", "--data", data, "--confusion", data / "train" / "class0" / "new.png"]):
        r = run(*args)
        assert r.returncode == 1 and "; write the output elsewhere" in r.stderr, (args, r.stderr)
    assert (image.read_bytes(), listing.read_bytes()) == before
    assert not (data / "train" / "class0" / "new.png").exists()
    # Beside the images of a dataset is fine (a file of another kind, not read as a sample).
    r = run("stats", data, "--size", "16", "--out", data / "stats.safetensors")
    assert r.returncode == 0, r.stderr
