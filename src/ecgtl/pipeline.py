"""``ecgtl pipeline``: the main job, from raw data to the experiment's report, in one resumable command.

Steps (each skips what an earlier run already did, so a killed run resumes):

1. **mirror**: unpack a local copy of PhysioNet (``../shared/data``: zips + ``physionet-files/``)
   into ``WORK/mirror``, the layout of ``https://physionet.org/files/``.
2. **download**: ``ecgtl download`` every database from that mirror into ``WORK/raw``,
   verifying checksums (the same code that fetches from physionet.org).
3. **prepare**: Icentia11k (the patients present), MIT-BIH, SVDB and AFTDB into the
   pre-training store ``WORK/store``.
4. **cinc**: read every CinC 2017 record and summarise classes and durations.
5. **experiment**: ``ecgtl experiment GRID`` (default ``quick``: the study's first question at toy
   scale, minutes on 2 cores; ``cpu`` and ``paper`` for the real grids) into ``runs/experiments/GRID``:
   pre-training on the store, fine-tuning random vs pre-trained on one split, the results table
   ``results.csv`` and the report ``report/report.md`` with its figures.

``--until cinc`` stops after the data steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.download import download, extract_zip
from ecgtl.data.icentia11k import find_wfdb_patients
from ecgtl.data.prepare import build_jobs, describe_store
from ecgtl.data.store import prepare
from ecgtl.errors import ConfigError

DEFAULT_SHARED = "../shared/data"
PRETRAIN_DATABASES = ("mitdb", "svdb", "aftdb")


def unpack_local_mirror(shared: Path, mirror: Path) -> None:
    """Unpack ``shared`` (PhysioNet zips + a ``physionet-files/`` tree) into ``mirror``."""
    if not (shared / "README.md").is_file():
        raise ConfigError(f"{shared}: not the shared data folder (no README.md); pass --shared-data")
    mirror.mkdir(parents=True, exist_ok=True)
    files = shared / "physionet-files"
    if files.is_dir():
        for src in files.rglob("*"):
            if src.is_file():
                dst = mirror / src.relative_to(files)
                if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst.with_name(dst.name + ".part"))
                    os.replace(dst.with_name(dst.name + ".part"), dst)
    for z in sorted(shared.glob("*.zip")):
        extract_zip(z, mirror)


def run_pipeline(shared: str | os.PathLike = DEFAULT_SHARED, work: str | os.PathLike = "data",
                 workers: int = 2, progress: bool = True, until: str = "experiment", grid: str = "quick",
                 runs: str | os.PathLike = "runs/experiments") -> dict:
    shared, work, runs = Path(shared), Path(work), Path(runs)
    summary: dict = {"shared_data": str(shared), "work": str(work), "steps": {}}
    t0 = time.perf_counter()

    print(f"[1/5] mirror: unpacking {shared} into {work / 'mirror'}")
    unpack_local_mirror(shared, work / "mirror")
    summary["steps"]["mirror"] = {"seconds": round(time.perf_counter() - t0, 1)}

    print(f"[2/5] download: from {work / 'mirror'} into {work / 'raw'} (checksums verified)")
    icentia_present = find_wfdb_patients(work / "mirror" / "icentia11k-continuous-ecg" / "1.0")
    downloads = {}
    for db in ("cinc2017", *PRETRAIN_DATABASES, "icentia11k"):
        patients = ",".join(map(str, icentia_present)) if db == "icentia11k" else None
        if db == "icentia11k" and not patients:
            continue
        report = download(db, work / "raw", mirror=work / "mirror", patients=patients, progress=progress, workers=workers)
        print("  " + report.summary().replace("\n", "\n  "))
        report.raise_for_failures()
        downloads[db] = {"downloaded": len(report.downloaded), "skipped": len(report.skipped),
                         "bytes": report.bytes_downloaded, "seconds": round(report.seconds, 2)}
    summary["steps"]["download"] = downloads

    print(f"[3/5] prepare: pre-training store {work / 'store'}")
    raw = work / "raw"
    jobs = build_jobs(icentia=str(raw / "icentia11k-continuous-ecg" / "1.0") if icentia_present else None,
                      patients=",".join(map(str, icentia_present)) or None,
                      databases=[f"{db}={raw / db / '1.0.0'}" for db in PRETRAIN_DATABASES])
    report = prepare(work / "store", jobs, workers=workers, progress=progress)
    print("  " + report.summary().replace("\n", "\n  "))
    print("  " + describe_store(work / "store").replace("\n", "\n  "))
    summary["steps"]["prepare"] = {"prepared": len(report.prepared), "kept": len(report.skipped),
                                   "failures": report.failures, "seconds": round(report.seconds, 1)}

    print("[4/5] cinc: reading PhysioNet/CinC 2017")
    t = time.perf_counter()
    cinc = Cinc2017(raw / "challenge-2017" / "1.0.0" / "training2017")
    records, failures = cinc.read_all(progress=progress)
    seconds = time.perf_counter() - t
    durations = np.array([r.duration_s for r in records])
    counts = {c: sum(r.label == c for r in records) for c in ("N", "A", "O", "~")}
    print(f"  {len(records)} records ({len(failures)} unreadable) in {seconds:.1f} s ({len(records) / seconds:.0f} records/s); "
          f"labels {cinc.label_file.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
          f"; duration {durations.min():.1f}-{durations.max():.1f} s (median {np.median(durations):.1f})")
    summary["steps"]["cinc"] = {"records": len(records), "failures": failures, "class_counts": counts,
                                "records_per_s": round(len(records) / seconds, 1)}
    runs.mkdir(parents=True, exist_ok=True)
    if until != "cinc":
        from ecgtl.experiments.runner import run_experiment

        print(f"[5/5] experiment {grid}: into {runs / grid}")
        rows = run_experiment(grid, runs / grid, data=os.fspath(raw / "challenge-2017" / "1.0.0" / "training2017"),
                              store=os.fspath(work / "store"), progress=progress)
        summary["steps"]["experiment"] = {"grid": grid, "results": os.fspath(runs / grid / "results.csv"),
                                          "report": os.fspath(runs / grid / "report" / "report.md"), "fine_tunes": len(rows)}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (runs / "pipeline-summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"done in {summary['seconds']:.0f} s; summary in {runs / 'pipeline-summary.json'}")
    return summary


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared-data", default=DEFAULT_SHARED, help="local PhysioNet copy (default: %(default)s)")
    p.add_argument("--work", default="data", help="working folder for mirror, raw files and store (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes/threads (default: %(default)s)")
    p.add_argument("--grid", default="quick", help="experiment grid: quick (minutes), cpu (hours), paper (GPU) or a .yaml "
                                                  "(default: %(default)s)")
    p.add_argument("--until", choices=("cinc", "experiment"), default="experiment", help="stop after this step")
    p.add_argument("--runs", default="runs/experiments", help="output folder of the grids (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: 0 if run_pipeline(a.shared_data, a.work, a.workers, not a.no_progress, a.until, a.grid, a.runs) else 1)
