"""The report of a download: one :class:`FileResult` per file, gathered in a :class:`DownloadReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ecgtl.errors import DownloadError

__all__ = ["DownloadReport", "FileResult"]


@dataclass
class FileResult:
    """Outcome for one file: ``status`` is ``downloaded``, ``skipped`` or ``failed``.

    ``path`` is relative to the destination root (``mitdb/1.0.0/100.dat``); ``bytes`` counts
    what crossed the wire in this run (0 when skipped); ``error`` explains a failure.
    ``kept_as`` names the copy a changed file was renamed to before the verified one came back.
    """

    path: str
    status: str
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False
    kept_as: str | None = None


@dataclass
class DownloadReport:
    """What one :func:`~ecgtl.data.download.download` call did, file by file, with bytes and wall time."""

    database: str
    dest: Path
    mirror: str
    files: list[FileResult] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    #: files of the user's that the job left in place (``path``, why), e.g. an edited RECORDS
    kept: list[tuple[str, str]] = field(default_factory=list)
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
        for f in self.files:
            if f.kept_as:
                lines.append(f"  {f.path} had changed since it was downloaded: your copy is kept as "
                             f"{f.kept_as}, the verified file is back")
        if self.kept:
            names = ", ".join(f"{p} ({why})" for p, why in self.kept[:10])
            more = f" and {len(self.kept) - 10} more" if len(self.kept) > 10 else ""
            lines.append(f"  kept {len(self.kept)} file(s) you changed or added: {names}{more}; the archive's "
                         "version was not written (delete or rename a file and rerun to get it)")
        lines += [f"  FAILED {f.path}: {f.error}" for f in self.failed]
        return "\n".join(lines)
