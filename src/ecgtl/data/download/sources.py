"""Sources: where a file's bytes come from, an http(s) mirror or a local folder.

``Source.open(rel, offset, timeout)`` returns a stream that starts at ``offset`` (an HTTP
``Range`` request, or a seek), or at 0 when the server ignores the range, which the caller
sees in :attr:`Opened.start`. Transient trouble (connection, timeout, 5xx) raises
:class:`Retry`; a ``.part`` that cannot be resumed raises :class:`Restart`; a permanent
problem (404, missing file) raises :class:`~ecgtl.errors.DownloadError`.

``timeout`` bounds each socket operation, which does not bound a transfer: a server that
trickles a byte a second never lets a read time out. A :class:`StallGuard` bounds it: a
watchdog thread aborts a transfer (response headers included) whose throughput stays below
``min_speed`` bytes/s for ``window`` seconds, by shutting its socket down, so a whole
transfer takes at most about ``size / min_speed + window`` seconds.

Only the standard library does the networking (``urllib.request``), so no extra dependency.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from ecgtl import __version__
from ecgtl.errors import ConfigError, DownloadError

__all__ = [
    "DEFAULT_MIN_SPEED",
    "DEFAULT_STALL_S",
    "DEFAULT_TIMEOUT_S",
    "HttpSource",
    "LocalSource",
    "Opened",
    "Restart",
    "Retry",
    "Source",
    "StallGuard",
    "make_source",
]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MIN_SPEED = 1024  # bytes/s; a transfer slower than this for DEFAULT_STALL_S seconds is aborted
DEFAULT_STALL_S = 60.0
_USER_AGENT = f"ecgtl/{__version__} (+https://github.com/; Python urllib)"


class Retry(Exception):
    """A transient problem (connection, timeout, 5xx, short body): try again, resuming."""


class Restart(Exception):
    """The ``.part`` cannot be resumed (range not satisfiable, wrong offset): start from zero."""


class StallGuard:
    """Watchdog of one transfer attempt: aborts it when fewer than ``min_speed * window``
    bytes arrive in any ``window`` seconds (the response headers' wait included).

    Use as a context manager around opening and reading; the reader calls :meth:`add` with
    each chunk's size. On a stall, :attr:`reason` says so (naming ``url``) and the socket
    registered with :meth:`attach` is shut down, which ends a blocked read at once. With
    ``min_speed`` or ``window`` at 0 it does nothing.
    """

    def __init__(self, url: str, min_speed: float, window: float):
        self.url = url
        self.min_speed = min_speed
        self.window = window
        self.received = 0
        self.reason: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StallGuard:
        if self.min_speed > 0 and self.window > 0:
            self._thread = threading.Thread(target=self._watch, name="ecgtl-stall-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def add(self, n: int) -> None:
        self.received += n  # one writer (the reading thread); the watchdog only reads

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            stalled = self.reason is not None
        if stalled:
            _shutdown(sock)

    def _watch(self) -> None:
        last = 0
        while not self._done.wait(self.window):
            got = self.received - last
            if got < self.min_speed * self.window:
                with self._lock:
                    self.reason = (
                        f"transfer stalled: {got} bytes in {self.window:g} s, below the minimum "
                        f"{self.min_speed:g} bytes/s (--min-speed, --stall-seconds), from {self.url}"
                    )
                    sock = self._sock
                if sock is not None:
                    _shutdown(sock)
                return
            last = self.received


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # unblocks a recv in another thread, unlike close()
    except OSError:
        pass


_current = threading.local()  # the StallGuard of the transfer this thread is opening


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        guard = getattr(_current, "guard", None)
        if guard is not None:
            guard.attach(self.sock)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        guard = getattr(_current, "guard", None)
        if guard is not None:
            guard.attach(self.sock)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kwargs):  # noqa: ANN001 - urllib's signature
        return super().do_open(_GuardedHTTPConnection, req, **kwargs)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kwargs):  # noqa: ANN001 - urllib's signature
        return super().do_open(_GuardedHTTPSConnection, req, **kwargs)


_opener = urllib.request.build_opener(_GuardedHTTPHandler, _GuardedHTTPSHandler)


@dataclass
class Opened:
    stream: BinaryIO
    start: int  # offset of the first byte the stream yields
    length: int | None  # bytes the stream should yield, when known


class Source:
    """Where files come from: ``open(rel, offset)`` returns a stream starting at ``offset``
    (or at 0 if the source cannot seek, which the caller notices through ``start``)."""

    def describe(self, rel: str) -> str:
        raise NotImplementedError

    def open(self, rel: str, offset: int, timeout: float, guard: StallGuard | None = None) -> Opened:
        raise NotImplementedError


class HttpSource(Source):
    def __init__(self, base: str):
        self.base = base if base.endswith("/") else base + "/"

    def describe(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel)

    def open(self, rel: str, offset: int, timeout: float, guard: StallGuard | None = None) -> Opened:
        url = self.describe(rel)
        # identity: a compressed body would break both Range offsets and the byte count.
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        _current.guard = guard  # the connection registers its socket with it
        try:
            resp = _opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and offset:
                # Usually the .part is already complete; the server tells the full size.
                total = _total_from_content_range(e.headers.get("Content-Range", ""))
                if total == offset:
                    return Opened(_EmptyStream(), offset, 0)
                raise Restart(f"HTTP 416 at offset {offset} (size {total})") from None
            if e.code in (408, 425, 429) or e.code >= 500:
                raise Retry(f"HTTP {e.code} {e.reason}") from None
            raise DownloadError(f"{rel}: HTTP {e.code} {e.reason} ({url})") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            if guard is not None and guard.reason:
                raise Retry(guard.reason) from None
            raise Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)} ({url})") from None
        finally:
            _current.guard = None
        length_hdr = resp.headers.get("Content-Length")
        length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                resp.close()
                raise Restart(f"206 with unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            return Opened(resp, offset, length)
        # A 200 answer to a Range request is the whole file: the caller starts over with it.
        return Opened(resp, 0, length)


class LocalSource(Source):
    def __init__(self, root: Path):
        self.root = root

    def describe(self, rel: str) -> str:
        return str(self.root / rel)

    def open(self, rel: str, offset: int, timeout: float, guard: StallGuard | None = None) -> Opened:
        path = self.root / rel
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes the stream
        except FileNotFoundError:
            raise DownloadError(f"{rel}: not found in mirror ({path})") from None
        except OSError as e:
            raise DownloadError(f"{rel}: cannot read {path}: {e}") from None
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            f.close()
            raise Restart(f"partial file longer than source ({offset} > {size})")
        f.seek(offset)
        return Opened(f, offset, size - offset)


class _EmptyStream:
    def read(self, n: int = -1) -> bytes:
        return b""

    def read1(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _total_from_content_range(value: str) -> int | None:
    m = re.search(r"/(\d+)\s*$", value)
    return int(m.group(1)) if m else None


def make_source(mirror: str | os.PathLike, db_path: str) -> Source:
    """Source for one database version from a base URL, ``file://`` URL or local folder."""
    text = os.fspath(mirror)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        base = text if text.endswith("/") else text + "/"
        return HttpSource(base + urllib.parse.quote(db_path) + "/")
    if scheme == "file":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file:// mirror on another host is not supported: {text}")
        root = Path(urllib.request.url2pathname(parts.path))
    elif len(scheme) > 1:  # one letter is a Windows drive, i.e. a local path
        raise ConfigError(f"unsupported mirror {text!r}: expected http(s)://, file:// or a folder")
    else:
        root = Path(text).expanduser()
    if not root.is_dir():
        raise DownloadError(f"{root}: mirror folder not found")
    return LocalSource(root / db_path)
