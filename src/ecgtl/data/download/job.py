"""Orchestration: :func:`download` one database, from the checksum list to extracted archives.

The job resolves the database and patient selection, checks that the destination is a
writable folder, takes the database folder's lock (two downloads into one folder would
write the same ``.part`` files and extraction records), fetches (or reuses) the database's
``SHA256SUMS.txt``, fetches the wanted files on a thread pool through
:func:`~ecgtl.data.download.fetch.fetch_file`, records each outcome in a
:class:`~ecgtl.data.download.report.DownloadReport`, and unpacks verified archives with
:func:`~ecgtl.data.download.extract.extract_archive`, which never overwrites the verified
files next to them nor any file it did not write. One file failing does not stop the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ecgtl.data.download.catalog import DEFAULT_MIRROR, Database, parse_patients, resolve_database
from ecgtl.data.download.checksums import CHECKSUM_FILE, parse_sha256sums
from ecgtl.data.download.extract import extract_archive
from ecgtl.data.download.fetch import DEFAULT_RETRIES, Progress, fetch_file
from ecgtl.data.download.report import DownloadReport, FileResult
from ecgtl.data.download.sources import DEFAULT_MIN_SPEED, DEFAULT_STALL_S, DEFAULT_TIMEOUT_S, Source, make_source
from ecgtl.errors import ConfigError, DownloadError
from ecgtl.fileio import exclusive_lock

__all__ = ["DEFAULT_WORKERS", "download"]

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4


def _load_checksums(
    source: Source,
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
    result = fetch_file(source, CHECKSUM_FILE, target, None, **common)
    result.path = rel_report
    try:
        with open(target, encoding="utf-8") as f:
            return parse_sha256sums(f, keep), result
    except (DownloadError, UnicodeDecodeError) as e:
        target.unlink(missing_ok=True)  # e.g. an HTML error page served with status 200
        raise DownloadError(f"{rel_report}: not a checksum list: {e}") from None


def _writable_folder(root: Path) -> None:
    """Create ``root`` and check that files can be written there, or raise
    :class:`DownloadError` naming the path and what to do."""
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # exists() is False below a file too: the walk stops at it
    if existing.exists() and not existing.is_dir():
        raise DownloadError(f"{existing}: is a file, not a folder; give a folder as the destination (--dest)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        where = e.filename if e.filename and Path(e.filename).parent != root else root  # not the probe's name
        raise DownloadError(
            f"{where}: cannot write the download here ({e.strerror or e}); give a writable folder as --dest"
        ) from None


@contextlib.contextmanager
def _folder_lock(root: Path) -> Iterator[None]:
    """Hold the lock of one database folder, or raise :class:`DownloadError` if another
    download holds it. The lock file sits next to the folder (``.<version>.download.lock``)
    and is released by the system when the process ends, however it ends."""
    path = root.parent / f".{root.name}.download.lock"
    with exclusive_lock(path,
                        busy=lambda pid: DownloadError(f"another `ecgtl download` is writing to {root} (pid {pid}); "
                                                       "wait for it to finish or use another --dest"),
                        unusable=lambda e: DownloadError(f"{path}: cannot create the lock file ({e.strerror}); "
                                                         "give a writable folder as --dest")):
        yield


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
    min_speed: float = DEFAULT_MIN_SPEED,
    stall_seconds: float = DEFAULT_STALL_S,
) -> DownloadReport:
    """Download one PhysioNet database into ``dest/<db path>/``, verified file by file.

    ``database`` is a key of :data:`DATABASES` (``cinc2017``, ``mitdb``, ``svdb``,
    ``aftdb``, ``icentia11k``) or a :class:`Database`. ``mirror`` is a base URL (http or
    https) or a local folder / ``file://`` URL laid out like ``https://physionet.org/files/``.
    ``patients`` is required for Icentia11k (``"0-9"``, ``"0,5,7"`` or ints) and refused
    for the others. ``include`` further filters relative paths (e.g. only ``.hea`` files).
    ``workers`` files are fetched at once; each transfer gets ``retries`` more attempts on
    connection errors, waiting ``retry_wait`` seconds, doubled each time. ``timeout`` bounds
    each socket operation; a transfer slower than ``min_speed`` bytes/s over ``stall_seconds``
    is aborted (and retried), so a trickling server cannot hang the job (0 disables).

    Files of the user's are never deleted or overwritten: an extracted file the user edited
    or added is kept (listed in :attr:`DownloadReport.kept`), a downloaded file that no longer
    matches its checksum is renamed to ``<name>.changed`` before the verified one comes back,
    and an archive member that would land on a verified file is refused.

    Per-file problems are recorded in the returned report rather than raised (call
    :meth:`DownloadReport.raise_for_failures` to turn them into an exception). Raises
    :class:`ConfigError` for a bad argument and :class:`DownloadError` when the checksum
    list itself cannot be obtained.
    """
    db = resolve_database(database)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    if min_speed < 0 or stall_seconds < 0:
        raise ConfigError(f"min_speed and stall_seconds must be >= 0, got {min_speed} and {stall_seconds}")
    selected = None
    if db.patient_files is not None:
        if patients is None:
            raise ConfigError(f"{db.name}: select patients (e.g. '0-9' or '0,5,7'); the full set is huge")
        selected = parse_patients(patients, **({"count": db.patient_count} if db.patient_count else {}))
    elif patients is not None:
        raise ConfigError(f"{db.name}: has no patient selection (only icentia11k does)")

    dest = Path(dest)
    mirror_text = os.fspath(mirror)
    source = make_source(mirror, db.path)
    root = dest / db.path
    _writable_folder(root)
    with _folder_lock(root):
        return _run(db, source, root, dest, mirror_text, selected, include, progress, workers, refresh_checksums,
                    dict(timeout=timeout, retries=retries, retry_wait=retry_wait, min_speed=min_speed,
                         stall_seconds=stall_seconds))


def _run(
    db: Database,
    source: Source,
    root: Path,
    dest: Path,
    mirror_text: str,
    selected: list[int] | None,
    include: Callable[[str], bool] | None,
    progress: bool,
    workers: int,
    refresh_checksums: bool,
    settings: dict,
) -> DownloadReport:
    report = DownloadReport(db.name, dest, mirror_text)
    t0 = time.perf_counter()
    bar = Progress(db.name, progress)
    cancel = threading.Event()
    common = dict(settings, progress=bar, cancel=cancel)
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
        # Verified files: an archive member must never land on one of them.
        protect = {CHECKSUM_FILE, *sums, *(db.files or ())}
        if include is not None:
            sums = {rel: digest for rel, digest in sums.items() if include(rel)}

        report.files += _fetch_all(source, db, root, sums, workers, common, cancel)

        ok_paths = {f.path for f in report.files if f.status != "failed"}
        for archive in db.extract:
            if f"{db.path}/{archive}" not in ok_paths:
                continue
            try:
                result = extract_archive(root / archive, root, protect=protect, clean_leftovers=True)
            except (DownloadError, OSError) as e:
                report.files.append(FileResult(f"{db.path}/{archive}", "failed", error=f"extraction: {e}"))
                continue
            if result.written:
                report.extracted.append(f"{db.path}/{archive}")
            report.kept += [(f"{db.path}/{rel}", why) for rel, why in result.kept]
    except KeyboardInterrupt:
        # Workers stop at their next chunk; their .part files stay for a later resume.
        cancel.set()
        raise
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
    return report


def _fetch_all(
    source: Source,
    db: Database,
    root: Path,
    sums: dict[str, str],
    workers: int,
    common: dict,
    cancel: threading.Event,
) -> list[FileResult]:
    def one(rel: str) -> FileResult:
        try:
            result = fetch_file(source, rel, root / rel, sums[rel], **common)
        except DownloadError as e:
            result = FileResult(rel, "failed", error=str(e))
        except OSError as e:  # local disk trouble: full, permissions
            where = e.filename or root / rel
            result = FileResult(rel, "failed", error=f"cannot write {where}: {e.strerror or e}; "
                                "free some space or give a writable folder as --dest")
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
