"""Errors that name the offending file and the problem, so a bulk job can report and skip."""

from __future__ import annotations

import os


class EcgtlError(Exception):
    """Base class of the errors ecgtl raises on purpose."""


class DataError(EcgtlError):
    """A data file is missing, corrupt, truncated, of the wrong rate, or unsafe.

    The message always starts with the file's path, then the problem, so that
    ``str(err)`` alone is enough for a log line or a manifest entry.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DownloadError(EcgtlError):
    """A download failed (network, HTTP status, checksum mismatch, unsafe archive)."""


class ConfigError(EcgtlError):
    """A configuration or command-line value is invalid."""


class TrainingDiverged(EcgtlError, FloatingPointError):
    """Training produced a non-finite loss or non-finite weights; nothing non-finite was checkpointed."""
