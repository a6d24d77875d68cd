"""The prepared store on real data: both Icentia11k releases, MIT-BIH/SVDB/AFTDB, parallel, resumable, bad patients."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgtl.data.icentia11k import IcentiaTorrentPatient, IcentiaWfdbPatient
from ecgtl.data.store import SIGNAL_FILE, Store, prepare
from ecgtl.data.wfdb_database import database_records

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def torrent_folder(shared_data, icentia_root, tmp_path_factory) -> Path:
    """Patient 0 in the torrent layout: the real label file + a signal pickle built from the WFDB signals."""
    folder = tmp_path_factory.mktemp("torrent")
    shutil.copy(shared_data / "icentia11k-torrent" / "00000_batched_lbls.pkl.gz", folder)
    rows = [wfdb.rdrecord(str(icentia_root / "p00" / "p00000" / f"p00000_s{s:02d}"), physical=False).d_signal[:, 0]
            for s in range(50)]
    with gzip.open(folder / "00000_batched.pkl.gz", "wb", compresslevel=1) as fh:
        pickle.dump(np.stack(rows).astype(np.int16), fh, protocol=2)
    return folder


def test_both_icentia_releases_prepare_to_identical_stores(icentia_root, torrent_folder, tmp_path):
    # the time each release takes to prepare: benchmarks/bench_data.py ("prepare_icentia")
    wfdb_report = prepare(tmp_path / "a", [("icentia11k/p00000", functools.partial(IcentiaWfdbPatient, icentia_root, 0))], progress=False)
    gain = IcentiaWfdbPatient(icentia_root, 0).gain
    prepare(tmp_path / "b", [("icentia11k/p00000", functools.partial(IcentiaTorrentPatient, torrent_folder, 0, gain))], progress=False)
    assert not wfdb_report.failures
    a, b = Store(tmp_path / "a").open("icentia11k/p00000"), Store(tmp_path / "b").open("icentia11k/p00000")
    assert _sha(a.folder / SIGNAL_FILE) == _sha(b.folder / SIGNAL_FILE)
    for name in ("segment_offsets", "beat_sample", "beat_class", "rhythm"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for key in ("fs", "gain", "baseline", "segments", "segment_lengths", "n_beats", "beat_counts", "rhythm_counts"):
        assert a.meta[key] == b.meta[key], key
    assert a.meta["n_beats"] == 282_712 and a.n_segments == 50
    # footprint: the signal costs exactly its int16 size, the whole patient less than the raw WFDB files
    raw = sum(p.stat().st_size for p in (icentia_root / "p00" / "p00000").iterdir())
    stored = sum(p.stat().st_size for p in a.folder.iterdir())
    assert (a.folder / SIGNAL_FILE).stat().st_size == 2 * a.meta["n_samples"]
    print(f"store {stored / 1e6:.1f} MB vs raw WFDB {raw / 1e6:.1f} MB ({stored / raw:.3f}x)")
    assert stored <= raw


def test_frames_are_memory_mapped_slices(icentia_root, tmp_path):
    prepare(tmp_path, [("icentia11k/p00000", functools.partial(IcentiaWfdbPatient, icentia_root, 0))], progress=False)
    patient = Store(tmp_path).open("icentia11k/p00000")
    assert isinstance(patient.signal, np.memmap)
    frame = patient.frame(segment=7, start=1000, length=4096)
    ref = wfdb.rdrecord(str(icentia_root / "p00" / "p00000" / "p00000_s07"), sampfrom=1000, sampto=5096).p_signal[:, 0]
    np.testing.assert_allclose(frame, ref, atol=1e-5)
    with pytest.raises(IndexError):
        patient.frame(segment=49, start=patient.segment_lengths[49] - 10, length=4096)
    beats = patient.beats_between(patient.segment_offsets[7] + 1000, patient.segment_offsets[7] + 5096)
    assert 10 < beats.stop - beats.start < 40  # 16 s of sinus rhythm


def test_annotated_databases_in_parallel_with_a_corrupt_record(mirror, tmp_path):
    db = tmp_path / "mitdb"
    shutil.copytree(mirror / "mitdb" / "1.0.0", db)
    with open(db / "105.dat", "r+b") as fh:  # truncate one record's signal
        fh.truncate(1000)
    (db / "106.hea").write_text("this is not a header\n")
    jobs = database_records(db, "mitdb") + database_records(mirror / "aftdb" / "1.0.0", "aftdb")
    report = prepare(tmp_path / "store", jobs, workers=2, progress=False)
    failed = {f["patient_id"]: f["error"] for f in report.failures}
    assert set(failed) == {"mitdb/105", "mitdb/106"}
    assert "105.dat" in failed["mitdb/105"] and "truncated" in failed["mitdb/105"]
    assert "106.hea" in failed["mitdb/106"]
    store = Store(tmp_path / "store")
    assert len(store) == 46 + 80
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert {f["patient_id"] for f in manifest["failures"]} == {"mitdb/105", "mitdb/106"}
    assert manifest["totals"]["rhythm_counts"]["af"] > 0 and manifest["totals"]["beat_counts"]["pvc"] > 0
    p = store.open("mitdb/100")
    assert p.fs == 250 and p.meta["segment_lengths"] == [round(650000 * 250 / 360)]
    # fixed input is picked up on the next run; what was prepared is kept
    shutil.copy(mirror / "mitdb" / "1.0.0" / "105.dat", db / "105.dat")
    shutil.copy(mirror / "mitdb" / "1.0.0" / "106.hea", db / "106.hea")
    before = (store.root / "patients" / "mitdb" / "100" / "meta.json").stat().st_mtime_ns
    report = prepare(tmp_path / "store", jobs, workers=2, progress=False)
    assert len(report.prepared) == 2 and not report.failures and len(report.skipped) == 126
    assert (store.root / "patients" / "mitdb" / "100" / "meta.json").stat().st_mtime_ns == before
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["failures"] == []


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {src!r})
from ecgtl.data.store import prepare
from ecgtl.data.wfdb_database import database_records
jobs = database_records({db!r}, "svdb")
prepare({out!r}, jobs, workers=1, progress=False)
"""


