"""Download PhysioNet databases into a local folder laid out like ``https://physionet.org/files/``.

``download("mitdb", "data/raw")`` fetches ``mitdb/1.0.0/SHA256SUMS.txt`` first, then every
file it lists into ``data/raw/mitdb/1.0.0/``, verifying each against its checksum. The
source (``mirror``) is PhysioNet by default, or any http(s) server or local folder with the
same layout, e.g. an unpacked copy of ``../shared/data``.

Guarantees:

- A final file only ever appears complete and verified: bytes go to ``<file>.part`` and are
  renamed with :func:`os.replace` after the SHA-256 matched.
- An interrupted transfer resumes from the ``.part`` with an HTTP ``Range`` request.
- A file already present with the right checksum is not fetched again.
- One file failing (network, HTTP status, checksum) is recorded in the
  :class:`DownloadReport` and the others carry on.
- Archives (CinC 2017's ``training2017.zip``) are extracted only after verification, into a
  temporary folder renamed into place, refusing members that would land outside the target.

Only the standard library does the networking (``urllib.request``), so no extra dependency.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from ecgtl import __version__
from ecgtl.constants import ICENTIA_NUM_PATIENTS, ICENTIA_SEGMENTS_PER_PATIENT
from ecgtl.errors import ConfigError, DownloadError

__all__ = [
    "DATABASES",
    "DEFAULT_MIRROR",
    "Database",
    "DownloadReport",
    "FileResult",
    "add_parser",
    "download",
    "extract_zip",
    "icentia11k_patient_files",
    "parse_patients",
    "parse_sha256sums",
    "run_from_args",
]

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "https://physionet.org/files/"
CHECKSUM_FILE = "SHA256SUMS.txt"
DEFAULT_WORKERS = 4
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
_CHUNK = 1 << 20
_USER_AGENT = f"ecgtl/{__version__} (+https://github.com/; Python urllib)"


# --------------------------------------------------------------------------- registry


def icentia11k_patient_files(patient: int) -> list[str]:
    """Relative paths (inside ``icentia11k-continuous-ecg/1.0``) of all files of one patient.

    Patient ``N`` lives in ``p{N//1000:02d}/p{N:05d}/`` with 50 segments ``_s00`` .. ``_s49``,
    each a ``.hea``, ``.dat`` and ``.atr``.
    """
    if not 0 <= patient < ICENTIA_NUM_PATIENTS:
        raise ConfigError(f"Icentia11k patient {patient} out of range 0-{ICENTIA_NUM_PATIENTS - 1}")
    folder = f"p{patient // 1000:02d}/p{patient:05d}"
    return [
        f"{folder}/p{patient:05d}_s{segment:02d}.{ext}"
        for segment in range(ICENTIA_SEGMENTS_PER_PATIENT)
        for ext in ("hea", "dat", "atr")
    ]


@dataclass(frozen=True)
class Database:
    """A PhysioNet database version and which of its files to fetch.

    ``path`` is the folder under the mirror's root (``mitdb/1.0.0``). ``files`` restricts the
    download to those relative paths; ``None`` means every file listed in ``SHA256SUMS.txt``.
    ``patient_files`` (Icentia11k) maps a patient number to its relative paths, and makes a
    patient selection mandatory. ``extract`` names zip archives unpacked next to themselves
    after verification.
    """

    name: str
    path: str
    title: str
    files: tuple[str, ...] | None = None
    patient_files: Callable[[int], Iterable[str]] | None = None
    extract: tuple[str, ...] = ()


DATABASES: dict[str, Database] = {
    db.name: db
    for db in (
        Database(
            "cinc2017",
            "challenge-2017/1.0.0",
            "PhysioNet/CinC Challenge 2017 (AF classification from a short single-lead ECG)",
            files=("training2017.zip", "REFERENCE-v3.csv"),
            extract=("training2017.zip",),
        ),
        Database("mitdb", "mitdb/1.0.0", "MIT-BIH Arrhythmia Database"),
        Database("svdb", "svdb/1.0.0", "MIT-BIH Supraventricular Arrhythmia Database"),
        Database("aftdb", "aftdb/1.0.0", "AF Termination Challenge Database"),
        Database(
            "icentia11k",
            "icentia11k-continuous-ecg/1.0",
            "Icentia11k continuous ECG (select patients: the full set is about 1 TiB)",
            patient_files=icentia11k_patient_files,
        ),
    )
}


def parse_patients(spec: str | int | Iterable[int]) -> list[int]:
    """Parse a patient selection: ``"0-9"``, ``"0,5,7"``, ``"0-3,10"``, an int, or ints.

    Returns the sorted, de-duplicated patient numbers. Raises :class:`ConfigError` on an
    empty or malformed selection, or a number outside Icentia11k's range.
    """
    if isinstance(spec, int):
        numbers: set[int] = {spec}
    elif isinstance(spec, str):
        numbers = set()
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"bad patient selection {spec!r}: expected e.g. '0-9' or '0,5,7'")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigError(f"bad patient range {part!r}: end before start")
            numbers.update(range(lo, hi + 1))
    else:
        numbers = {int(n) for n in spec}
    if not numbers:
        raise ConfigError("empty patient selection")
    bad = [n for n in numbers if not 0 <= n < ICENTIA_NUM_PATIENTS]
    if bad:
        raise ConfigError(f"patients out of range 0-{ICENTIA_NUM_PATIENTS - 1}: {sorted(bad)[:5]}")
    return sorted(numbers)


# --------------------------------------------------------------------------- checksums


def _check_relative(rel: str) -> str:
    """Return ``rel`` if it is a safe relative POSIX path, else raise DownloadError.

    Paths come from a downloaded file, i.e. from the network: one with ``..`` or a leading
    ``/`` must not be able to make us write outside the destination folder.
    """
    parts = rel.replace("\\", "/").split("/")
    if (
        not rel
        or rel.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", rel)
        or any(p in ("", ".", "..") for p in parts)
        or "\x00" in rel
    ):
        raise DownloadError(f"{rel!r}: unsafe path in {CHECKSUM_FILE}")
    return rel


def parse_sha256sums(lines: Iterable[str], keep: Callable[[str], bool] | None = None) -> dict[str, str]:
    """Parse ``SHA256SUMS.txt`` lines (``<sha256> <relative path>``) into ``{path: sha256}``.

    Accepts PhysioNet's single space and ``sha256sum``'s two spaces or ``*`` binary marker.
    ``keep`` filters paths while parsing, so that a huge list (Icentia11k's has ~1.6 M
    lines) never sits in memory whole. Blank lines and ``#`` comments are ignored; a
    malformed line or an unsafe path raises :class:`DownloadError`.
    """
    sums: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *]?(.+)", line)
        if not m:
            raise DownloadError(f"{CHECKSUM_FILE} line {lineno}: malformed: {line[:100]!r}")
        digest, rel = m.group(1).lower(), m.group(2)
        if rel.startswith("./"):
            rel = rel[2:]
        if rel == CHECKSUM_FILE or (keep is not None and not keep(rel)):
            continue
        sums[_check_relative(rel)] = digest
    return sums


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- report


@dataclass
class FileResult:
    """Outcome for one file: ``status`` is ``downloaded``, ``skipped`` or ``failed``.

    ``path`` is relative to the destination root (``mitdb/1.0.0/100.dat``); ``bytes`` counts
    what crossed the wire in this run (0 when skipped); ``error`` explains a failure.
    """

    path: str
    status: str
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False


@dataclass
class DownloadReport:
    """What one :func:`download` call did, file by file, with bytes and wall time."""

    database: str
    dest: Path
    mirror: str
    files: list[FileResult] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def _with(self, status: str) -> list[FileResult]:
        return [f for f in self.files if f.status == status]

    @property
    def downloaded(self) -> list[FileResult]:
        """Files fetched (and verified) in this run."""
        return self._with("downloaded")

    @property
    def skipped(self) -> list[FileResult]:
        """Files already present and verified, so not fetched again."""
        return self._with("skipped")

    @property
    def failed(self) -> list[FileResult]:
        """Files (or patients, or archives) that could not be made available, with reasons."""
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    @property
    def bytes_downloaded(self) -> int:
        """Bytes transferred in this run, all files together."""
        return sum(f.bytes for f in self.files)

    @property
    def mb_per_s(self) -> float:
        """Throughput of the whole job in MB/s (10^6 bytes), 0 when nothing was fetched."""
        return self.bytes_downloaded / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def raise_for_failures(self) -> None:
        """Raise :class:`DownloadError` listing the failures, if any."""
        if self.failed:
            lines = "\n".join(f"  {f.path}: {f.error}" for f in self.failed)
            raise DownloadError(f"{self.database}: {len(self.failed)} file(s) failed:\n{lines}")

    def summary(self) -> str:
        """A few human-readable lines: counts, bytes, time, MB/s, then each failure."""
        lines = [
            f"{self.database} -> {self.dest}: {len(self.downloaded)} downloaded, "
            f"{len(self.skipped)} already present, {len(self.failed)} failed; "
            f"{self.bytes_downloaded / 1e6:.1f} MB in {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s)"
        ]
        if self.extracted:
            lines.append(f"  extracted: {', '.join(self.extracted)}")
        lines += [f"  FAILED {f.path}: {f.error}" for f in self.failed]
        return "\n".join(lines)


# --------------------------------------------------------------------------- sources


class _Retry(Exception):
    """A transient problem (connection, timeout, 5xx, short body): try again, resuming."""


class _Restart(Exception):
    """The ``.part`` cannot be resumed (range not satisfiable, wrong offset): start from zero."""


class _Cancelled(Exception):
    pass


@dataclass
class _Opened:
    stream: BinaryIO
    start: int  # offset of the first byte the stream yields
    length: int | None  # bytes the stream should yield, when known


class _Source:
    """Where files come from: ``open(rel, offset)`` returns a stream starting at ``offset``
    (or at 0 if the source cannot seek, which the caller notices through ``start``)."""

    def describe(self, rel: str) -> str:
        raise NotImplementedError

    def open(self, rel: str, offset: int, timeout: float) -> _Opened:
        raise NotImplementedError


class _HttpSource(_Source):
    def __init__(self, base: str):
        self.base = base if base.endswith("/") else base + "/"

    def describe(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel)

    def open(self, rel: str, offset: int, timeout: float) -> _Opened:
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
                    return _Opened(_EmptyStream(), offset, 0)
                raise _Restart(f"HTTP 416 at offset {offset} (size {total})") from None
            if e.code in (408, 425, 429) or e.code >= 500:
                raise _Retry(f"HTTP {e.code} {e.reason}") from None
            raise DownloadError(f"{rel}: HTTP {e.code} {e.reason} ({url})") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        length_hdr = resp.headers.get("Content-Length")
        length = int(length_hdr) if length_hdr and length_hdr.isdigit() else None
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                resp.close()
                raise _Restart(f"206 with unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            return _Opened(resp, offset, length)
        # A 200 answer to a Range request is the whole file: the caller starts over with it.
        return _Opened(resp, 0, length)


class _LocalSource(_Source):
    def __init__(self, root: Path):
        self.root = root

    def describe(self, rel: str) -> str:
        return str(self.root / rel)

    def open(self, rel: str, offset: int, timeout: float) -> _Opened:
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
            raise _Restart(f"partial file longer than source ({offset} > {size})")
        f.seek(offset)
        return _Opened(f, offset, size - offset)


class _EmptyStream:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _total_from_content_range(value: str) -> int | None:
    m = re.search(r"/(\d+)\s*$", value)
    return int(m.group(1)) if m else None


def _make_source(mirror: str | os.PathLike, db_path: str) -> _Source:
    """Source for one database version from a base URL, ``file://`` URL or local folder."""
    text = os.fspath(mirror)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        base = text if text.endswith("/") else text + "/"
        return _HttpSource(base + urllib.parse.quote(db_path) + "/")
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
    return _LocalSource(root / db_path)


# --------------------------------------------------------------------------- one file


class _Progress:
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


def _fetch_file(
    source: _Source,
    rel: str,
    target: Path,
    sha256: str | None,
    *,
    timeout: float,
    retries: int,
    retry_wait: float,
    progress: _Progress,
    cancel: threading.Event,
) -> FileResult:
    """Make ``target`` a verified copy of ``rel``: skip, resume or fetch, then verify and rename.

    Raises :class:`DownloadError` (naming ``rel``) when it cannot.
    """
    t0 = time.perf_counter()
    if sha256 is not None and target.is_file():
        if _sha256_file(target) == sha256:
            return FileResult(rel, "skipped", seconds=time.perf_counter() - t0)
        log.warning("%s: present but checksum differs, fetching again", target)

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
            got, digest, resumed_now = _transfer(source, rel, part, offset, timeout, progress, cancel)
        except _Restart as e:
            # Not a failure: only raised for offset > 0, and the next try starts at 0.
            log.info("%s: %s; restarting from zero", rel, e)
            part.unlink(missing_ok=True)
            continue
        except _Retry as e:
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
    os.replace(part, target)
    return FileResult(rel, "downloaded", bytes=transferred, seconds=time.perf_counter() - t0, resumed=resumed)


def _transfer(
    source: _Source,
    rel: str,
    part: Path,
    offset: int,
    timeout: float,
    progress: _Progress,
    cancel: threading.Event,
) -> tuple[int, str, bool]:
    """Append the rest of ``rel`` to ``part`` starting at ``offset``.

    Returns (bytes received, sha256 of the whole ``.part``, whether it resumed). Raises
    ``_Retry`` on a short or broken body, after keeping what arrived for the next attempt.
    """
    opened = source.open(rel, offset, timeout)
    resumed = opened.start > 0
    hasher = hashlib.sha256()
    received = 0
    try:
        if resumed:
            # Hash the prefix already on disk so the whole file is verified in one pass.
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        if opened.length is not None:
            progress.add_total(opened.length)
        with open(part, "ab" if resumed else "wb") as out:
            while True:
                if cancel.is_set():
                    raise _Cancelled()
                try:
                    chunk = opened.stream.read(_CHUNK)
                except (OSError, HTTPException) as e:  # timeouts are OSErrors
                    raise _Retry(f"connection lost after {received} bytes: {type(e).__name__}: {e}") from None
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    finally:
        opened.stream.close()
    # urllib returns a short body silently when the server closes early; Content-Length tells.
    if opened.length is not None and received < opened.length:
        raise _Retry(f"connection closed after {received} of {opened.length} bytes")
    return received, hasher.hexdigest(), resumed


# --------------------------------------------------------------------------- zip


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "'..' in path"
    if "\x00" in name:
        return "NUL in name"
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):
        return "symbolic link"
    # Many writers leave the type bits at 0; only a type that is set and not file/dir is odd.
    if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    if not any(p not in ("", ".") for p in parts):
        return "empty name"
    return None


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Safely extract ``archive`` into the folder ``target``; return False if already there.

    Every member is checked before anything is written: an absolute path, a ``..``
    component, a symbolic link or a special file raises :class:`DownloadError` naming the
    member. Extraction goes to a temporary folder inside ``target`` whose top-level entries
    are then renamed into place, so a crash never leaves a half-extracted tree under the
    final name. It is skipped when every member already exists with the right size.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: not a readable zip archive: {e}") from None
    with zf:
        members = zf.infolist()
        for info in members:
            problem = _zip_member_problem(info)
            if problem:
                raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: {problem}")
        if _already_extracted(members, target):
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extracting", dir=target))
        try:
            tmp_real = os.path.realpath(tmp)
            tops: set[str] = set()
            for info in members:
                rel = "/".join(p for p in info.filename.replace("\\", "/").split("/") if p not in ("", "."))
                out = tmp / rel
                # Belt and braces after the name checks: the resolved path must stay inside.
                if os.path.commonpath([tmp_real, os.path.realpath(out)]) != tmp_real:
                    raise DownloadError(f"{archive.name}: refusing member {info.filename!r}: escapes target")
                tops.add(rel.split("/", 1)[0])
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            trash = tmp / ".old"
            for top in sorted(tops):
                final = target / top
                if final.exists() or final.is_symlink():
                    # Moved aside (atomic) rather than deleted first, so the swap is quick.
                    trash.mkdir(exist_ok=True)
                    os.replace(final, trash / top)
                os.replace(tmp / top, final)
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{archive}: corrupt zip archive: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _already_extracted(members: Sequence[zipfile.ZipInfo], target: Path) -> bool:
    for info in members:
        path = target / info.filename
        if info.is_dir():
            if not path.is_dir():
                return False
        else:
            try:
                if path.stat().st_size != info.file_size:
                    return False
            except OSError:
                return False
    return True


