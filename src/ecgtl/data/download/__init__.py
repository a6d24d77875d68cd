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
- Archives (CinC 2017's ``training2017.zip``) are extracted only after verification, through
  a temporary folder whose files are renamed into place, refusing members that would land
  outside the target or on a verified file.
- Nothing of the user's is deleted or overwritten: extraction records what it wrote
  (``<archive>.extracted.json``) and refreshes only those files, keeping (and reporting) any
  file the user added or edited; a downloaded file changed since is renamed ``<name>.changed``.
- One download at a time per database folder (a lock file next to it); a transfer slower
  than ``min_speed`` bytes/s over ``stall_seconds`` is aborted, so a trickling server cannot
  hang it; a destination that is a file or read-only is refused with its path named.

Only the standard library does the networking (``urllib.request``), so no extra dependency.

This package only re-exports the public names; the code lives by responsibility in:

- :mod:`.catalog`: the databases known, patient selection (:func:`parse_patients`);
- :mod:`.paths`: the one path-safety check for names from the network or an archive;
- :mod:`.checksums`: ``SHA256SUMS.txt`` parsing and file hashing;
- :mod:`.sources`: http(s) and local-folder sources, ``Range`` requests, timeouts;
- :mod:`.fetch`: one file: ``.part``, resume, retries, verification, rename;
- :mod:`.extract`: zip extraction that never writes outside its target nor over a user's file;
- :mod:`.report`: :class:`FileResult` and :class:`DownloadReport`;
- :mod:`.job`: :func:`download`, the orchestration of all the above;
- :mod:`.cli`: the ``ecgtl download`` subcommand.
"""

from __future__ import annotations

# The "X as X" imports are names the former single module also offered, outside __all__.
from ecgtl.data.download.catalog import DATABASES, DEFAULT_MIRROR, Database, icentia11k_patient_files, parse_patients
from ecgtl.data.download.checksums import CHECKSUM_FILE as CHECKSUM_FILE
from ecgtl.data.download.checksums import parse_sha256sums
from ecgtl.data.download.cli import add_parser, run_from_args
from ecgtl.data.download.cli import main as main
from ecgtl.data.download.extract import extract_zip
from ecgtl.data.download.fetch import DEFAULT_RETRIES as DEFAULT_RETRIES
from ecgtl.data.download.job import DEFAULT_WORKERS as DEFAULT_WORKERS
from ecgtl.data.download.job import download
from ecgtl.data.download.report import DownloadReport, FileResult
from ecgtl.data.download.sources import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S

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
