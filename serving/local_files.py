"""Local files that other processes read while we write them: replaced atomically, one writer at a time.

Both the artifact store's local backend and the serving state directory (``endpoint.json``, the ready
file) are read by other processes at any moment, and a crash must never leave half a file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write a hidden temporary file beside ``path``, flush it to disk, then rename it over ``path``:
    readers see the old bytes or the new ones, never a mix, even after a crash.

    The file is created owner-only (0600, ``mkstemp``'s mode): what abflow writes (state records,
    models) is nobody else's business. Raises ``OSError``; the temporary file never outlives a failure.
    """
    temp = ""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600 if missing) for the ``with`` block.

    The lock file is never removed: deleting a file others may be waiting on would let two writers in
    at once. Raises ``OSError`` when the file cannot be opened."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