# --------------------------------------------------------------------------- the job


def _resolve_database(database: str | Database) -> Database:
    if isinstance(database, Database):
        return database
    key = database.lower()
    if key not in DATABASES:
        raise ConfigError(f"unknown database {database!r}; known: {', '.join(DATABASES)}")
    return DATABASES[key]


def _load_checksums(
    source: _Source,
    db: Database,
    root: Path,
    keep: Callable[[str], bool] | None,
    refresh: bool,
    common: dict,
) -> tuple[dict[str, str], FileResult]:
    """Fetch (or reuse) the database's SHA256SUMS.txt and parse it."""
    target = root / CHECKSUM_FILE
    rel_report = f"{db.path}/{CHECKSUM_FILE}"
    if target.is_file() and not refresh:
        # A PhysioNet version folder never changes, so its checksum list is cached for good;
        # that matters for Icentia11k, whose list is large.
        try:
            with open(target, encoding="utf-8") as f:
                return parse_sha256sums(f, keep), FileResult(rel_report, "skipped")
        except (DownloadError, UnicodeDecodeError, OSError) as e:
            log.warning("%s: unreadable (%s), fetching again", target, e)
    result = _fetch_file(source, CHECKSUM_FILE, target, None, **common)
    result.path = rel_report
    try:
        with open(target, encoding="utf-8") as f:
            return parse_sha256sums(f, keep), result
    except (DownloadError, UnicodeDecodeError) as e:
        target.unlink(missing_ok=True)  # e.g. an HTML error page served with status 200
        raise DownloadError(f"{rel_report}: not a checksum list: {e}") from None


