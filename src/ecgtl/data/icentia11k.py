"""Readers of Icentia11k: the PhysioNet WFDB release and the original torrent release.

* **WFDB release** (``icentia11k-continuous-ecg/1.0``): patient ``N`` lives in
  ``p{N//1000:02d}/p{N:05d}/`` as 50 segments ``p{N:05d}_s{SS:02d}`` (format 16,
  250 Hz, 1,048,577 samples, gain in adu/mV in the header) with ``.atr`` beat
  and rhythm annotations.
* **Torrent release**: ``{N:05d}_batched.pkl.gz`` holds the signal, an array of
  shape (50, 1048577); ``{N:05d}_batched_lbls.pkl.gz`` a list of 50 dicts with
  ``btype``/``rtype`` arrays. Both are pickles: read with the restricted
  unpickler of :mod:`ecgtl.data.safe_pickle`, never ``pickle.load``.

Both yield :class:`~ecgtl.data.recording.Segment` objects with identical
signal and beat arrays for the same patient (tested on patient 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ecgtl.constants import ICENTIA_FS_HZ, ICENTIA_SEGMENTS_PER_PATIENT
from ecgtl.data.annotations import ICENTIA11K, BeatAnnotations, torrent_labels_to_beats
from ecgtl.data.recording import Segment
from ecgtl.data.safe_pickle import safe_load_pickle
from ecgtl.data.wfdb_io import Header, read_annotations, read_digital, read_header
from ecgtl.errors import DataError


def patient_id(patient: int) -> str:
    return f"p{patient:05d}"


def patient_dir(root: str | os.PathLike, patient: int) -> Path:
    """Folder of a patient in the WFDB release (``root`` is the ``icentia11k-continuous-ecg/1.0`` folder)."""
    return Path(root) / f"p{patient // 1000:02d}" / patient_id(patient)


def find_wfdb_patients(root: str | os.PathLike) -> list[int]:
    """Patients present under a WFDB release folder (any with at least one segment header)."""
    found = set()
    for p in Path(root).glob("p[0-9][0-9]/p[0-9][0-9][0-9][0-9][0-9]"):
        if any(p.glob("*.hea")):
            found.add(int(p.name[1:]))
    return sorted(found)


def find_torrent_patients(folder: str | os.PathLike) -> list[int]:
    """Patients with a torrent label file in ``folder``."""
    return sorted(int(p.name[:5]) for p in Path(folder).glob("[0-9][0-9][0-9][0-9][0-9]_batched_lbls.pkl.gz"))


def read_wfdb_segment(root: str | os.PathLike, patient: int, segment: int) -> tuple[np.ndarray, Header, BeatAnnotations]:
    """One segment of the WFDB release: int16 signal (adu), its header, decoded beats."""
    record = os.fspath(patient_dir(root, patient) / f"{patient_id(patient)}_s{segment:02d}")
    header = read_header(record)
    if abs(header.fs - ICENTIA_FS_HZ) > 1e-6:
        raise DataError(record + ".hea", f"sampling frequency {header.fs:g} Hz, Icentia11k is {ICENTIA_FS_HZ} Hz")
    signal, header = read_digital(record, header=header)
    beats = ICENTIA11K.decode(read_annotations(record, "atr"))
    return signal, header, beats


class IcentiaWfdbPatient:
    """One patient of the PhysioNet WFDB release, read segment by segment (never all at once)."""

    source = "icentia11k-wfdb"
    fs = float(ICENTIA_FS_HZ)

    def __init__(self, root: str | os.PathLike, patient: int):
        self.root, self.patient = Path(root), int(patient)
        self.patient_id = f"icentia11k/{patient_id(self.patient)}"
        folder = patient_dir(root, patient)
        if not folder.is_dir():
            raise DataError(folder, "patient folder not found")
        self.segment_numbers = sorted(int(p.stem.rsplit("_s", 1)[1]) for p in folder.glob(f"{patient_id(patient)}_s*.hea"))
        if not self.segment_numbers:
            raise DataError(folder, "no segment headers")
        first = read_header(os.fspath(folder / f"{patient_id(patient)}_s{self.segment_numbers[0]:02d}"))
        self.gain, self.baseline = first.adc_gain[0], first.baseline[0]

    def segments(self) -> Iterator[Segment]:
        for s in self.segment_numbers:
            signal, header, beats = read_wfdb_segment(self.root, self.patient, s)
            if header.adc_gain[0] != self.gain or header.baseline[0] != self.baseline:
                raise DataError(header.record + ".hea", "gain/baseline differ between segments of one patient")
            yield Segment(f"s{s:02d}", signal, beats)


def read_torrent_labels(path: str | os.PathLike) -> list[BeatAnnotations]:
    """Decode a torrent label file (``NNNNN_batched_lbls.pkl.gz``) into one BeatAnnotations per segment."""
    content = safe_load_pickle(path)
    if not isinstance(content, (list, tuple)) or not content:
        raise DataError(path, f"expected a list of per-segment label dicts, got {type(content).__name__}")
    return [torrent_labels_to_beats(entry, os.fspath(path)) for entry in content]


def read_torrent_signal(path: str | os.PathLike) -> np.ndarray:
    """Load a torrent signal file (``NNNNN_batched.pkl.gz``): an array (segments, samples)."""
    sig = safe_load_pickle(path)
    if not isinstance(sig, np.ndarray) or sig.ndim != 2 or not np.issubdtype(sig.dtype, np.number):
        desc = f"array of shape {sig.shape} and dtype {sig.dtype}" if isinstance(sig, np.ndarray) else type(sig).__name__
        raise DataError(path, f"expected a numeric (segments, samples) array, got {desc}")
    return sig


class IcentiaTorrentPatient:
    """One patient of the torrent release.

    The torrent signal has no header. Integer arrays are taken as adu and kept
    as they are; float arrays are multiplied by ``gain`` and rounded to int16.
    ``gain`` (adu per mV of the stored values, 1.0 if unknown) is recorded in
    the store so frames come out in the same units as from the WFDB release.
    """

    source = "icentia11k-torrent"
    fs = float(ICENTIA_FS_HZ)
    baseline = 0

    def __init__(self, folder: str | os.PathLike, patient: int, gain: float = 1.0):
        self.folder, self.patient, self.gain = Path(folder), int(patient), float(gain)
        self.patient_id = f"icentia11k/{patient_id(self.patient)}"
        self.signal_path = self.folder / f"{self.patient:05d}_batched.pkl.gz"
        self.labels_path = self.folder / f"{self.patient:05d}_batched_lbls.pkl.gz"
        for p in (self.signal_path, self.labels_path):
            if not p.is_file():
                raise DataError(p, "torrent file not found")

    def segments(self) -> Iterator[Segment]:
        labels = read_torrent_labels(self.labels_path)
        signal = read_torrent_signal(self.signal_path)
        if signal.shape[0] != len(labels):
            raise DataError(self.signal_path, f"{signal.shape[0]} signal segments but {len(labels)} label segments")
        if signal.shape[0] > ICENTIA_SEGMENTS_PER_PATIENT:
            raise DataError(self.signal_path, f"{signal.shape[0]} segments, Icentia11k has {ICENTIA_SEGMENTS_PER_PATIENT}")
        for s in range(signal.shape[0]):
            row = signal[s]
            if np.issubdtype(row.dtype, np.floating):
                if not np.all(np.isfinite(row)):
                    raise DataError(self.signal_path, f"segment {s} has non-finite samples")
                row = np.rint(row.astype(np.float64) * self.gain)
            if row.min() < -32768 or row.max() > 32767:
                raise DataError(self.signal_path, f"segment {s} does not fit int16 (range {row.min()}..{row.max()}); pass the right gain")
            beats = labels[s]
            if len(beats) and beats.sample[-1] >= row.shape[0]:
                raise DataError(self.labels_path, f"segment {s}: beat at sample {beats.sample[-1]} beyond the signal ({row.shape[0]} samples)")
            yield Segment(f"s{s:02d}", row.astype(np.int16), beats)
