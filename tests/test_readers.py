"""Readers on the real data of ../shared/data: CinC 2017, Icentia11k (both releases), MIT-BIH, SVDB, AFTDB."""

from __future__ import annotations

import collections
import shutil

import numpy as np
import pytest
import wfdb

from ecgtl.constants import (
    BEAT_NORMAL,
    BEAT_PAC,
    BEAT_PVC,
    BEAT_UNDEFINED,
    ICENTIA_SEGMENT_SAMPLES,
    RHYTHM_AF,
    RHYTHM_AFL,
    RHYTHM_NOISE,
    RHYTHM_NSR,
    RHYTHM_UNDEFINED,
)
from ecgtl.data.annotations import ICENTIA11K, MITDB, BeatAnnotations
from ecgtl.data.cinc2017 import Cinc2017, read_labels
from ecgtl.data.icentia11k import IcentiaWfdbPatient, read_torrent_labels, read_wfdb_segment
from ecgtl.data.wfdb_database import WfdbDatabaseRecord
from ecgtl.data.wfdb_io import RawAnnotations


# ----------------------------------------------------------------------------- CinC 2017
def test_cinc_reads_all_records_with_v3_labels(cinc_folder):
    data = Cinc2017(cinc_folder)
    assert len(data) == 7248
    assert data.label_file.name == "REFERENCE-v3.csv"
    counts = collections.Counter(data.labels.values())
    assert counts == {"N": 4292, "A": 627, "O": 2088, "~": 241}
    records, failures = data.read_all(progress=False)  # reading rate: benchmarks/bench_data.py ("cinc_read")
    assert not failures and len(records) == 7248
    durations = np.array([r.duration_s for r in records])
    assert 8.9 <= durations.min() and durations.max() <= 61.0
    assert all(r.fs == 300 and r.signal.dtype == np.float32 for r in records[:50])


def test_cinc_signal_is_in_millivolts(cinc_folder):
    rec = Cinc2017(cinc_folder).read("A00001")
    ref = wfdb.rdrecord(str(cinc_folder / "A00001"))
    assert rec.label == "N" and rec.signal.shape == (9000,)
    np.testing.assert_allclose(rec.signal, ref.p_signal[:, 0], atol=1e-6)
    assert rec.signal[0] == pytest.approx(-0.127)


def test_cinc_original_labels_and_header_line(cinc_folder, tmp_path):
    original = Cinc2017(cinc_folder, labels="original")
    assert original.label_file.name == "REFERENCE.csv"
    v3 = Cinc2017(cinc_folder)
    changed = sum(original.labels[n] != v3.labels[n] for n in v3.names)
    assert 0 < changed < 0.2 * len(v3)  # the relabelling touched some records, not most
    with_header = tmp_path / "labels.csv"
    with_header.write_text("record,label\n" + (cinc_folder / "REFERENCE.csv").read_text())
    assert read_labels(with_header) == original.labels


def test_cinc_folder_without_records_file(cinc_folder, tmp_path):
    for name in ("A00001", "A00002"):
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (name + ext), tmp_path / (name + ext))
    (tmp_path / "REFERENCE.csv").write_text("A00001,N\nA00002,N\n")
    data = Cinc2017(tmp_path)
    assert data.names == ["A00001", "A00002"] and len(data.read_all(progress=False)[0]) == 2


# ----------------------------------------------------------------------------- Icentia11k WFDB
def test_icentia_wfdb_patient0(icentia_root):
    patient = IcentiaWfdbPatient(icentia_root, 0)
    assert patient.segment_numbers == list(range(50))
    segments = list(patient.segments())  # reading time: benchmarks/bench_data.py ("icentia_read")
    assert all(len(s.signal) == ICENTIA_SEGMENT_SAMPLES and s.signal.dtype == np.int16 for s in segments)
    beats = sum(len(s.beats) for s in segments)
    assert beats == 282_712
    rhythm = np.bincount(np.concatenate([s.beats.rhythm for s in segments]), minlength=6)
    assert rhythm[RHYTHM_NSR] > 0.9 * beats and rhythm[RHYTHM_AF] == 0  # patient 0: sinus rhythm only
    # the signal in mV has the standard deviation the protocol quotes (~0.19 mV)
    mv = segments[0].signal / patient.gain
    assert 0.1 < mv.std() < 0.3


def test_icentia_beat_symbols_map_to_classes(icentia_root):
    signal, header, beats = read_wfdb_segment(icentia_root, 0, 0)
    ann = wfdb.rdann(str(icentia_root / "p00" / "p00000" / "p00000_s00"), "atr")
    symbols = [s for s in ann.symbol if s != "+"]
    assert len(beats) == len(symbols)
    expected = np.array([{"Q": 0, "N": 1, "S": 2, "a": 3, "V": 4}[s] for s in symbols])
    np.testing.assert_array_equal(beats.beat_class, expected)


def test_torrent_labels_equal_wfdb_annotations(shared_data, icentia_root):
    """Patient 0's real torrent label file decodes to the same beats, classes and rhythms as its .atr files."""
    torrent = read_torrent_labels(shared_data / "icentia11k-torrent" / "00000_batched_lbls.pkl.gz")
    assert len(torrent) == 50
    for s, from_torrent in enumerate(torrent):
        _, _, from_wfdb = read_wfdb_segment(icentia_root, 0, s)
        np.testing.assert_array_equal(from_torrent.sample, from_wfdb.sample, err_msg=f"segment {s}")
        np.testing.assert_array_equal(from_torrent.beat_class, from_wfdb.beat_class, err_msg=f"segment {s}")
        np.testing.assert_array_equal(from_torrent.rhythm, from_wfdb.rhythm, err_msg=f"segment {s}")


