"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

One function for every writer of the project (store manifests, splits, model cards,
metrics, checkpoints): the bytes go to a uniquely named temporary file in the same folder,
are flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX).
Concurrent writers of the same path never share a temporary file. No torch here, so the
data layer and the command line use it without loading PyTorch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
