"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

One function for every writer of the project (store manifests, splits, model cards,
metrics, checkpoints): the bytes go to a uniquely named temporary file in the same folder,
are flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX).
Concurrent writers of the same path never share a temporary file. A write that fails (a
full disk, an I/O error) leaves the previous file untouched and no temporary file behind,
and raises an ``OSError`` naming the target path. No torch here, so the data layer and the
command line use it without loading PyTorch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    return path


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same ``OSError`` subclass) about the target, not the temporary file."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))
