"""CinC 2017 records as in-domain *unlabelled* pre-training data: a prepared store of given records.

The experiment grid pre-trains on the CinC 2017 training split's own records with
tasks that need no labels: ``heart_rate`` (labels from beat positions alone) and
``future`` (no labels at all). :func:`build_cinc_store` prepares a store
(:mod:`ecgtl.data.store`) of exactly the records it is given, e.g. the ``train``
list of a splits file (:func:`ecgtl.data.splits.load_splits`); the class labels of
the records are never read.

Each record is one patient (``cinc2017/<record>``, source ``cinc2017``) with one
segment ``s00``:

* the signal is read by :func:`ecgtl.data.cinc2017.read_record` (the project's CinC
  reader, with its checks: header, MAT file, length, amplitude in mV), taken back to
  the record's own adu (``mV * gain + baseline``, exact for the int16 CinC files) and
  resampled to 250 Hz, the store's rate, with
  :func:`~ecgtl.data.wfdb_database.resample_int16` (polyphase, 300 -> 250 Hz is 5/6);
  ``gain`` (adu/mV) and ``baseline`` (adu) are the record header's;
* beats come from the QRS detector :func:`ecgtl.signal.qrs.detect_beats` (gqrs),
  with beat class *undefined* and rhythm *undefined*: the records carry no beat or
  rhythm annotation. Pre-training leaves such sources out of the beat and rhythm
  tasks (``DETECTED_BEAT_SOURCES`` in :mod:`ecgtl.train.pretrain`).

Detection rate. The detector runs on the *stored* 250 Hz signal (in mV, after the
int16 quantisation), not on the 300 Hz original with positions rescaled. Both were
measured: on 8 MIT-BIH records taken to 300 Hz (a CinC-like input; 100, 105, 108,
203, 207, 208, 210, 222) sensitivity / PPV against the reference beats (150 ms) were
equal to within 0.005 at either rate (e.g. 203: 0.994/0.987 at 300 Hz, 0.994/0.986 at
250 Hz; 207: 0.994/0.875 vs 0.995/0.880), and on 300 CinC training records the two
agreed on 99.5 % of the beats (within 50 ms) and on 99.4 % of the heart-rate labels of
overlapping 2,048/2,500-sample frames, the differences lying in a few very noisy
records. With accuracy equal, 250 Hz wins on three counts: the positions are samples
of the very signal that is stored (no rescaling, no rounding, beats reproducible from
the store alone), the detector sees exactly what the network sees, and detection is
about 14 % faster (46 vs 53 ms per record). gqrs was validated at 128-360 Hz
(:mod:`ecgtl.signal.qrs`); a store at a lower ``target_fs`` detects at the record's
own rate instead and rescales the positions.

Short records. CinC records last 9-61 s; a pre-training frame of 4,096 samples at
250 Hz is 16.4 s. Records are *not* dropped here, because the frame length is a choice
of each pre-training run (512-4,096 samples, the future task's context windows): the
:class:`~ecgtl.data.sampling.FrameSampler` leaves patients with no segment as long as
a frame out at construction (its ``unusable`` list), ``fixed_frames`` skips them with
a warning and ``estimate_normalization`` ignores them. :func:`short_patients` lists
them for a given frame length.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgtl.constants import BEAT_UNDEFINED, ICENTIA_FS_HZ, RHYTHM_UNDEFINED
from ecgtl.data.annotations import BeatAnnotations
from ecgtl.data.cinc2017 import read_record
from ecgtl.data.recording import Segment
from ecgtl.data.store import META_FILE, PrepareReport, Store, prepare
from ecgtl.data.wfdb_database import resample_int16
from ecgtl.data.wfdb_io import read_header, unit_to_mv
from ecgtl.errors import ConfigError, DataError
from ecgtl.signal.qrs import detect_beats

log = logging.getLogger(__name__)

SOURCE = "cinc2017"
#: Frame length (samples at 250 Hz, 16.4 s) for which :func:`build_cinc_store` reports the records too short.
FRAME_SAMPLES = 4096
#: Lowest rate at which gqrs was validated (:mod:`ecgtl.signal.qrs`); below it beats are detected at the record's rate.
MIN_DETECTION_FS_HZ = 128.0

__all__ = ["SOURCE", "CincPrepareReport", "CincStoreRecord", "build_cinc_store", "cinc_jobs", "cinc_patient_id", "short_patients"]


def cinc_patient_id(record: str) -> str:
    """The store's patient id of a CinC record: ``cinc2017/<record>`` (a ``/`` in the name becomes ``-``)."""
    return f"{SOURCE}/{record.replace('/', '-')}"


