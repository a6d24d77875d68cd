"""CinC 2017 records as unlabelled pre-training data (``ecgtl.data.cinc_store``), on synthetic records.

The records are written here in the CinC layout (``<name>.hea`` + MATLAB v4 ``<name>.mat``,
300 Hz, int16) from a synthetic ECG whose R peaks are known, so the detected beats and
the heart-rate labels can be checked exactly. The real-data counterpart (12 real records
through ``ecgtl prepare --cinc``) is ``tests/test_store.py::test_cinc_records_as_heart_rate_pretraining_data``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from ecgtl.constants import BEAT_UNDEFINED, RHYTHM_UNDEFINED
from ecgtl.data.cinc2017 import read_record
from ecgtl.data.cinc_store import CincStoreRecord, build_cinc_store, cinc_jobs, short_patients
from ecgtl.data.sampling import FrameSampler, fixed_frames
from ecgtl.data.store import Store
from ecgtl.data.transforms import resample
from ecgtl.errors import ConfigError
from ecgtl.tasks.heart_rate import HR_BRADYCARDIA, HR_NORMAL, HR_TACHYCARDIA

FS_IN, FS = 300, 250


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine
    yield
    torch.set_num_threads(before)


def synthetic_ecg(n: int, fs: float, r_peaks: np.ndarray, seed: int = 0) -> np.ndarray:
    """mV: P, Q, R (1.2 mV), S and T waves around each R peak, baseline wander and a little noise."""
    t = np.arange(n) / fs
    x = np.zeros(n)
    for r in np.asarray(r_peaks) / fs:
        for dt, amp, sd in ((-0.16, 0.12, 0.025), (-0.025, -0.12, 0.008), (0.0, 1.2, 0.010), (0.025, -0.3, 0.008),
                            (0.26, 0.3, 0.04)):
            x += amp * np.exp(-0.5 * ((t - r - dt) / sd) ** 2)
    rng = np.random.default_rng(seed)
    return x + 0.1 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(n)


def r_peaks(bpm: float, seconds: float, seed: int = 0) -> np.ndarray:
    """R-peak samples at 300 Hz: mean rate ``bpm``, 3 % RR jitter, first peak at 0.5 s, none in the last 0.3 s."""
    rr = 60.0 / bpm * FS_IN
    rng = np.random.default_rng(seed)
    peaks = np.rint(0.5 * FS_IN + np.concatenate([[0], np.cumsum(rr * (1 + 0.03 * rng.standard_normal(400)))])).astype(np.int64)
    return peaks[peaks < seconds * FS_IN - 0.3 * FS_IN]


def write_cinc(folder: Path, name: str, mv: np.ndarray, gain: float = 1000, baseline: int = 0, fs: int = FS_IN,
               sig_len: int | None = None) -> None:
    """One record in the CinC 2017 layout (the header line of A00001.hea, with this gain and baseline)."""
    val = np.clip(np.rint(np.asarray(mv) * gain + baseline), -32768, 32767).astype(np.int16)
    scipy.io.savemat(folder / f"{name}.mat", {"val": val[None, :]}, format="4")
    gain_field = f"{gain:g}({baseline})" if baseline else f"{gain:g}"
    (folder / f"{name}.hea").write_text(f"{name} 1 {fs} {sig_len or len(val)} 05:05:15 1/05/2000 \n"
                                        f"{name}.mat 16+24 {gain_field}/mV 16 0 {int(val[0])} 0 0 ECG \n")


#: name -> (bpm, seconds, gain, baseline, expected heart-rate class of every 4,096-sample frame)
RECORDS = {
    "A00001": (75, 30, 1000, 0, HR_NORMAL),
    "A00002": (130, 30, 500, 7, HR_TACHYCARDIA),  # another gain and a baseline: both taken from the header
    "A00003": (50, 61, 1000, 0, HR_BRADYCARDIA),
    "A00004": (75, 10, 1000, 0, None),  # 10 s = 2,500 samples at 250 Hz: shorter than a 4,096-sample frame
}


@pytest.fixture(scope="module")
def cinc(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("training2017")
    peaks = {}
    for i, (name, (bpm, seconds, gain, baseline, _)) in enumerate(RECORDS.items()):
        peaks[name] = r_peaks(bpm, seconds, seed=i)
        write_cinc(folder, name, synthetic_ecg(seconds * FS_IN, FS_IN, peaks[name], seed=i), gain, baseline)
    write_cinc(folder, "A09999", synthetic_ecg(30 * FS_IN, FS_IN, r_peaks(75, 30)))  # in the folder, not in the split
    (folder / "RECORDS").write_text("\n".join([*RECORDS, "A09999"]) + "\n")
    (folder / "REFERENCE.csv").write_text("".join(f"{n},N\n" for n in [*RECORDS, "A09999"]))
    return folder, peaks


@pytest.fixture(scope="module")
def store(cinc, tmp_path_factory):
    folder, _ = cinc
    out = tmp_path_factory.mktemp("cinc-store") / "store"
    report = build_cinc_store(folder, list(RECORDS), out, workers=2, progress=False)  # 2 processes: factories pickle
    return out, report


def test_store_holds_exactly_the_given_records(store):
    out, report = store
    assert not report.failures and len(report.prepared) == len(RECORDS)
    s = Store(out)
    assert s.patient_ids == [f"cinc2017/{n}" for n in sorted(RECORDS)]  # A09999 is not in the store
    for name, (_, seconds, gain, baseline, _) in RECORDS.items():
        p = s.open(f"cinc2017/{name}")
        assert p.meta["source"] == "cinc2017" and p.fs == 250.0
        assert p.gain == gain and p.baseline == baseline
        assert p.n_segments == 1 and p.meta["n_samples"] == seconds * FS
    counts = s.manifest["totals"]
    assert sum(counts["beat_counts"].values()) == counts["beat_counts"]["undefined"] > 0
    assert sum(counts["rhythm_counts"].values()) == counts["rhythm_counts"]["undefined"]
    # the short record is stored and reported, for the default 4,096-sample frame and for any other length
    assert report.too_short == ["cinc2017/A00004"] and report.frame_samples == 4096
    assert "1 stored record(s) shorter than a frame of 4096 samples" in report.summary()
    assert short_patients(out, 2048) == [] and short_patients(out, 2501) == ["cinc2017/A00004"]


def test_signal_round_trips_in_millivolts(store, cinc):
    out, _ = store
    folder, _ = cinc
    s = Store(out)
    for name, (_, seconds, gain, _, _) in RECORDS.items():
        p = s.open(f"cinc2017/{name}")
        stored = p.frame(0, 0, seconds * FS)  # mV
        expected = resample(read_record(folder, name).signal, FS_IN, FS)  # the project's reader + resampler, in mV
        assert stored.shape == expected.shape
        # only the int16 quantisation of the stored signal lies between the two: half an adu
        assert np.max(np.abs(stored - expected)) <= 0.5 / gain + 1e-5, name
        assert np.max(np.abs(stored)) > 1.0  # R peaks of 1.2 mV survive the resampling


def test_beats_are_found_at_the_r_peaks(store, cinc):
    out, _ = store
    _, peaks = cinc
    s = Store(out)
    tol = int(0.05 * FS)  # 50 ms: gqrs marks the QRS onset side, ~37 ms before the R peak (ecgtl.signal.qrs)
    for name in RECORDS:
        p = s.open(f"cinc2017/{name}")
        true = np.rint(peaks[name] * FS / FS_IN).astype(np.int64)  # R peaks in samples at 250 Hz
        det = p.beat_sample.astype(np.int64)
        assert np.all(np.diff(det) > 0)
        dist_true = np.min(np.abs(det[:, None] - true[None, :]), axis=0)  # each true peak to its nearest detection
        dist_det = np.min(np.abs(true[:, None] - det[None, :]), axis=0)  # each detection to its nearest true peak
        assert np.all(dist_det <= tol), (name, det[dist_det > tol])  # no false beats
        # gqrs needs some signal before and after a beat: it may miss one in the first or the last second
        inner = (true >= FS) & (true < len(p.signal) - FS)
        assert np.all(dist_true[inner] <= tol), (name, true[dist_true > tol])
        assert len(det) >= len(true) - 2
        offset = np.median((det[:, None] - true[None, :])[np.arange(len(det)), np.argmin(np.abs(det[:, None] - true[None, :]), 1)])
        assert -12 <= offset <= 0  # a constant lead of at most 48 ms: RR intervals, hence heart rates, unchanged
        assert np.all(p.beat_class == BEAT_UNDEFINED) and np.all(p.rhythm == RHYTHM_UNDEFINED)


def test_heart_rate_frames_from_the_sampler(store):
    out, _ = store
    ids = Store(out).patient_ids
    sampler = FrameSampler(out, ids, 4096, frames_per_patient=16, task="heart_rate", seed=0, shuffle_buffer=0,
                           return_position=True)
    assert sampler.unusable == ["cinc2017/A00004"] and sampler.fs == 250.0
    assert len(sampler.patient_ids) == 3 and len(sampler) == 48
    frames = list(sampler)
    x = torch.stack([f[0] for f in frames])
    y = torch.stack([f[1] for f in frames]).numpy()
    pidx = torch.stack([f[2] for f in frames]).numpy()
    assert x.shape == (48, 1, 4096) and x.dtype == torch.float32 and torch.isfinite(x).all()
    for i, pid in enumerate(sampler.patient_ids):
        expected = RECORDS[pid.split("/")[1]][4]
        assert np.all(y[pidx == i] == expected), (pid, y[pidx == i])
    # the short record serves shorter frames; the future task needs no beats at all
    short = FrameSampler(out, ids, 2048, frames_per_patient=4, task="future", seed=0, shuffle_buffer=0)
    assert short.unusable == [] and {int(f[1]) for f in short} == {-1}
    with pytest.warns(RuntimeWarning, match="1 patient"):
        xv, yv = fixed_frames(out, ids, 4096, 2, "heart_rate", seed=0)  # validation frames skip it with a warning
    assert xv.shape == (6, 1, 4096) and sorted(yv.tolist()) == sorted([HR_NORMAL, HR_TACHYCARDIA, HR_BRADYCARDIA] * 2)


def test_bad_records_are_skipped_and_reported(cinc, tmp_path):
    src, _ = cinc
    folder = tmp_path / "cinc"
    folder.mkdir()
    good = synthetic_ecg(30 * FS_IN, FS_IN, r_peaks(75, 30))
    write_cinc(folder, "A00001", good)
    write_cinc(folder, "A00010", good[:6000], sig_len=9000)  # truncated signal
    write_cinc(folder, "A00011", good * 40)  # tens of mV: a wrong gain, refused by the reader's amplitude check
    write_cinc(folder, "A00012", good)
    (folder / "A00012.mat").write_bytes(b"not a MAT file at all")
    (folder / "A00013.hea").write_text("A00013 1 300\n")  # header without signal lines
    out = tmp_path / "store"
    names = ["A00001", "A00010", "A00011", "A00012", "A00013", "A00014"]  # A00014: no files at all
    report = build_cinc_store(folder, names, out, workers=1, progress=False)
    assert [m["patient_id"] for m in report.prepared] == ["cinc2017/A00001"]
    errors = {f["patient_id"].split("/")[1]: f["error"] for f in report.failures}
    assert sorted(errors) == names[1:]
    assert "truncated" in errors["A00010"] and "mV" in errors["A00011"] and "MAT" in errors["A00012"]
    assert "header" in errors["A00013"] and "not found" in errors["A00014"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["patient_id"] for p in manifest["patients"]] == ["cinc2017/A00001"]
    assert sorted(f["patient_id"] for f in manifest["failures"]) == [f"cinc2017/{n}" for n in names[1:]]
    # resume after a fix: the good patient is kept, the repaired one prepared, the rest still reported
    write_cinc(folder, "A00012", good)
    again = build_cinc_store(folder, names, out, workers=1, progress=False)
    assert again.skipped == ["cinc2017/A00001"] and [m["patient_id"] for m in again.prepared] == ["cinc2017/A00012"]
    assert len(again.failures) == 4 and Store(out).patient_ids == ["cinc2017/A00001", "cinc2017/A00012"]
    # a store that holds other records is not a store of these records: refused, nothing written
    with pytest.raises(ConfigError, match="not among the 1 records given"):
        build_cinc_store(folder, ["A00001"], out, progress=False)
    with pytest.raises(ConfigError, match="given twice"):
        build_cinc_store(folder, ["A00001", "A00001"], tmp_path / "other", progress=False)
    with pytest.raises(ConfigError, match="not one string"):
        cinc_jobs(src, "A00001")


def test_jobs_are_picklable_and_used_by_prepare_cli(cinc, tmp_path):
    from ecgtl.data.prepare import build_jobs

    folder, _ = cinc
    jobs = cinc_jobs(folder, ["A00001", "A00002"])
    assert [pid for pid, _ in jobs] == ["cinc2017/A00001", "cinc2017/A00002"]
    reader = pickle.loads(pickle.dumps(jobs[1][1]))()
    assert isinstance(reader, CincStoreRecord) and reader.patient_id == "cinc2017/A00002"
    assert (reader.fs, reader.gain, reader.baseline, reader.source) == (250.0, 500.0, 7, "cinc2017")
    (tmp_path / "train.txt").write_text("A00001\nA00003\n")
    cli = build_jobs(cinc=str(folder), cinc_records=str(tmp_path / "train.txt"))
    assert [pid for pid, _ in cli] == ["cinc2017/A00001", "cinc2017/A00003"]
    assert isinstance(cli[0][1](), CincStoreRecord)


def test_below_the_detector_range_beats_come_from_the_record_rate(cinc):
    """At a store rate under 128 Hz (outside gqrs's validated range) beats are detected at 300 Hz and rescaled."""
    folder, peaks = cinc
    reader = CincStoreRecord(folder, "A00001", target_fs=100)
    (seg,) = reader.segments()
    assert reader.fs == 100.0 and len(seg.signal) == 3000
    true = peaks["A00001"] * 100 / FS_IN
    det = seg.beats.sample
    assert np.all(np.min(np.abs(det[:, None] - true[None, :]), axis=1) <= 5)  # within 50 ms
    assert len(det) >= len(true) - 2