# ----------------------------------------------------------------------------- rhythm rules, hand-built
def _raw(items, fs=250.0):
    sample, symbol, aux = zip(*items)
    return RawAnnotations(np.array(sample, np.int64), np.array(symbol, object), np.array(aux, object), fs)


def test_icentia_interval_rule_is_inclusive_and_handles_point_intervals():
    ann = _raw([(10, "N", ""), (10, "+", "(N)"), (20, "N", ""), (30, "+", "(AFIB"), (30, "N", ""),
                (40, "S", ""), (50, "N", ""), (50, "+", ")"), (60, "V", ""), (70, "+", "(AFL"), (80, "Q", "")])
    beats = ICENTIA11K.decode(ann)
    np.testing.assert_array_equal(beats.sample, [10, 20, 30, 40, 50, 60, 80])
    np.testing.assert_array_equal(beats.beat_class, [1, 1, 1, 2, 1, 4, 0])
    # (N) at 10 covers the beat at 10 only; [30, 50] inclusive is AF; 60 outside -> noise; unclosed (AFL -> AFL
    np.testing.assert_array_equal(beats.rhythm, [RHYTHM_NSR, RHYTHM_NOISE, RHYTHM_AF, RHYTHM_AF, RHYTHM_AF, RHYTHM_NOISE, RHYTHM_AFL])


def test_mitdb_change_rule():
    ann = _raw([(5, "N", ""), (8, "+", "(N"), (8, "A", ""), (20, "V", ""), (30, "+", "(AFIB"), (31, "N", ""),
                (40, "+", "(VT"), (41, "V", ""), (50, "~", ""), (60, "F", ""), (70, "+", "(AFL"), (70, "a", "")], fs=360)
    beats = MITDB.decode(ann)
    np.testing.assert_array_equal(beats.sample, [5, 8, 20, 31, 41, 60, 70])  # '~' and '+' are not beats
    np.testing.assert_array_equal(beats.beat_class, [BEAT_NORMAL, BEAT_PAC, BEAT_PVC, BEAT_NORMAL, BEAT_PVC, BEAT_UNDEFINED, 3])
    np.testing.assert_array_equal(beats.rhythm, [RHYTHM_NOISE, RHYTHM_NSR, RHYTHM_NSR, RHYTHM_AF, RHYTHM_UNDEFINED,
                                                 RHYTHM_UNDEFINED, RHYTHM_AFL])


def test_rescale_drops_beats_past_the_end():
    b = BeatAnnotations(np.array([0, 360, 719]), np.ones(3, np.uint8), np.full(3, 3, np.uint8))
    r = b.rescaled(250 / 360, length=500)
    np.testing.assert_array_equal(r.sample, [0, 250, 499])


# ----------------------------------------------------------------------------- annotated WFDB databases
def test_mitdb_record_resampled_to_250hz(mirror):
    rec = WfdbDatabaseRecord(mirror / "mitdb" / "1.0.0", "100", "mitdb")
    (segment,) = rec.segments()
    assert rec.fs == 250 and rec.gain == 200
    assert len(segment.signal) == round(650000 * 250 / 360)
    ann = wfdb.rdann(str(mirror / "mitdb" / "1.0.0" / "100"), "atr")
    counts = collections.Counter(ann.symbol)
    assert len(segment.beats) == counts["N"] + counts["A"] + counts["V"]  # record 100 has only these beat types
    bc = segment.beats.beat_counts()
    assert (bc[BEAT_NORMAL], bc[BEAT_PAC], bc[BEAT_PVC]) == (counts["N"], counts["A"], counts["V"])
    # positions scale with the rate: the R peak stays on the R peak
    raw = wfdb.rdrecord(str(mirror / "mitdb" / "1.0.0" / "100"), channels=[0]).p_signal[:, 0]
    beat360 = ann.sample[[i for i, s in enumerate(ann.symbol) if s == "N"][10]]
    beat250 = segment.beats.sample[np.argmin(np.abs(segment.beats.sample - beat360 * 250 / 360))]
    assert abs(raw[beat360] - (segment.signal[beat250] - rec.baseline) / rec.gain) < 0.15


def test_mitdb_af_record_has_af_rhythm(mirror):
    (segment,) = WfdbDatabaseRecord(mirror / "mitdb" / "1.0.0", "201", "mitdb").segments()
    rc = segment.beats.rhythm_counts()
    assert rc[RHYTHM_AF] > 100 and rc[RHYTHM_NSR] > 100


def test_svdb_128hz_and_aftdb_all_af(mirror):
    (segment,) = WfdbDatabaseRecord(mirror / "svdb" / "1.0.0", "800", "svdb").segments()
    assert len(segment.signal) == round(230400 * 250 / 128)
    assert segment.beats.beat_counts()[BEAT_PAC] + segment.beats.beat_counts()[BEAT_PVC] > 0
    (segment,) = WfdbDatabaseRecord(mirror / "aftdb" / "1.0.0", "learning-set/n01", "aftdb").segments()
    assert len(segment.signal) == round(7680 * 250 / 128)
    assert len(segment.beats) > 50
    assert set(segment.beats.rhythm.tolist()) == {RHYTHM_AF} and set(segment.beats.beat_class.tolist()) == {BEAT_UNDEFINED}
