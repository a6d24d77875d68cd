"""``ecgtl prepare``: build the pre-training store from Icentia11k (either release), annotated WFDB databases and CinC 2017 records.

Run on an existing store, it also upgrades the patients already prepared (their uncompressed
beat arrays, see :mod:`ecgtl.data.store`); ``ecgtl prepare --out STORE`` without any source
does only that, without the raw data.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from ecgtl.data.annotations import PROFILES
from ecgtl.data.cinc2017 import Cinc2017, read_record_list
from ecgtl.data.cinc_store import cinc_jobs
from ecgtl.data.download import parse_patients
from ecgtl.data.icentia11k import IcentiaTorrentPatient, IcentiaWfdbPatient, find_torrent_patients, find_wfdb_patients
from ecgtl.data.store import MANIFEST_FILE, Store, prepare
from ecgtl.data.wfdb_database import database_records
from ecgtl.errors import ConfigError


def build_jobs(icentia: str | None = None, icentia_torrent: str | None = None, patients: str | None = None,
               torrent_gain: float = 1.0, databases: list[str] = (), cinc: str | None = None,
               cinc_records: str | None = None) -> list[tuple[str, object]]:
    """``(patient_id, reader_factory)`` jobs for :func:`ecgtl.data.store.prepare`.

    ``databases`` are ``NAME=FOLDER`` pairs, NAME one of the annotation profiles
    (``mitdb``, ``svdb``, ``aftdb``, ...), FOLDER the database's version folder with its RECORDS.
    """
    jobs: list[tuple[str, object]] = []
    selected = parse_patients(patients) if patients else None
    if icentia:
        found = find_wfdb_patients(icentia)
        chosen = selected if selected is not None else found
        # a selected patient that is absent becomes a reported failure, not a silent skip
        jobs += [(f"icentia11k/p{n:05d}", functools.partial(IcentiaWfdbPatient, icentia, n)) for n in chosen]
    if icentia_torrent:
        found = find_torrent_patients(icentia_torrent)
        chosen = selected if selected is not None else found
        jobs += [(f"icentia11k/p{n:05d}", functools.partial(IcentiaTorrentPatient, icentia_torrent, n, torrent_gain))
                 for n in chosen]
    for spec in databases:
        name, sep, folder = spec.partition("=")
        if not sep or name not in PROFILES:
            raise ConfigError(f"--database expects NAME=FOLDER with NAME one of {', '.join(PROFILES)}; got {spec!r}")
        jobs += database_records(folder, name)
    if cinc:
        if not cinc_records:
            raise ConfigError("--cinc needs --cinc-records: the training split (a splits.json or a list); "
                              "pre-training on test records would leak them into the comparison")
        names = read_record_list(cinc_records) if cinc_records != "all" else Cinc2017(cinc).names
        jobs += cinc_jobs(cinc, names)  # ecgtl.data.cinc_store: resampled to 250 Hz, beats from the QRS detector
    ids = [pid for pid, _ in jobs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the same patient comes from two sources (e.g. both Icentia11k releases): prepare them into different stores")
    if not jobs:
        raise ConfigError("nothing to prepare: give --icentia, --icentia-torrent and/or --database")
    return jobs


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("prepare", description=__doc__)
    p.add_argument("--out", default="data/store", help="store folder (default: data/store)")
    p.add_argument("--icentia", metavar="DIR", help="Icentia11k WFDB release folder (icentia11k-continuous-ecg/1.0)")
    p.add_argument("--icentia-torrent", metavar="DIR", help="folder with NNNNN_batched.pkl.gz + NNNNN_batched_lbls.pkl.gz")
    p.add_argument("--patients", help="Icentia11k patients, e.g. 0-99 or 0,5,7 (default: all found)")
    p.add_argument("--torrent-gain", type=float, default=1.0, help="adu per mV of the torrent signal values (default 1.0)")
    p.add_argument("--database", action="append", default=[], metavar="NAME=DIR",
                   help=f"annotated WFDB database, NAME one of {', '.join(PROFILES)} (repeatable)")
    p.add_argument("--cinc", metavar="DIR", help="CinC 2017 folder: records as unannotated data (beats detected) for heart-rate pre-training")
    p.add_argument("--cinc-records", metavar="FILE", help="which CinC records: a splits.json (its train list), a list file, or 'all'")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (default: CPU count)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    if not (args.icentia or args.icentia_torrent or args.database or args.cinc) and (Path(args.out) / MANIFEST_FILE).is_file():
        jobs = []  # no source: upgrade the existing store in place (uncompressed beat arrays), nothing re-read
    else:
        jobs = build_jobs(args.icentia, args.icentia_torrent, args.patients, args.torrent_gain, args.database,
                          args.cinc, args.cinc_records)
    report = prepare(args.out, jobs, workers=args.workers, progress=not args.no_progress)
    print(report.summary())
    print(describe_store(args.out))
    return 1 if report.failures or report.upgrade_failures else 0


def describe_store(root: str | os.PathLike) -> str:
    store = Store(root)
    t = store.manifest["totals"]
    size = store.size_bytes()
    lines = [f"store {Path(root)}: {t['patients']} patients, {t['hours']:.1f} h, {size / 1e6:.1f} MB on disk",
             "  beats:  " + ", ".join(f"{k} {v:,}" for k, v in t["beat_counts"].items()),
             "  rhythm: " + ", ".join(f"{k} {v:,}" for k, v in t["rhythm_counts"].items())]
    if store.manifest["failures"]:
        lines.append(f"  {len(store.manifest['failures'])} patient(s) failed; see manifest.json 'failures'")
    return "\n".join(lines)
