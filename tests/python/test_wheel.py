"""The abi3 wheel from `make python` installs into a fresh virtualenv and imports there."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_is_abi3_and_requires_the_pinned_torch():
    wheels = sorted(ROOT.glob("dist/alexnet_rs-*-cp311-abi3-*.whl"))
    assert wheels, "run `make python` first"
    with zipfile.ZipFile(wheels[-1]) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        names = z.namelist()
    assert "Requires-Dist: torch==2.11.*" in meta
    assert "alexnet_rs/_native.abi3.so" in names and "alexnet_rs/_native.pyi" in names and "alexnet_rs/py.typed" in names


def test_wheel_installs_into_a_fresh_venv(tmp_path):
    wheel = sorted(ROOT.glob("dist/alexnet_rs-*-cp311-abi3-*.whl"))[-1]
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # torch for the fresh venv: the project's (a 5 GB reinstall is not the point), after its own packages.
    (site / "torch_from_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the .pth makes the project's own alexnet_rs visible too.
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed", wheel],
                   check=True)
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
