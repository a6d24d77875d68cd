"""The ``ecgtl download`` subcommand: :func:`add_parser` registers it, :func:`run_from_args` runs it.

:func:`main` is the standalone entry point behind ``python -m ecgtl.data.download DB ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ecgtl.data.download.catalog import DATABASES, DEFAULT_MIRROR
from ecgtl.data.download.fetch import DEFAULT_RETRIES
from ecgtl.data.download.job import DEFAULT_WORKERS, download
from ecgtl.data.download.sources import DEFAULT_MIN_SPEED, DEFAULT_STALL_S, DEFAULT_TIMEOUT_S
from ecgtl.errors import ConfigError, DownloadError

__all__ = ["add_parser", "main", "run_from_args"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``download`` subcommand on an argparse ``subparsers`` object.

    ``ecgtl download DB [DB ...] --dest data/raw --mirror URL_OR_DIR --patients 0-9
    --workers 4``; the parsed namespace's ``func`` is :func:`run_from_args`.
    """
    lines = "\n".join(f"  {name:<11} {db.path:<31} {db.title}" for name, db in DATABASES.items())
    p = subparsers.add_parser(
        "download",
        description="Download PhysioNet databases into DEST/<database>/<version>/, "
        "verifying every file against the database's SHA256SUMS.txt.\n\ndatabases:\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("databases", nargs="+", metavar="DB", choices=list(DATABASES), help="database(s) to fetch")
    p.add_argument("--dest", default="data/raw", help="destination root (default: %(default)s)")
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help="base URL or local folder (default: %(default)s)")
    p.add_argument("--patients", help="Icentia11k patients: a range '0-9', a list '0,5,7' or both")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="parallel transfers (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="socket timeout: the longest wait for any one read, s (default: %(default)s)")
    p.add_argument("--min-speed", type=float, default=DEFAULT_MIN_SPEED, metavar="BYTES_PER_S",
                   help="abort (and retry) a transfer slower than this over --stall-seconds; 0: never "
                   "(default: %(default)s)")
    p.add_argument("--stall-seconds", type=float, default=DEFAULT_STALL_S, metavar="S",
                   help="the window over which --min-speed is measured (default: %(default)s)")
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
                min_speed=args.min_speed,
                stall_seconds=args.stall_seconds,
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
