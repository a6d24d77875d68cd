"""Sources: where a file's bytes come from, an http(s) mirror or a local folder.

``Source.open(rel, offset, timeout)`` returns a stream that starts at ``offset`` (an HTTP
``Range`` request, or a seek), or at 0 when the server ignores the range, which the caller
sees in :attr:`Opened.start`. Transient trouble (connection, timeout, 5xx) raises
:class:`Retry`; a ``.part`` that cannot be resumed raises :class:`Restart`; a permanent
problem (404, missing file) raises :class:`~ecgtl.errors.DownloadError`.

Only the standard library does the networking (``urllib.request``), so no extra dependency.
"""

from __future__ import annotations

import os
import re
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
    "DEFAULT_TIMEOUT_S",
    "HttpSource",
    "LocalSource",
    "Opened",
    "Restart",
    "Retry",
    "Source",
    "make_source",
]

DEFAULT_TIMEOUT_S = 60.0
_USER_AGENT = f"ecgtl/{__version__} (+https://github.com/; Python urllib)"


class Retry(Exception):
    """A transient problem (connection, timeout, 5xx, short body): try again, resuming."""


class Restart(Exception):
    """The ``.part`` cannot be resumed (range not satisfiable, wrong offset): start from zero."""


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

    def open(self, rel: str, offset: int, timeout: float) -> Opened:
        raise NotImplementedError


class HttpSource(Source):
    def __init__(self, base: str):
        self.base = base if base.endswith("/") else base + "/"

    def describe(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel)

    def open(self, rel: str, offset: int, timeout: float) -> Opened:
        url = self.describe(rel)
        # identity: a compressed body would break both Range offsets and the byte count.
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
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
            raise Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
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

    def open(self, rel: str, offset: int, timeout: float) -> Opened:
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