class CincStoreRecord:
    """One CinC 2017 record as a one-segment, unannotated patient at ``target_fs`` Hz (see the module docstring).

    Opening reads the header only (gain, baseline; a missing or broken header raises
    :class:`DataError` here, which :func:`~ecgtl.data.store.prepare` reports and skips);
    :meth:`segments` reads the signal and detects the beats.
    """

    source = SOURCE

    def __init__(self, folder: str | os.PathLike, record: str, target_fs: float = ICENTIA_FS_HZ, channel: int = 0):
        self.folder, self.record, self.channel = Path(folder), record, int(channel)
        self.patient_id = cinc_patient_id(record)
        self.fs = float(target_fs)
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"target_fs must be a positive rate in Hz, got {target_fs!r}")
        path = os.fspath(self.folder / record)
        header = read_header(path)
        if not 0 <= self.channel < header.n_sig:
            raise DataError(path + ".hea", f"lead {self.channel} requested, the record has {header.n_sig}")
        unit = header.units[self.channel] if self.channel < len(header.units) else None
        scale = unit_to_mv(unit, path + ".hea", header.sig_name[self.channel] if self.channel < len(header.sig_name) else "")
        #: adu per mV (the header's gain per its unit, converted to mV: 1000 for CinC 2017)
        self.gain = float(header.adc_gain[self.channel]) / scale
        self.baseline = int(header.baseline[self.channel])

    def segments(self) -> Iterator[Segment]:
        rec = read_record(self.folder, self.record, channel=self.channel)  # mV, checked
        adu = np.clip(np.rint(rec.signal.astype(np.float64) * self.gain + self.baseline), -32768, 32767).astype(np.int16)
        signal = resample_int16(adu, rec.fs, self.fs, self.baseline)
        if self.fs >= MIN_DETECTION_FS_HZ:
            # on the stored samples themselves (why: module docstring)
            beats = detect_beats((signal.astype(np.float64) - self.baseline) / self.gain, self.fs)
        else:
            beats = np.rint(detect_beats(rec.signal, rec.fs) * (self.fs / rec.fs)).astype(np.int64)
            beats = np.unique(beats[(beats >= 0) & (beats < len(signal))])
        n = len(beats)
        yield Segment("s00", signal, BeatAnnotations(beats.astype(np.int64), np.full(n, BEAT_UNDEFINED, np.uint8),
                                                     np.full(n, RHYTHM_UNDEFINED, np.uint8)))


class _CincRecordFactory:
    """Picklable deferred constructor of a :class:`CincStoreRecord` (sent to worker processes)."""

    def __init__(self, folder: str, record: str, target_fs: float):
        self.folder, self.record, self.target_fs = folder, record, target_fs

    def __call__(self) -> CincStoreRecord:
        return CincStoreRecord(self.folder, self.record, self.target_fs)

    def __repr__(self) -> str:
        return f"CincStoreRecord({self.folder!r}, {self.record!r}, {self.target_fs})"


