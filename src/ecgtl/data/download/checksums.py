"""Checksums: parsing a database's ``SHA256SUMS.txt`` and hashing files to verify them.

Every path in the list goes through :func:`~ecgtl.data.download.paths.path_problem`, since
the list comes from the network and decides where files are written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from ecgtl.data.download.paths import path_problem
from ecgtl.errors import DownloadError
from ecgtl.fileio import file_sha256

__all__ = ["CHECKSUM_FILE", "CHUNK", "parse_sha256sums", "sha256_file"]

CHECKSUM_FILE = "SHA256SUMS.txt"
CHUNK = 1 << 20  # bytes read (and hashed) at a time


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
        if path_problem(rel) is not None:
            # Paths come from the network: '..' or a leading '/' must not escape the destination.
            raise DownloadError(f"{rel!r}: unsafe path in {CHECKSUM_FILE}")
        sums[rel] = digest
    return sums


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in :data:`CHUNK`-sized pieces."""
    return file_sha256(path, CHUNK)