def download(
    database: str | Database,
    dest: str | os.PathLike = "data/raw",
    mirror: str | os.PathLike = DEFAULT_MIRROR,
    patients: str | int | Iterable[int] | None = None,
    progress: bool = True,
    workers: int = DEFAULT_WORKERS,
    *,
    include: Callable[[str], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
    retry_wait: float = 1.0,
    refresh_checksums: bool = False,
) -> DownloadReport:
    """Download one PhysioNet database into ``dest/<db path>/``, verified file by file.

    ``database`` is a key of :data:`DATABASES` (``cinc2017``, ``mitdb``, ``svdb``,
    ``aftdb``, ``icentia11k``) or a :class:`Database`. ``mirror`` is a base URL (http or
    https) or a local folder / ``file://`` URL laid out like ``https://physionet.org/files/``.
    ``patients`` is required for Icentia11k (``"0-9"``, ``"0,5,7"`` or ints) and refused
    for the others. ``include`` further filters relative paths (e.g. only ``.hea`` files).
    ``workers`` files are fetched at once; each transfer gets ``retries`` more attempts on
    connection errors, waiting ``retry_wait`` seconds, doubled each time.

    Per-file problems are recorded in the returned report rather than raised (call
    :meth:`DownloadReport.raise_for_failures` to turn them into an exception). Raises
    :class:`ConfigError` for a bad argument and :class:`DownloadError` when the checksum
    list itself cannot be obtained.
    """
    db = _resolve_database(database)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    selected = None
    if db.patient_files is not None:
        if patients is None:
            raise ConfigError(f"{db.name}: select patients (e.g. '0-9' or '0,5,7'); the full set is huge")
        selected = parse_patients(patients)
    elif patients is not None:
        raise ConfigError(f"{db.name}: has no patient selection (only icentia11k does)")

    dest = Path(dest)
    mirror_text = os.fspath(mirror)
    source = _make_source(mirror, db.path)
    root = dest / db.path
    report = DownloadReport(db.name, dest, mirror_text)
    t0 = time.perf_counter()
    bar = _Progress(db.name, progress)
    cancel = threading.Event()
    common = dict(timeout=timeout, retries=retries, retry_wait=retry_wait, progress=bar, cancel=cancel)
    try:
        wanted: set[str] | None = None
        patient_of: dict[str, int] = {}
        if selected is not None:
            for n in selected:
                for rel in db.patient_files(n):
                    patient_of[rel] = n
            wanted = set(patient_of)
        elif db.files is not None:
            wanted = set(db.files)

        keep = None if wanted is None else wanted.__contains__
        sums, sums_result = _load_checksums(source, db, root, keep, refresh_checksums, common)
        report.files.append(sums_result)

        # Asked-for files without a checksum cannot be verified, so they are failures.
        if selected is not None:
            present = {patient_of[rel] for rel in sums}
            for n in selected:
                if n not in present:
                    folder = os.path.dirname(next(iter(db.patient_files(n))))
                    report.files.append(
                        FileResult(f"{db.path}/{folder}/", "failed", error=f"patient {n} not listed in {CHECKSUM_FILE}")
                    )
        elif db.files is not None:
            for rel in db.files:
                if rel not in sums and (include is None or include(rel)):
                    report.files.append(
                        FileResult(f"{db.path}/{rel}", "failed", error=f"not listed in {CHECKSUM_FILE}")
                    )
        if include is not None:
            sums = {rel: digest for rel, digest in sums.items() if include(rel)}

        report.files += _fetch_all(source, db, root, sums, workers, common, cancel)

        ok_paths = {f.path for f in report.files if f.status != "failed"}
        for archive in db.extract:
            if f"{db.path}/{archive}" not in ok_paths:
                continue
            try:
                if extract_zip(root / archive, root):
                    report.extracted.append(f"{db.path}/{archive}")
            except (DownloadError, OSError) as e:
                report.files.append(FileResult(f"{db.path}/{archive}", "failed", error=f"extraction: {e}"))
    except KeyboardInterrupt:
        # Workers stop at their next chunk; their .part files stay for a later resume.
        cancel.set()
        raise
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
    return report


def _fetch_all(
    source: _Source,
    db: Database,
    root: Path,
    sums: dict[str, str],
    workers: int,
    common: dict,
    cancel: threading.Event,
) -> list[FileResult]:
    def one(rel: str) -> FileResult:
        try:
            result = _fetch_file(source, rel, root / rel, sums[rel], **common)
        except DownloadError as e:
            result = FileResult(rel, "failed", error=str(e))
        except OSError as e:  # local disk trouble: full, permissions
            result = FileResult(rel, "failed", error=f"{type(e).__name__}: {e}")
        result.path = f"{db.path}/{rel}"
        return result

    rels = sorted(sums)
    if workers == 1 or len(rels) <= 1:
        return [one(rel) for rel in rels]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(rels)), thread_name_prefix="ecgtl-download")
    try:
        futures = [pool.submit(one, rel) for rel in rels]
        return [f.result() for f in futures]
    except BaseException:
        # Set before shutdown waits, or Ctrl-C would wait for every running file to finish.
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``download`` subcommand on an argparse ``subparsers`` object.

    ``ecgtl download DB [DB ...] --dest data/raw --mirror URL_OR_DIR --patients 0-9
    --workers 4``; the parsed namespace's ``func`` is :func:`run_from_args`.
    """
    lines = "\n".join(f"  {name:<11} {db.path:<31} {db.title}" for name, db in DATABASES.items())
    p = subparsers.add_parser(
        "download",
        help="download PhysioNet databases (verified, resumable)",
        description="Download PhysioNet databases into DEST/<database>/<version>/, "
        "verifying every file against the database's SHA256SUMS.txt.\n\ndatabases:\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("databases", nargs="+", metavar="DB", choices=list(DATABASES), help="database(s) to fetch")
    p.add_argument("--dest", default="data/raw", help="destination root (default: %(default)s)")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help="base URL or local folder (default: %(default)s)")
    p.add_argument("--patients", help="Icentia11k patients: a range '0-9', a list '0,5,7' or both")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel transfers (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="socket timeout, s (default: %(default)s)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries per file (default: %(default)s)")
    p.add_argument("--refresh-checksums", action="store_true", help="fetch SHA256SUMS.txt again even if cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Run the ``download`` subcommand; return 0 if every file is available, else 1 (2 for bad arguments)."""
    dbs = list(dict.fromkeys(args.databases))
    if args.patients is not None and not any(DATABASES[d].patient_files for d in dbs):
        print("error: --patients only applies to icentia11k", file=sys.stderr)
        return 2
    status = 0
    for name in dbs:
        patients = args.patients if DATABASES[name].patient_files else None
        try:
            report = download(
                name,
                args.dest,
                mirror=args.mirror,
                patients=patients,
                progress=not args.no_progress,
                workers=args.workers,
                timeout=args.timeout,
                retries=args.retries,
                refresh_checksums=args.refresh_checksums,
            )
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except DownloadError as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            status = 1
            continue
        print(report.summary())
        if not report.ok:
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m ecgtl.data.download DB ...``."""
    parser = argparse.ArgumentParser(prog="ecgtl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["download", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
