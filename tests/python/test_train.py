"""The Rust training loop from Python, and Rust checkpoints read from Python."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alexnet_rs

from conftest import needs_fashion

pytestmark = needs_fashion


def small(out):
    return dict(preset="torchvision", input_size=63, batch_size=32, epochs=1, lr=0.01, seed=2, out=str(out),
                limit_train=128, limit_test=64, threads=2)


def test_train_from_python_with_callback(tmp_path):
    seen = []
    result = alexnet_rs.train(small(tmp_path), on_step=seen.append)
    steps = [d for d in seen if "loss" in d and "val_top1" not in d]
    epochs = [d for d in seen if "val_top1" in d]
    assert len(steps) == 4 and [d["step"] for d in steps] == [1, 2, 3, 4]
    assert len(epochs) == 1 and epochs[0]["val_top1"] == pytest.approx(result["top1"])
    assert any("checkpoint" in d for d in seen)
    # The events are the dicts alexnet_rs.settings types (generated from the Rust records).
    from alexnet_rs.settings import CheckpointEvent, EpochEvent, StepEvent

    assert {frozenset(d) for d in seen} == {frozenset(t.__annotations__) for t in (StepEvent, EpochEvent, CheckpointEvent)}
    assert result["samples"] == 64
    # Accuracies are counts over the 64 test images, and match an evaluation of the checkpoint.
    assert result["top1"] * 64 == pytest.approx(round(result["top1"] * 64)) and result["top1"] <= result["top5"]
    again = alexnet_rs.evaluate(tmp_path, limit=64)
    assert (again["top1"], again["top5"], again["samples"]) == (result["top1"], result["top5"], 64)
    assert again["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_rust_checkpoint_loads_in_python_with_the_same_logits(tmp_path):
    alexnet_rs.train(small(tmp_path))
    ckpt = sorted((tmp_path / "checkpoints").glob("ckpt-*"))[-1]
    weights = load_file(ckpt / "weights.safetensors")
    import torchvision

    tv = torchvision.models.alexnet(weights=None, num_classes=10)
    tv.load_state_dict(weights)  # the torchvision preset's keys are torchvision's
    x = torch.randn(2, 3, 63, 63)
    ours = alexnet_rs._native.forward("torchvision", weights, x, False, 10, "stock")
    torch.testing.assert_close(ours, tv.eval()(x), rtol=1e-5, atol=1e-5)


def test_bad_config_is_a_config_error(tmp_path):
    with pytest.raises(alexnet_rs.ConfigError, match="unknown field"):
        alexnet_rs.train(dict(small(tmp_path), learning_rate=0.1))
    with pytest.raises(alexnet_rs.ConfigError, match="lr must be positive"):
        alexnet_rs.train(dict(small(tmp_path), lr=-1.0))


def test_resume_takes_a_given_epochs_even_when_it_is_the_default(tmp_path):
    alexnet_rs.train(small(tmp_path))  # 1 epoch of 4 steps
    seen = []
    alexnet_rs.train({"epochs": 90, "max_steps": 1}, on_step=seen.append, resume=tmp_path)
    assert [d["step"] for d in seen if "train_error" in d] == [5]


def test_a_cosine_run_extended_by_resume_follows_the_curve_to_its_new_end(tmp_path, capfd):
    """`--resume RUN --epochs 3` on a 2-epoch cosine run kept the 2-epoch curve: past its end the
    cosine climbs back, and the lr rose from 0 towards the base lr. The extension follows the
    3-epoch curve, 0.5 lr (1 + cos(pi t / 3)) at fractional epoch t."""
    import math

    alexnet_rs.train(dict(small(tmp_path), epochs=2, schedule="cosine"))  # 4 steps per epoch
    seen = []
    alexnet_rs.train({"epochs": 3}, on_step=seen.append, resume=tmp_path)
    lrs = [d["lr"] for d in seen if "train_error" in d]
    assert lrs == pytest.approx([0.5 * 0.01 * (1 + math.cos(math.pi * (2 + i / 4) / 3)) for i in range(4)], rel=1e-12)
    assert "the cosine schedule now ends at epoch 3 (it was planned for 2)" in capfd.readouterr().err


def test_a_run_trained_on_a_relative_data_path_evaluates_from_any_folder(tmp_path, monkeypatch, capfd):
    """The data path was stored as typed: `eval` (and `--resume`) of a run trained with a
    relative --data failed from another folder. And a --data that does not exist was first
    'validated on the training images' (a warning), then an error."""
    import os

    from conftest import FASHION

    monkeypatch.chdir(tmp_path)
    alexnet_rs.train(dict(small(tmp_path / "run"), data=os.path.relpath(FASHION, tmp_path)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert alexnet_rs.evaluate(tmp_path / "run", limit=16)["samples"] == 16
    capfd.readouterr()
    with pytest.raises(alexnet_rs.MissingFileError, match="/no/such/data"):
        alexnet_rs.evaluate(tmp_path / "run", data="/no/such/data")
    assert "has no test split" not in capfd.readouterr().err


def test_a_resumed_runs_warnings_are_python_warnings(tmp_path):
    """train(config, resume=) "warns" about settings it cannot take: it printed CLI text on
    stderr, which no warnings filter could catch or silence. They are UserWarnings at the
    caller's line, and a filter set to "error" stops the run as a callback's error does."""
    import warnings

    alexnet_rs.train(small(tmp_path))
    with pytest.warns(UserWarning, match="a resumed run keeps its lr = 0.01 \\(ignoring 0.5\\)") as w:
        alexnet_rs.train({"lr": 0.5, "epochs": 2, "max_steps": 1}, resume=tmp_path)
    assert [x.filename for x in w] == [__file__]
    lines = (tmp_path / "metrics.jsonl").read_text()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="keeps its lr"):
            alexnet_rs.train({"lr": 0.5, "epochs": 2, "max_steps": 1}, resume=tmp_path)
    # Raised before any step (it came after one step and a checkpoint).
    assert (tmp_path / "metrics.jsonl").read_text() == lines
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ckpts


def test_callback_exception_stops_training_and_propagates(tmp_path):
    calls = []

    def boom(d):
        calls.append(d)
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        alexnet_rs.train(small(tmp_path), on_step=boom)
    # A callback that raised is not called again (it got the checkpoint written on stopping).
    assert len(calls) == 1 and "step" in calls[0], calls
    assert list((tmp_path / "checkpoints").iterdir())


def test_a_builtin_callbacks_type_error_passes_through(tmp_path):
    # A C callable adds no traceback frame: its TypeError was taken for a pyo3 argument error of
    # train itself and re-raised as "DtypeError: train: must be real number, not dict".
    import math

    with pytest.raises(TypeError, match="must be real number") as e:
        alexnet_rs.train(small(tmp_path), on_step=math.sqrt)
    assert not isinstance(e.value, alexnet_rs.DtypeError), e.value


def test_keyboard_interrupt_stops_after_a_checkpoint(tmp_path):
    import subprocess
    import sys

    # A test set whose evaluation takes minutes (10,000 images x 10 crops): Ctrl-C waited for it,
    # and then threw its result away.
    script = f"""
