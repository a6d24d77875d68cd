"""Fetching one file: skip, resume or fetch, verify, then rename into place.

Bytes go to ``<file>.part`` and the final name only ever appears complete and verified,
through :func:`os.replace` after the SHA-256 matched. An interrupted transfer resumes from
the ``.part`` (the source is asked for the rest with a ``Range`` request); transient errors
are retried with a doubling wait; a ``.part`` that turns out wrong is fetched again once.
A transfer slower than ``min_speed`` bytes/s for ``stall_seconds`` is aborted (and retried)
by a :class:`~ecgtl.data.download.sources.StallGuard`. A final file that no longer matches
its checksum (the user edited it) is never overwritten: it is renamed to
``<file>.changed`` (``.changed-2`` ...) before the verified file is fetched, and the result
says so in :attr:`FileResult.kept_as`.
:class:`Progress` is the job-wide byte counter the transfers report to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from http.client import HTTPException
from pathlib import Path

from tqdm.auto import tqdm

from ecgtl.data.download.checksums import CHUNK, sha256_file
from ecgtl.data.download.report import FileResult
from ecgtl.data.download.sources import DEFAULT_MIN_SPEED, DEFAULT_STALL_S, Restart, Retry, Source, StallGuard
from ecgtl.errors import DownloadError

__all__ = ["DEFAULT_RETRIES", "Progress", "fetch_file"]

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 3


class _Cancelled(Exception):
    pass


class Progress:
    """A thread-safe byte counter over a single tqdm bar for the whole job.

    File sizes are not in ``SHA256SUMS.txt`` and a HEAD request per file would cost a round
    trip each, so the total grows as each transfer announces its length.
    """

    def __init__(self, desc: str, enabled: bool):
        self._lock = threading.Lock()
        self._bar = tqdm(total=0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)

    def add_total(self, n: int) -> None:
        with self._lock:
            # No refresh here: the next update() redraws, at tqdm's rate limit.
            self._bar.total = (self._bar.total or 0) + n

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def fetch_file(
    source: Source,
    rel: str,
    target: Path,
    sha256: str | None,
    *,
    timeout: float,
    retries: int,
    retry_wait: float,
    progress: Progress,
    cancel: threading.Event,
    min_speed: float = DEFAULT_MIN_SPEED,
    stall_seconds: float = DEFAULT_STALL_S,
) -> FileResult:
    """Make ``target`` a verified copy of ``rel``: skip, resume or fetch, then verify and rename.

    Raises :class:`DownloadError` (naming ``rel``) when it cannot.
    """
    t0 = time.perf_counter()
    changed = False
    if sha256 is not None and target.is_file():
        if sha256_file(target) == sha256:
            return FileResult(rel, "skipped", seconds=time.perf_counter() - t0)
        # Written verified by an earlier run, changed since: the user's edit, which is set aside
        # (renamed, never deleted) once the verified file is ready to take its place.
        changed = True
        log.warning("%s: differs from its checksum (changed since it was downloaded); fetching the verified "
                    "file, your copy will be kept as %s.changed", target, target.name)

    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    if sha256 is None:
        # Nothing to verify a resumed prefix against, so never trust an old .part.
        part.unlink(missing_ok=True)

    transferred = 0
    resumed = False
    restarted_after_mismatch = False
    failures = 0
    while True:
        if cancel.is_set():
            raise _Cancelled()
        offset = part.stat().st_size if part.exists() else 0
        try:
            got, digest, resumed_now = _transfer(
                source, rel, part, offset, timeout, progress, cancel, min_speed, stall_seconds
            )
        except Restart as e:
            # Not a failure: only raised for offset > 0, and the next try starts at 0.
            log.info("%s: %s; restarting from zero", rel, e)
            part.unlink(missing_ok=True)
            continue
        except Retry as e:
            failures += 1
            if failures > retries:
                if sha256 is None:
                    part.unlink(missing_ok=True)
                # With a checksum the .part is kept: a later run resumes from it.
                raise DownloadError(f"{rel}: giving up after {failures} attempts: {e}") from None
            delay = retry_wait * 2 ** (failures - 1)
            log.warning("%s: %s; retry %d/%d in %.1f s", rel, e, failures, retries, delay)
            if cancel.wait(delay):
                raise _Cancelled() from None
            continue
        transferred += got
        resumed = resumed or resumed_now
        if sha256 is not None and digest != sha256:
            part.unlink(missing_ok=True)
            if resumed_now and not restarted_after_mismatch:
                # The old .part may come from another file version; one clean try settles it.
                log.warning("%s: checksum mismatch after resuming; fetching whole file again", rel)
                restarted_after_mismatch = True
                continue
            raise DownloadError(f"{rel}: SHA-256 mismatch: expected {sha256}, got {digest}; file discarded")
        break
    kept_as = _set_aside(target) if changed and target.is_file() else None
    os.replace(part, target)
    return FileResult(
        rel,
        "downloaded",
        bytes=transferred,
        seconds=time.perf_counter() - t0,
        resumed=resumed,
        kept_as=None if kept_as is None else kept_as.name,
    )


def _set_aside(target: Path) -> Path:
    """Rename ``target`` to the first free ``<name>.changed``, ``<name>.changed-2``, ...; return the new path."""
    n = 1
    while True:
        aside = target.with_name(f"{target.name}.changed" + (f"-{n}" if n > 1 else ""))
        try:
            os.link(target, aside)  # no clobber: fails if that name is taken
        except FileExistsError:
            n += 1
            continue
        except OSError:  # no hard links here
            if os.path.lexists(aside):
                n += 1
                continue
            os.rename(target, aside)
            return aside
        os.unlink(target)
        return aside


def _transfer(
    source: Source,
    rel: str,
    part: Path,
    offset: int,
    timeout: float,
    progress: Progress,
    cancel: threading.Event,
    min_speed: float = DEFAULT_MIN_SPEED,
    stall_seconds: float = DEFAULT_STALL_S,
) -> tuple[int, str, bool]:
    """Append the rest of ``rel`` to ``part`` starting at ``offset``.

    Returns (bytes received, sha256 of the whole ``.part``, whether it resumed). Raises
    ``Retry`` on a short or broken body, or a stall, after keeping what arrived for the next
    attempt.
    """
    with StallGuard(source.describe(rel), min_speed, stall_seconds) as guard:
        try:
            return _transfer_guarded(source, rel, part, offset, timeout, progress, cancel, guard)
        except Retry:
            if guard.reason:
                raise Retry(guard.reason) from None
            raise


def _transfer_guarded(
    source: Source,
    rel: str,
    part: Path,
    offset: int,
    timeout: float,
    progress: Progress,
    cancel: threading.Event,
    guard: StallGuard,
) -> tuple[int, str, bool]:
    opened = source.open(rel, offset, timeout, guard)
    resumed = opened.start > 0
    # read1 returns what has arrived (up to CHUNK) instead of waiting for a full CHUNK, so the
    # guard sees a slow transfer progress and a trickle is measured, not hidden in a buffer.
    read = getattr(opened.stream, "read1", opened.stream.read)
    hasher = hashlib.sha256()
    received = 0
    try:
        if resumed:
            # Hash the prefix already on disk so the whole file is verified in one pass.
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
        if opened.length is not None:
            progress.add_total(opened.length)
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                if cancel.is_set():
                    raise _Cancelled()
                try:
                    chunk = read(CHUNK)
                except (OSError, HTTPException) as e:  # timeouts are OSErrors
                    raise Retry(f"connection lost after {received} bytes: {type(e).__name__}: {e}") from None
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                guard.add(len(chunk))
                progress.update(len(chunk))
    finally:
        opened.stream.close()
    if guard.reason and (opened.length is None or received < opened.length):
        raise Retry(guard.reason)  # the guard shut the socket: what looks like an end is a stall
    # urllib returns a short body silently when the server closes early; Content-Length tells.
    if opened.length is not None and received < opened.length:
        raise Retry(f"connection closed after {received} of {opened.length} bytes")
    return received, hasher.hexdigest(), resumed
