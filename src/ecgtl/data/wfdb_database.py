"""Any beat-annotated WFDB database as pre-training data (MIT-BIH Arrhythmia, SVDB, AFTDB, ...).

Each record becomes one "patient" with a single segment, resampled to the
pre-training rate (250 Hz, Icentia11k's) with a polyphase filter
(``scipy.signal.resample_poly``); annotation positions are scaled by the same
ratio. Symbols map to the Icentia classes through a
:class:`~ecgtl.data.annotations.DatabaseProfile` (documented there).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from ecgtl.constants import ICENTIA_FS_HZ
from ecgtl.data.annotations import PROFILES, DatabaseProfile
from ecgtl.data.recording import Segment
from ecgtl.data.wfdb_io import check_signal, read_annotations, read_digital, read_header, record_names
from ecgtl.errors import DataError


def resample_int16(signal: np.ndarray, fs_in: float, fs_out: float, baseline: int = 0) -> np.ndarray:
    """Polyphase resampling of an int16 signal (adu) from ``fs_in`` to ``fs_out`` Hz, back to int16."""
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    if ratio == 1:
        return signal.astype(np.int16, copy=False)
    x = signal.astype(np.float64) - baseline
    y = resample_poly(x, ratio.numerator, ratio.denominator)
    return np.clip(np.rint(y + baseline), -32768, 32767).astype(np.int16)


class WfdbDatabaseRecord:
    """One record of an annotated WFDB database, as a one-segment patient at ``target_fs`` Hz."""

    def __init__(self, folder: str | os.PathLike, record: str, profile: DatabaseProfile | str, target_fs: float = ICENTIA_FS_HZ):
        self.folder, self.record = Path(folder), record
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.source = self.profile.name
        self.patient_id = f"{self.profile.name}/{record.replace('/', '-')}"
        self.fs = float(target_fs)
        self.header = read_header(os.fspath(self.folder / record))
        ch = self.profile.channel
        if ch >= self.header.n_sig:
            raise DataError(self.header.record + ".hea", f"channel {ch} requested, record has {self.header.n_sig}")
        self.gain, self.baseline = self.header.adc_gain[ch], self.header.baseline[ch]

    def segments(self) -> Iterator[Segment]:
        path = os.fspath(self.folder / self.record)
        signal, header = read_digital(path, channel=self.profile.channel, header=self.header)
        check_signal(signal, path + ".dat")
        beats = self.profile.decode(read_annotations(path, self.profile.annotator))
        if header.fs != self.fs:
            signal = resample_int16(signal, header.fs, self.fs, self.baseline)
            beats = beats.rescaled(self.fs / header.fs, length=len(signal))
        yield Segment("s00", signal, beats)


def database_records(folder: str | os.PathLike, profile: DatabaseProfile | str, target_fs: float = ICENTIA_FS_HZ) -> list[tuple[str, object]]:
    """``(patient_id, factory)`` for every record listed in ``folder/RECORDS``.

    The factory opens the record lazily (in a worker process), so a broken
    header is reported for that record instead of failing the listing.
    """
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    out = []
    for rec in record_names(folder):
        pid = f"{profile.name}/{rec.replace('/', '-')}"
        out.append((pid, _RecordFactory(os.fspath(folder), rec, profile.name, target_fs)))
    return out


class _RecordFactory:
    """Picklable deferred constructor (sent to worker processes)."""

    def __init__(self, folder: str, record: str, profile: str, target_fs: float):
        self.folder, self.record, self.profile, self.target_fs = folder, record, profile, target_fs

    def __call__(self) -> WfdbDatabaseRecord:
        return WfdbDatabaseRecord(self.folder, self.record, self.profile, self.target_fs)
