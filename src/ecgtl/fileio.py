"""Atomic file writes (a reader, or a resumed run, sees the old file or the new one, never half of one),
and the writer lock of a shared folder.

One function for every writer of the project (store manifests, splits, model cards,
metrics, checkpoints): the bytes go to a uniquely named temporary file in the same folder,
are flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX).
Concurrent writers of the same path never share a temporary file. A write that fails (a
full disk, an I/O error) leaves the previous file untouched and no temporary file behind,
and raises an ``OSError`` naming the target path. No torch here, so the data layer and the
command line use it without loading PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: Callable[[str], Exception],
                   unusable: Callable[[OSError], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed) for the ``with`` block.

    Another holder makes it raise ``busy(pid)`` (the pid the holder wrote into the file) at
    once, never wait; a lock file that cannot be created raises ``unusable(error)``. The
    system releases the lock when the holder's process ends, however it ends, so a killed
    run never blocks the next one.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fh = open(path, "a+")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise unusable(exc) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            raise busy(fh.read().strip() or "?") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes, read in pieces of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

