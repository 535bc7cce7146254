"""Crash-safe file writes for the Python side: the Rust side's ``files::write`` (RELIABILITY.md).
A file is replaced by writing ``<name>.partial``, fsyncing it, renaming it over the old one and
fsyncing the folder, so a process killed at any instruction (or a power loss) leaves the old file
or the new one, never a truncated mix; a write that fails (a full disk) removes its partial file."""

from __future__ import annotations

import os

from . import _native
from ._boundary import checked


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replaces ``path`` by ``data`` (a ``str`` is written as UTF-8); raises
    :class:`alexnet_rs.AlexNetIOError` (an ``OSError``) naming the file."""
    checked(_native.write_file)(os.fspath(path), data.encode() if isinstance(data, str) else bytes(data))
