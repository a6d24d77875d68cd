"""The prepared store on real data: both Icentia11k releases, MIT-BIH/SVDB/AFTDB, parallel, resumable, bad patients;
the uncompressed (memory-mapped) beat arrays and the in-place upgrade of a store written before them."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import mmap
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

from ecgtl.data.annotations import BeatAnnotations
from ecgtl.data.icentia11k import IcentiaTorrentPatient, IcentiaWfdbPatient
from ecgtl.data.recording import Segment
from ecgtl.data.sampling import FrameSampler
from ecgtl.data.store import (
    ANNOTATIONS_FILE,
    BEAT_ARRAYS,
    SIGNAL_FILE,
    UNCOMPRESSED_FILES,
    Store,
    StoredPatient,
    prepare,
    write_uncompressed_arrays,
)
from ecgtl.data.wfdb_database import database_records
from ecgtl.errors import DataError

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
    # footprint: the signal costs exactly its int16 size, the uncompressed beat arrays 6 bytes a beat (1.7 MB),
    # the whole patient about the raw WFDB files' size (1.002x: 1.01x at most)
    raw = sum(p.stat().st_size for p in (icentia_root / "p00" / "p00000").iterdir())
    stored = sum(p.stat().st_size for p in a.folder.iterdir())
    assert (a.folder / SIGNAL_FILE).stat().st_size == 2 * a.meta["n_samples"]
    npy = sum((a.folder / f).stat().st_size for f in UNCOMPRESSED_FILES)
    assert npy == _npy_bytes(a.meta["n_beats"], a.n_segments) and 1.6e6 < npy < 1.8e6
    print(f"store {stored / 1e6:.1f} MB vs raw WFDB {raw / 1e6:.1f} MB ({stored / raw:.3f}x), "
          f"of which {npy / 1e6:.2f} MB uncompressed beat arrays")
    assert stored <= 1.01 * raw


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


# --------------------------------------------------------------------------- uncompressed beat arrays, upgrade
def _npy_bytes(n_beats: int, n_segments: int) -> int:
    """Disk cost of the four .npy files: 6 bytes a beat, 8 a segment offset, a 128-byte header each."""
    return 6 * n_beats + 8 * (n_segments + 1) + 4 * 128


class _Synthetic:
    """A made-up patient (a reader in milliseconds): beats every ``rr`` samples, classes and rhythms cycling."""

    source, fs, gain, baseline = "synthetic", 250.0, 200.0, 0

    def __init__(self, patient_id: str, lengths: list[int], rr: int = 190, unsorted: bool = False):
        self.patient_id, self.lengths, self.rr, self.unsorted = patient_id, lengths, rr, unsorted

    def segments(self):
        rng = np.random.default_rng(len(self.patient_id))
        for i, n in enumerate(self.lengths):
            pos = np.arange(self.rr // 2 + i, n, self.rr, dtype=np.int64)
            if self.unsorted and len(pos) > 2:
                pos[[0, 1]] = pos[[1, 0]]
            k = np.arange(len(pos))
            beats = BeatAnnotations(pos, (k % 5).astype(np.uint8), (k // 7 % 6).astype(np.uint8))
            yield Segment(f"s{i}", rng.integers(-500, 500, n).astype(np.int16), beats)


def _synthetic_store(root: Path) -> list[str]:
    jobs = [(f"synthetic/p{i}", functools.partial(_Synthetic, f"synthetic/p{i}", [5000 + 700 * i, 3000, 9000]))
            for i in range(4)]
    jobs.append(("synthetic/nobeats", functools.partial(_Synthetic, "synthetic/nobeats", [3000], rr=10**6)))
    report = prepare(root, jobs, progress=False)
    assert not report.failures and not report.upgraded, report.summary()
    return [pid for pid, _ in jobs]


def _arrays(patient: StoredPatient) -> dict[str, np.ndarray]:
    return {name: np.array(getattr(patient, name)) for name in BEAT_ARRAYS}


def _sampler_output(root: Path, ids: list[str], task: str) -> list[np.ndarray]:
    s = FrameSampler(root, ids, 1000, 24, task, seed=5, normalization=(0.0, 2.0), return_position=True, batch_size=8)
    return [t.numpy() for batch in s for t in batch]


def test_beat_arrays_are_written_uncompressed_too_and_memory_mapped(tmp_path):
    ids = _synthetic_store(tmp_path)
    store = Store(tmp_path)
    for pid in ids:
        patient = store.open(pid)
        assert patient.uncompressed
        with np.load(patient.folder / ANNOTATIONS_FILE) as z:
            for name, dtype in BEAT_ARRAYS.items():
                a = getattr(patient, name)
                assert a.dtype == dtype and a.ndim == 1, name
                np.testing.assert_array_equal(a, z[name], err_msg=name)
        assert sum((patient.folder / f).stat().st_size for f in UNCOMPRESSED_FILES) == _npy_bytes(patient.meta["n_beats"], 3 if pid != "synthetic/nobeats" else 1)
        # read-only memory maps of the files: nothing decompressed, nothing loaded
        for name in ("beat_sample", "beat_class", "rhythm"):
            a = getattr(patient, name)
            assert not a.flags.writeable and isinstance(a.base.obj, mmap.mmap), name  # a memoryview of the map
    assert len(store.open("synthetic/nobeats").beat_sample) == 0
    # the frame read equals the memory-mapped signal's slices
    p = store.open(ids[1])
    starts = np.array([0, 17, p.segment_offsets[1], int(p.segment_offsets[-1]) - 64])
    np.testing.assert_array_equal(p.read_frames(starts, 64), np.stack([p.signal[s:s + 64] for s in starts]))
    with pytest.raises(IndexError):
        p.read_frames(starts + 1, 64)


def test_damaged_beat_array_files_are_reported_naming_the_file(tmp_path):
    ids = _synthetic_store(tmp_path)
    folder = Store(tmp_path).open(ids[0]).folder
    path = folder / "beat_sample.npy"
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match="beat_sample.npy: corrupt beat array.*truncated"):
        _ = StoredPatient(folder).beat_sample
    np.save(path, np.arange(5, dtype=np.int64))  # a valid .npy of the wrong type
    with pytest.raises(DataError, match="beat_sample.npy: corrupt beat array"):
        _ = StoredPatient(folder).beat_sample
    (folder / "segment_offsets.npy").write_bytes(b"")
    with pytest.raises(DataError, match="segment_offsets.npy: corrupt beat array"):
        StoredPatient(folder)
    # the writer refuses beats its readers could not trust
    report = prepare(tmp_path, [("synthetic/bad", functools.partial(_Synthetic, "synthetic/bad", [4000], unsorted=True))], progress=False)
    assert "not sorted" in report.failures[0]["error"] and "synthetic/bad" not in Store(tmp_path).patient_ids


def test_a_store_written_before_the_npy_files_works_and_is_upgraded_in_place(tmp_path):
    """An old store (annotations.npz only) gives the same frames and labels; `ecgtl prepare --out STORE` without
    sources writes the missing .npy files from annotations.npz (atomically; nothing re-read), and then the same again."""
    from ecgtl.cli import main

    ids = _synthetic_store(tmp_path)
    want = {task: _sampler_output(tmp_path, ids, task) for task in ("beat", "rhythm", "heart_rate")}
    arrays = {pid: _arrays(Store(tmp_path).open(pid)) for pid in ids}
    folders = [Store(tmp_path).open(pid).folder for pid in ids]
    for folder in folders:  # back to the layout of a store written before the .npy files
        for f in UNCOMPRESSED_FILES:
            (folder / f).unlink()
    (folders[0] / ".beat_sample.npy.x1y2.tmp").write_bytes(b"half of a file")  # a killed upgrade's temporary file
    np.save(folders[3] / "beat_class.npy", arrays[ids[3]]["beat_class"])  # one array already written (a partial upgrade)
    for pid, folder in zip(ids, folders):
        patient = StoredPatient(folder)
        assert not patient.uncompressed
        for name, a in _arrays(patient).items():
            np.testing.assert_array_equal(a, arrays[pid][name], err_msg=name)
    for task, frames in want.items():
        for a, b in zip(_sampler_output(tmp_path, ids, task), frames, strict=True):
            np.testing.assert_array_equal(a, b)
    broken = tmp_path / "patients" / "synthetic" / "p2" / ANNOTATIONS_FILE
    good = broken.read_bytes()
    broken.write_bytes(good[:200])  # a corrupt npz: that patient is not upgraded, the others are
    assert main(["prepare", "--out", str(tmp_path), "--no-progress"]) == 1  # no source: the upgrade alone; one failed
    report = prepare(tmp_path, [], progress=False)
    assert report.upgraded == [] and [f["patient_id"] for f in report.upgrade_failures] == ["synthetic/p2"]
    assert "NOT UPGRADED synthetic/p2" in report.summary() and "corrupt annotation arrays" in report.summary()
    broken.write_bytes(good)
    assert main(["prepare", "--out", str(tmp_path), "--no-progress"]) == 0
    assert prepare(tmp_path, [], progress=False).upgraded == []
    assert prepare(tmp_path, [], progress=False).upgraded == []
    assert write_uncompressed_arrays(folders[0]) == []
    for pid, folder in zip(ids, folders):
        patient = StoredPatient(folder)
        assert patient.uncompressed and not list(folder.glob(".*.tmp"))
        for name, a in _arrays(patient).items():
            np.testing.assert_array_equal(a, arrays[pid][name], err_msg=name)
    for task, frames in want.items():
        for a, b in zip(_sampler_output(tmp_path, ids, task), frames, strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(Store(tmp_path)) == len(ids)
