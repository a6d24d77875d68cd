"""``ecgtl pipeline``: the main job, from raw data to a prepared store, in one resumable command.

Steps (each skips what an earlier run already did, so a killed run resumes):

1. **mirror**: unpack a local copy of PhysioNet (``../shared/data``: zips + ``physionet-files/``)
   into ``WORK/mirror``, the layout of ``https://physionet.org/files/``.
2. **download**: ``ecgtl download`` every database from that mirror into ``WORK/raw``,
   verifying checksums (the same code that fetches from physionet.org).
3. **prepare**: Icentia11k (the patients present), MIT-BIH, SVDB and AFTDB into the
   pre-training store ``WORK/store``.
4. **cinc**: read every CinC 2017 record and summarise classes and durations.
5. **pretrain**: the beat task on the store (``--preset``: ``cpu`` on 2 cores, ``paper`` on GPUs),
   at the fine-tuning preset's sampling rate and with its architecture.
6. **finetune**: CinC 2017 from random initialisation and from the pre-trained backbone, on the
   same split, for each label fraction (``--label-fractions 1.0,0.1``) and seed (``--seeds``).
7. **compare**: ``runs/pipeline/comparison.md`` (test macro-F1 with 95% intervals, challenge F1,
   per-class F1, epochs) and ``curves.png`` (validation macro-F1 per epoch).

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
                 workers: int = 2, progress: bool = True, until: str = "compare", preset: str = "cpu",
                 label_fractions: tuple[float, ...] = (1.0, 0.1), seeds: tuple[int, ...] = (0,),
                 runs: str | os.PathLike = "runs/pipeline", model: str | None = None) -> dict:
    shared, work, runs = Path(shared), Path(work), Path(runs)
    summary: dict = {"shared_data": str(shared), "work": str(work), "steps": {}}
    t0 = time.perf_counter()

    print(f"[1/7] mirror: unpacking {shared} into {work / 'mirror'}")
    unpack_local_mirror(shared, work / "mirror")
    summary["steps"]["mirror"] = {"seconds": round(time.perf_counter() - t0, 1)}

    print(f"[2/7] download: from {work / 'mirror'} into {work / 'raw'} (checksums verified)")
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

    print(f"[3/7] prepare: pre-training store {work / 'store'}")
    raw = work / "raw"
    jobs = build_jobs(icentia=str(raw / "icentia11k-continuous-ecg" / "1.0") if icentia_present else None,
                      patients=",".join(map(str, icentia_present)) or None,
                      databases=[f"{db}={raw / db / '1.0.0'}" for db in PRETRAIN_DATABASES])
    report = prepare(work / "store", jobs, workers=workers, progress=progress)
    print("  " + report.summary().replace("\n", "\n  "))
    print("  " + describe_store(work / "store").replace("\n", "\n  "))
    summary["steps"]["prepare"] = {"prepared": len(report.prepared), "kept": len(report.skipped),
                                   "failures": report.failures, "seconds": round(report.seconds, 1)}

    print("[4/7] cinc: reading PhysioNet/CinC 2017")
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
        summary["steps"]["transfer"] = run_transfer(work, runs, preset, label_fractions, seeds, progress, model)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (runs / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"done in {summary['seconds']:.0f} s; summary in {runs / 'summary.json'}")
    return summary


def run_transfer(work: Path, runs: Path, preset: str, label_fractions, seeds, progress: bool, model: str | None = None) -> dict:
    """Steps 5-7: pre-train (beat task), fine-tune random vs pre-trained, compare."""
    from ecgtl.config import FinetuneConfig, PretrainConfig, load_config
    from ecgtl.experiments.compare import compare
    from ecgtl.train.finetune import read_labelled_records, resolve_splits, run_finetune
    from ecgtl.train.pretrain import run_pretrain

    model_override = [f"model.name={model}"] if model else []
    ft = load_config(FinetuneConfig, preset, "finetune", model_override)
    print(f"[5/7] pretrain: beat task on {work / 'store'} ({preset} preset, {ft.model.name} width {ft.model.width} "
          f"at {ft.fs:g} Hz)")
    pre_dir = runs / "pretrain-beat"
    pre = load_config(PretrainConfig, preset, "pretrain", [f"store={work / 'store'}", f"out={pre_dir}", "task=beat",
                                                            f"fs={ft.fs}", f"model.name={ft.model.name}",
                                                            f"model.width={ft.model.width}"])
    run_pretrain(pre, progress=progress)
    data = work / "raw" / "challenge-2017" / "1.0.0" / "training2017"
    splits = runs / "splits.json"
    if not splits.is_file():  # one split for every run of the comparison, made once, so a rerun resumes each run as it was
        split_cfg = load_config(FinetuneConfig, preset, "finetune", [f"data={data}", f"out={runs}", *model_override])
        resolve_splits(split_cfg, runs, *read_labelled_records(split_cfg, progress))
    finetuned = {}
    for fraction in label_fractions:
        for seed in seeds:
            for init in ("random", "pretrained"):
                name = f"{init}-labels{fraction:g}-seed{seed}"
                print(f"[6/7] finetune {name}")
                overrides = [f"data={data}", f"out={runs / name}", f"seed={seed}", f"label_fraction={fraction}", f"splits={splits}",
                             *model_override]
                if init == "pretrained":
                    overrides.append(f"init={pre_dir / 'model.json'}")
                run_finetune(load_config(FinetuneConfig, preset, "finetune", overrides), progress=progress)
                finetuned[name] = runs / name
    print("[7/7] compare")
    result = compare(finetuned, runs)
    print((runs / "comparison.md").read_text())
    print(f"curves: {runs / 'curves.png'}")
    return {k: {kk: vv for kk, vv in v.items() if kk in ("test_macro_f1", "test_challenge_f1", "best_epoch")}
            for k, v in result.items()}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared-data", default=DEFAULT_SHARED, help="local PhysioNet copy (default: %(default)s)")
    p.add_argument("--work", default="data", help="working folder for mirror, raw files and store (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes/threads (default: %(default)s)")
    p.add_argument("--preset", default="cpu", help="cpu (2 cores) or paper (GPU) presets of pretrain and finetune")
    p.add_argument("--label-fractions", default="1.0,0.1", help="fractions of the CinC training labels (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="fine-tuning seeds, e.g. 0,1,2 (default: %(default)s)")
    p.add_argument("--until", choices=("cinc", "compare"), default="compare", help="stop after this step")
    p.add_argument("--runs", default="runs/pipeline", help="output folder of the runs (default: %(default)s)")
    p.add_argument("--model", help="architecture for pre-training and fine-tuning, e.g. resnet18_preact_2d_stft (default: the preset's)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: 0 if run_pipeline(
        a.shared_data, a.work, a.workers, not a.no_progress, a.until, a.preset,
        tuple(float(x) for x in a.label_fractions.split(",")), tuple(int(x) for x in a.seeds.split(",")), a.runs, a.model) else 1)