def test_prepare_resumes_after_sigkill(mirror, tmp_path):
    out = tmp_path / "store"
    script = _KILL_SCRIPT.format(src=SRC, db=str(mirror / "svdb" / "1.0.0"), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some, not all, patients are done
        done = list((out / "patients" / "svdb").glob("*/meta.json")) if (out / "patients" / "svdb").is_dir() else []
        if len(done) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "patients" / "svdb").glob("*/meta.json")}
    assert 5 <= len(finished) < 78
    # a half-written patient is never visible under its final name
    for folder in (out / "patients" / "svdb").iterdir():
        if not folder.name.startswith(".tmp-"):
            assert (folder / "meta.json").is_file() and (folder / SIGNAL_FILE).is_file()
    report = prepare(out, database_records(mirror / "svdb" / "1.0.0", "svdb"), progress=False)
    assert len(report.skipped) == len(finished) and len(report.prepared) == 78 - len(finished)
    assert not list((out / "patients" / "svdb").glob(".tmp-*"))
    for name, mtime in finished.items():
        assert (out / "patients" / "svdb" / name / "meta.json").stat().st_mtime_ns == mtime
    assert len(Store(out)) == 78


def test_cinc_records_as_heart_rate_pretraining_data(cinc_folder, tmp_path):
    """Unannotated CinC records enter the store with QRS-detector beats; only the given (training) records."""
    from ecgtl.data.prepare import build_jobs
    from ecgtl.data.sampling import fixed_frames
    from ecgtl.errors import ConfigError
    from ecgtl.tasks.heart_rate import HR_NOISE

    with pytest.raises(ConfigError, match="--cinc needs --cinc-records"):
        build_jobs(cinc=str(cinc_folder))
    names = [n for n in (cinc_folder / "RECORDS").read_text().split()[:12]]
    (tmp_path / "train.txt").write_text("\n".join(names))
    report = prepare(tmp_path / "store", build_jobs(cinc=str(cinc_folder), cinc_records=str(tmp_path / "train.txt")), progress=False)
    assert not report.failures and len(Store(tmp_path / "store")) == 12
    p = Store(tmp_path / "store").open(f"cinc2017/{names[0]}")
    assert p.fs == 250 and p.meta["source"] == "cinc2017"
    seconds = p.meta["n_samples"] / 250
    assert 0.6 * seconds < p.meta["n_beats"] < 3.5 * seconds  # 36-210 bpm: plausible detected beats
    x, y = fixed_frames(tmp_path / "store", [f"cinc2017/{n}" for n in names], 2500, 4, "heart_rate", seed=0)
    assert x.shape == (48, 1, 2500) and (y != HR_NOISE).mean() > 0.8