import os, signal, time, alexnet_rs
cfg = {small(tmp_path)!r}
cfg.update(epochs=5, limit_test=10000, ten_crop_eval=True)
t = []
def on_step(m):
    if m.get("step") == 2:
        t.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
try:
    alexnet_rs.train(cfg, on_step=on_step)
except KeyboardInterrupt as e:
    print(f"interrupted after {{time.monotonic() - t[0]:.1f}} s:", e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "s: training stopped after a checkpoint" in r.stdout, r.stdout
    assert float(r.stdout.split()[2]) < 30, r.stdout
    ckpts = sorted((tmp_path / "checkpoints").glob("ckpt-*"))
    assert ckpts and ckpts[-1].name == "ckpt-000000002"


def test_keyboard_interrupt_during_the_runs_evaluation_stops_it_with_a_checkpoint(tmp_path):
    """During the run's evaluations (here the step budget's; an epoch's end goes the same way:
    tests/resume.rs) Ctrl-C was seen only once the whole test set was through, and a second one
    abandoned the run unsaved. The first one ends the evaluation at its next batch, with the
    checkpoint of the position before it."""
    import subprocess
    import sys

    script = f"""
import os, signal, threading, time, alexnet_rs
cfg = {small(tmp_path)!r}
cfg.update(max_steps=2, limit_test=10000, ten_crop_eval=True)
t = []
def on_step(m):
    if m.get("step") == 2:  # the evaluation of max_steps follows this step
        t.append(time.monotonic())
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    alexnet_rs.train(cfg, on_step=on_step)
    print("finished")
except KeyboardInterrupt as e:
    print(f"interrupted after {{time.monotonic() - t[0]:.1f}} s:", e)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "s: training stopped after a checkpoint" in r.stdout, r.stdout
    # The whole evaluation (10,000 images x 10 crops) takes minutes on 2 cores.
    assert float(r.stdout.split()[2]) < 30, r.stdout
    ckpts = sorted((tmp_path / "checkpoints").glob("ckpt-*"))
    assert [c.name for c in ckpts] == ["ckpt-000000002"]


def test_keyboard_interrupt_stops_an_evaluation(tmp_path):
    """Ctrl-C (Jupyter's "interrupt kernel") during `evaluate` raises KeyboardInterrupt at the next
    batch; it used to be held until the whole evaluation had run."""
    import subprocess
    import sys

    alexnet_rs.train(dict(small(tmp_path), limit_train=32))
    script = f"""
import os, signal, threading, time, alexnet_rs
threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t = time.monotonic()
try:
    alexnet_rs.evaluate({str(tmp_path)!r}, ten_crop=True, limit=10000)
    print("finished")
except KeyboardInterrupt:
    print(f"interrupted after {{time.monotonic() - t:.1f}} s")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("interrupted after"), r.stdout
    # The whole evaluation (10,000 images x 10 crops) takes minutes on 2 cores.
    assert float(r.stdout.split()[2]) < 30, r.stdout


def test_a_diverging_run_raises_diverged_error(tmp_path):
    cfg = dict(small(tmp_path), preset="cnn4", input_size=28, lr=1e30, limit_train=320, checkpoint_every=1)
    with pytest.raises(alexnet_rs.DivergedError, match="try a lower --lr") as e:
        alexnet_rs.train(cfg)
    assert isinstance(e.value, FloatingPointError)
    # The last good step's checkpoint is there and loads.
    assert sorted((tmp_path / "checkpoints").glob("ckpt-*"))


def test_step_records_carry_the_batch_training_error(tmp_path):
    seen = []
    alexnet_rs.train(dict(small(tmp_path), preset="cnn4", input_size=28, activation="tanh", limit_train=64),
                     on_step=seen.append)
    steps = [d for d in seen if "train_error" in d]
    # The error of a batch of 32 before its update: a count of wrong images over 32.
    assert len(steps) == 2
    for d in steps:
        wrong = d["train_error"] * 32
        assert wrong == pytest.approx(round(wrong)) and 0 < wrong <= 32, d


def test_load_checkpoint_builds_the_model_for_the_checkpoints_input_size(tmp_path):
    # Finding 7: a paper checkpoint trained at 63x63 failed to load (fc6 built for 224).
    alexnet_rs.train(dict(small(tmp_path), preset="paper", max_steps=1, limit_train=16, batch_size=8,
                          limit_test=8))
    model = alexnet_rs.AlexNet.load_checkpoint(tmp_path).eval()
    assert model.input_size == 63
    ckpt = sorted((tmp_path / "checkpoints").glob("ckpt-*"))[-1]
    weights = load_file(ckpt / "weights.safetensors")
    x = torch.randn(2, 3, 63, 63)
    ref = alexnet_rs._native.forward("paper", weights, x, False, 10, "stock")
    torch.testing.assert_close(model(x), ref)
    # And back: saved from Python at 63, read by the Rust validator (CLI eval/predict, --resume).
    again = model.save_checkpoint(tmp_path / "again")
    assert alexnet_rs.AlexNet.load_checkpoint(again).input_size == 63


def test_save_checkpoint_into_a_training_run_is_refused(tmp_path):
    # A model saved into a run folder became ckpt-000000000 beside the run's later checkpoints:
    # eval and predict kept reading the run's newest, and pruning could delete the saved one.
    alexnet_rs.train(dict(small(tmp_path), max_steps=2, limit_test=8))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    model = alexnet_rs.AlexNet.load_checkpoint(tmp_path)
    with pytest.raises(alexnet_rs.ConfigError, match="already holds a training run"):
        model.save_checkpoint(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    # Saving a model again into its own save folder replaces that checkpoint.
    first = model.save_checkpoint(tmp_path / "saved")
    assert model.save_checkpoint(tmp_path / "saved") == first


def test_load_checkpoint_refuses_an_ablation_it_cannot_build(tmp_path):
    # A tanh network is not the preset's: loading it into the preset's module would compute
    # another function silently.
    alexnet_rs.train(dict(small(tmp_path), activation="tanh", max_steps=1, limit_test=8))
    with pytest.raises(alexnet_rs.ConfigError, match="activation"):
        alexnet_rs.AlexNet.load_checkpoint(tmp_path)


def test_load_checkpoint_takes_settings_that_leave_the_presets_network(tmp_path):
    """--dropout 0.5 and --pool-kernel 3 are the torchvision preset's own values, and --no-lrn
    does nothing to a network without LRN: such a run is the preset's network and loads (it was
    refused as "trained with {'pool_kernel': 3, 'dropout': 0.5}"); a value that changes the
    network is still refused, named."""
    same = dict(small(tmp_path / "same"), dropout=0.5, pool_kernel=3, lrn=False, max_steps=1, limit_test=8)
    alexnet_rs.train(same)
    model = alexnet_rs.AlexNet.load_checkpoint(tmp_path / "same")
    assert model.preset == "torchvision" and alexnet_rs.viz.filters(tmp_path / "same").ndim == 3
    alexnet_rs.train(dict(small(tmp_path / "other"), dropout=0.3, max_steps=1, limit_test=8))
    with pytest.raises(alexnet_rs.ConfigError, match=r"\{'dropout': 0.3\}"):
        alexnet_rs.AlexNet.load_checkpoint(tmp_path / "other")

