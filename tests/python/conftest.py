import os
import socket
from pathlib import Path

import pytest
import torch

# Fashion-MNIST (Debian's dataset-fashion-mnist, installed by `make setup`), or wherever
# ALEXNET_FASHION_MNIST points. Tests that need it are skipped by name when it is missing
# (`make test` runs pytest with -rs, so the log lists them), never passed.
FASHION = Path(os.environ.get("ALEXNET_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason=f"Fashion-MNIST missing at {FASHION}: run make setup")


def image_folder(root: Path) -> Path:
    """A small image folder at root: train/ and val/, two classes of 32x32 PNGs that differ."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("val", 8)):
        for c in range(2):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8) + np.uint8(100 * c)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def free_port() -> int:
    """A TCP port nobody listens on now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