def cinc_jobs(data_dir: str | os.PathLike, records: Sequence[str],
              target_fs: float = ICENTIA_FS_HZ) -> list[tuple[str, _CincRecordFactory]]:
    """``(patient_id, factory)`` jobs for :func:`~ecgtl.data.store.prepare`, one per record, in the given order.

    Nothing is read here: a missing or broken record fails in its job and is reported.
    Raises :class:`ConfigError` for a string instead of a list or a record given twice.
    """
    if isinstance(records, (str, bytes)):
        raise ConfigError("records must be a list of CinC record names, not one string")
    names = [str(r).strip() for r in records]
    if any(not n for n in names):
        raise ConfigError("records: an empty record name")
    ids = [cinc_patient_id(n) for n in names]
    if len(set(ids)) != len(ids):
        dup = sorted({n for n, i in zip(names, ids) if ids.count(i) > 1})
        raise ConfigError(f"records: {len(dup)} record(s) given twice, e.g. {dup[:3]}")
    folder = os.fspath(data_dir)
    return [(pid, _CincRecordFactory(folder, name, float(target_fs))) for pid, name in zip(ids, names)]


def _stored_ids(root: Path) -> list[str]:
    """Patient ids already on disk in the store at ``root`` (complete patients: those with a meta.json)."""
    return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in (root / "patients").glob(f"*/*/{META_FILE}"))


@dataclass
class CincPrepareReport(PrepareReport):
    """:class:`~ecgtl.data.store.PrepareReport` plus the stored records too short for a frame.

    ``too_short``: the store's patients (all of them, also those kept from an earlier
    run) with fewer than ``frame_samples`` samples; a sampler of that frame length
    leaves them out.
    """

    frame_samples: int = FRAME_SAMPLES
    too_short: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (super().summary() + f"\n  {len(self.too_short)} stored record(s) shorter than a frame of "
                f"{self.frame_samples} samples (left out by a sampler of that frame length)")


def build_cinc_store(data_dir: str | os.PathLike, records: Sequence[str], out: str | os.PathLike, workers: int = 2,
                     progress: bool = True, target_fs: float = ICENTIA_FS_HZ,
                     frame_samples: int = FRAME_SAMPLES) -> CincPrepareReport:
    """Prepare the store ``out`` of exactly the CinC 2017 ``records`` of ``data_dir`` (no labels read).

    ``data_dir``: a folder of ``<record>.hea`` + ``<record>.mat`` (e.g. ``training2017/``);
    ``records``: the record names, e.g. ``load_splits(path)["train"]`` -- only the training
    split's records belong here, pre-training on test records would leak them into the
    comparison. Resumable as :func:`~ecgtl.data.store.prepare` (patients already in
    ``out`` are kept); a store that holds any *other* patient is refused with a
    :class:`ConfigError` (it would not be a store of these records: e.g. one built
    from all records). Unreadable or bad records are skipped and listed in the
    report's ``failures`` (and the manifest's). Records shorter than ``frame_samples``
    stay in the store and are listed in the report's ``too_short``.
    """
    jobs = cinc_jobs(data_dir, records, target_fs)
    if not jobs:
        raise ConfigError("no CinC records given")
    if not Path(data_dir).is_dir():
        raise DataError(data_dir, "CinC folder not found")
    root = Path(out)
    if (root / "patients").is_dir():
        extra = sorted(set(_stored_ids(root)) - {pid for pid, _ in jobs})
        if extra:
            raise ConfigError(f"{root}: the store holds {len(extra)} patient(s) that are not among the {len(jobs)} "
                              f"records given, e.g. {extra[:3]}; use another (empty) folder as the store")
    report = prepare(root, jobs, workers=workers, progress=progress)
    out_report = CincPrepareReport(report.prepared, report.skipped, report.failures, report.seconds,
                                   frame_samples=int(frame_samples), too_short=short_patients(root, frame_samples))
    log.info("%s", out_report.summary())
    return out_report


def short_patients(root: str | os.PathLike, frame_samples: int = FRAME_SAMPLES) -> list[str]:
    """Patients of the store at ``root`` with no segment of ``frame_samples`` samples (sorted ids).

    These are the patients a :class:`~ecgtl.data.sampling.FrameSampler` of that frame
    length leaves out (its ``unusable`` list); read from the manifest only.
    """
    patients = Store(root, keys=("segment_lengths",)).patients
    return sorted(p["patient_id"] for p in patients if max(p["segment_lengths"], default=0) < int(frame_samples))
