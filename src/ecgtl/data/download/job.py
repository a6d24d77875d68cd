"""Orchestration: :func:`download` one database, from the checksum list to extracted archives.

The job resolves the database and patient selection, fetches (or reuses) the database's
``SHA256SUMS.txt``, fetches the wanted files on a thread pool through
:func:`~ecgtl.data.download.fetch.fetch_file`, records each outcome in a
:class:`~ecgtl.data.download.report.DownloadReport`, and unpacks verified archives with
:func:`~ecgtl.data.download.extract.extract_zip`. One file failing does not stop the others.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ecgtl.data.download.catalog import DEFAULT_MIRROR, Database, parse_patients, resolve_database
from ecgtl.data.download.checksums import CHECKSUM_FILE, parse_sha256sums
from ecgtl.data.download.extract import extract_zip
from ecgtl.data.download.fetch import DEFAULT_RETRIES, Progress, fetch_file
from ecgtl.data.download.report import DownloadReport, FileResult
from ecgtl.data.download.sources import DEFAULT_TIMEOUT_S, Source, make_source
from ecgtl.errors import ConfigError, DownloadError

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
    db = resolve_database(database)
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
    source = make_source(mirror, db.path)
    root = dest / db.path
    report = DownloadReport(db.name, dest, mirror_text)
    t0 = time.perf_counter()
    bar = Progress(db.name, progress)
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
