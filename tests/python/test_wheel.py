"""The abi3 wheel from `make python` installs into a fresh virtualenv, imports there, and carries the
`alexnet` command (the same Rust CLI as the standalone binary)."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import image_folder

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release" / "alexnet"


def test_wheel_is_abi3_and_requires_the_pinned_torch():
    wheels = sorted(ROOT.glob("dist/alexnet_rs-*-cp311-abi3-*.whl"))
    assert wheels, "run `make python` first"
    with zipfile.ZipFile(wheels[-1]) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        names = z.namelist()
    assert "Requires-Dist: torch==2.11.*" in meta
    assert "alexnet_rs/_native.abi3.so" in names and "alexnet_rs/_native.pyi" in names and "alexnet_rs/py.typed" in names


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh virtualenv that sees the project's torch (a 5 GB reinstall is not the point) and
    holds only our wheel: (python, its site-packages, its bin folder)."""
    wheel = sorted(ROOT.glob("dist/alexnet_rs-*-cp311-abi3-*.whl"))[-1]
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # torch from the project's venv, after the fresh venv's own packages.
    (site / "torch_from_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the .pth makes the project's own alexnet_rs visible too.
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", wheel],
                   check=True)
    return py, site, venv / "bin"


def test_wheel_installs_into_a_fresh_venv(fresh):
    py, site, _ = fresh
    code = (
        "import torch, alexnet_rs; "
        "assert alexnet_rs.__file__.startswith(%r), alexnet_rs.__file__; "
        "y = torch.ops.alexnet_rs.lrn(torch.randn(1, 4, 3, 3), 5, 1e-4, 0.75, 2.0); "
        "m = alexnet_rs.AlexNet('torchvision', num_classes=3).eval(); "
        "print(alexnet_rs.__version__, tuple(y.shape), tuple(m(torch.randn(1, 3, 63, 63)).shape))"
    ) % str(site)
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["(1,", "4,", "3,", "3)", "(1,", "3)"]


def test_the_wheel_carries_the_cli_with_the_binarys_output(fresh, tmp_path):
    """`alexnet` (the wheel's console script) and `python -m alexnet_rs` are the standalone
    binary: same stdout, stderr and exit codes, verb by verb (timing-free outputs)."""
    py, _, bin_ = fresh
    data = image_folder(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{bin_}:{os.environ['PATH']}")
    entries = {"binary": [str(BIN)], "console script": [str(bin_ / "alexnet")], "python -m": [str(py), "-m", "alexnet_rs"]}
    train = ["train", "--preset", "cnn4", "--input-size", "28", "--batch-size", "8", "--max-steps", "2", "--threads", "1",
             "--data", str(data), "--out", "run"]
    verbs = [["--help"], ["info", "--preset", "paper"], ["train", "--help"], train, ["eval", "run", "--batch-size", "8"],
             ["predict", "run", str(next((data / "val" / "class1").iterdir()))], ["train", "--bogus"],
             ["info", "--preset", "vgg"], ["eval", "no/such/run"]]
    results = {}
    for name, cmd in entries.items():
        cwd = tmp_path / name.replace(" ", "-")
        cwd.mkdir()
        results[name] = [subprocess.run([*cmd, *v], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
                         for v in verbs]
    for v, b, c, m in zip(verbs, *results.values()):
        for r in (c, m):
            assert (r.returncode, r.stdout, r.stderr) == (b.returncode, b.stdout, b.stderr), v
    codes = [r.returncode for r in results["binary"]]
    assert codes == [0, 0, 0, 0, 0, 0, 2, 2, 1], codes
    assert "final: top-1" in results["binary"][3].stdout and "top-1" in results["binary"][4].stdout
