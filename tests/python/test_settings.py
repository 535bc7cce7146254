"""The training settings from Python: the same keys as `alexnet train`'s flags (one definition,
src/settings.rs), every one accepted by `alexnet_rs.train(config)` with its meaning, unknown keys
refused by name, and the generated `TrainSettings` stub up to date."""

import pathlib
import subprocess
import sys
import typing

import pytest

import alexnet_rs

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "alexnet"

SAMPLE = {"INT": 3, "FLOAT": 0.25, "PATH": "some/where", "TEXT": "cpu,cpu", "LIST": ["conv1", "conv2"]}


def _other(s):
    if s["key"] == "input_size":
        return 67  # train_config checks the settings: the network takes no 3x3 input
    if s["kind"] == "BOOL":
        return not s["default"]
    if s["kind"] == "NAME":
        return next(c for c in s["choices"] if c != s["default"])
    return SAMPLE[s["kind"]]


def test_every_setting_is_accepted_from_python_with_its_meaning():
    settings = alexnet_rs.train_settings()
    defaults = alexnet_rs.train_config({})
    assert [s["key"] for s in settings] == list(defaults), "one key per flag, in the same order"
    for s in settings:
        assert defaults[s["key"]] == s["default"], s["key"]
        value = _other(s)
        got = alexnet_rs.train_config({s["key"]: value})
        assert got[s["key"]] == value, s["key"]
        assert {k: v for k, v in got.items() if k != s["key"]} == {k: v for k, v in defaults.items() if k != s["key"]}
    # Paths may be PathLike.
    assert alexnet_rs.train_config({"out": pathlib.Path("runs/x")})["out"] == "runs/x"


@pytest.mark.parametrize("config, key", [({"learning_rate": 0.1}, "learning_rate"), ({"lr": "fast"}, "lr"),
                                         ({"preset": "resnet"}, "preset"), ({"epochs": -1}, "epochs")])
def test_unknown_keys_and_bad_values_name_the_key(config, key):
    with pytest.raises(alexnet_rs.ConfigError, match=f"`{key}`"):
        alexnet_rs.train_config(config)
    with pytest.raises(alexnet_rs.ConfigError, match=f"`{key}`"):
        alexnet_rs.train(config)


@pytest.mark.parametrize("key, value", [("time_budget_s", -1.0), ("eval_every", 0),
                                        ("step_epochs", 0), ("plateau_patience", 0), ("dropout", 1.0), ("lr", -0.1),
                                        ("limit_test", 0), ("limit_train", 0), ("max_steps", 0)])
def test_out_of_range_values_name_the_key(key, value):
    for f in (alexnet_rs.train_config, alexnet_rs.train):
        with pytest.raises(alexnet_rs.ConfigError, match=key):
            f({key: value})


def test_nan_and_infinity_are_refused_for_every_float_setting():
    floats = [s["key"] for s in alexnet_rs.train_settings() if s["kind"] == "FLOAT"]
    assert {"lr", "momentum", "weight_decay", "time_budget_s", "dropout"} <= set(floats)
    for key in floats:
        for value in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(alexnet_rs.ConfigError, match=f"`{key}`: expected a finite number, got -?(nan|inf)"):
                alexnet_rs.train_config({key: value})
    with pytest.raises(alexnet_rs.ConfigError, match="keys are setting names"):
        alexnet_rs.train_config({1: 2})


def test_the_help_shows_every_flag_and_its_default():
    text = subprocess.run([BIN, "train", "--help"], capture_output=True, text=True, timeout=60).stdout
    for s in alexnet_rs.train_settings():
        assert s["flag"] in text, s["flag"]
        if s["kind"] not in ("BOOL",) and s["default"] is not None:
            assert f"[default: {s['default']}]" in text.replace("\n", " ") or str(s["default"]) in text, s["flag"]


def test_the_typeddict_is_generated_from_the_rust_definition():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_settings.py"), "--check"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    hints = typing.get_type_hints(alexnet_rs.TrainSettings)
    assert list(hints) == [s["key"] for s in alexnet_rs.train_settings()]


def test_numpy_numbers_and_path_objects_are_settings_values():
    """np.int64(63) and np.float32(0.01) were refused as "not plain data ... expected str, bytes or
    os.PathLike object, not int64" (and a bytes path as "Circular reference detected")."""
    import numpy as np

    config = alexnet_rs.train_config({"input_size": np.int64(63), "lr": np.float32(0.01), "momentum": np.float64(0.8),
                                      "data": pathlib.Path("some/data"), "seed": np.uint64(2**63)})
    assert config["input_size"] == 63 and config["lr"] == float(np.float32(0.01)) and config["momentum"] == 0.8
    assert config["data"] == "some/data" and config["seed"] == 2**63
    with pytest.raises(alexnet_rs.ConfigError, match="`lr`: expected a finite number|`lr`: not plain data"):
        alexnet_rs.train_config({"lr": np.float32("nan")})
