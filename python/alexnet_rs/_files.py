"""Crash-safe file writes for the Python side, as the Rust side's ``files::write``
(RELIABILITY.md): a file is replaced by writing ``<name>.partial``, fsyncing it, renaming it over
the old one and fsyncing the folder, so a process killed at any instruction (or a power loss)
leaves the old file or the new one, never a truncated mix; a write that fails (a full disk)
removes its partial file."""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replaces ``path`` by ``data`` (a ``str`` is written as UTF-8); raises ``OSError``."""
    path = os.fspath(path)
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    # The rename itself made durable.
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
