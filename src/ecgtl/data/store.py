"""The prepared store: every patient's ECG as one memory-mapped int16 file plus compact beat arrays.

Layout (``root`` is the store folder)::

    manifest.json                      patients, segments, lengths, label counts, failures
    patients/<source>/<patient>/       e.g. patients/icentia11k/p00000/
        signal.int16                   all segments back to back, little-endian int16 (adu)
        annotations.npz                segment_offsets (n_segments+1, samples), beat_sample
                                       (int32, samples from the patient's first sample),
                                       beat_class, rhythm (uint8, Icentia classes)
        meta.json                      fs (Hz), gain (adu/mV), baseline (adu), segment names,
                                       lengths, label counts, source

Why this shape: any frame of any patient is a slice of a memory map (no
decompression, no loading the patient), so data loading keeps up with a GPU;
the signal costs exactly its int16 size on disk, and the beat arrays a few
bytes per beat.

:func:`prepare` builds a store from readers in parallel processes. It is
resumable: a patient is written to a hidden temporary folder and renamed into
place when complete, so after a kill the finished patients are kept and a
half-written one is never visible. A reader that fails (corrupt or truncated
file) is listed in the manifest's ``failures`` with the reason and the run goes on.
One prepare writes a store at a time: it holds an exclusive lock on ``.prepare.lock``
in the store (released by the system however the process ends), and a second one is
refused with a message naming the first one's pid, so the manifest never misses a
patient that another writer put on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ecgtl import __version__
from ecgtl.constants import BEAT_CLASSES, RHYTHM_CLASSES
from ecgtl.data.recording import PatientReader
from ecgtl.errors import DataError, EcgtlError
from ecgtl.fileio import atomic_write, exclusive_lock

STORE_FORMAT = "ecgtl-store"
STORE_VERSION = 1
SIGNAL_FILE, ANNOTATIONS_FILE, META_FILE, MANIFEST_FILE = "signal.int16", "annotations.npz", "meta.json", "manifest.json"
LOCK_FILE = ".prepare.lock"


def patient_folder(root: str | os.PathLike, patient_id: str) -> Path:
    return Path(root) / "patients" / patient_id


# --------------------------------------------------------------------------- writing
def write_patient(root: str | os.PathLike, reader: PatientReader) -> dict:
    """Write one patient into the store atomically; return its metadata.

    Segments are streamed to disk one at a time, so memory stays at one
    segment's size whatever the patient's length.
    """
    start_time = time.perf_counter()
    final = patient_folder(root, reader.patient_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        offsets, names, samples, classes, rhythms = [0], [], [], [], []
        with open(tmp / SIGNAL_FILE, "wb") as fh:
            for seg in reader.segments():
                if seg.signal.dtype != np.int16 or seg.signal.ndim != 1:
                    raise DataError(None, f"{reader.patient_id} {seg.name}: reader returned {seg.signal.dtype} {seg.signal.shape}, expected 1-D int16")
                if len(seg.beats) and (seg.beats.sample[0] < 0 or seg.beats.sample[-1] >= len(seg.signal)):
                    raise DataError(None, f"{reader.patient_id} {seg.name}: beat positions outside the segment")
                fh.write(seg.signal.astype("<i2", copy=False).tobytes())
                samples.append(seg.beats.sample + offsets[-1])
                classes.append(seg.beats.beat_class)
                rhythms.append(seg.beats.rhythm)
                offsets.append(offsets[-1] + len(seg.signal))
                names.append(seg.name)
            fh.flush()
            os.fsync(fh.fileno())
        if not names:
            raise DataError(None, f"{reader.patient_id}: no segments")
        if offsets[-1] >= 2**31:
            raise DataError(None, f"{reader.patient_id}: {offsets[-1]} samples exceed the int32 beat positions of the store")
        beat_sample = np.concatenate(samples).astype(np.int32)
        beat_class = np.concatenate(classes).astype(np.uint8)
        rhythm = np.concatenate(rhythms).astype(np.uint8)
        np.savez_compressed(tmp / ANNOTATIONS_FILE, segment_offsets=np.asarray(offsets, np.int64),
                            beat_sample=beat_sample, beat_class=beat_class, rhythm=rhythm)
        lengths = np.diff(offsets).tolist()
        meta = {
            "patient_id": reader.patient_id,
            "source": reader.source,
            "fs": float(reader.fs),
            "gain": float(reader.gain),
            "baseline": int(reader.baseline),
            "segments": names,
            "segment_lengths": lengths,
            "n_samples": int(offsets[-1]),
            "n_beats": int(len(beat_sample)),
            "beat_counts": dict(zip(BEAT_CLASSES, np.bincount(beat_class, minlength=len(BEAT_CLASSES)).tolist())),
            "rhythm_counts": dict(zip(RHYTHM_CLASSES, np.bincount(rhythm, minlength=len(RHYTHM_CLASSES)).tolist())),
            "prepare_seconds": round(time.perf_counter() - start_time, 3),
            "ecgtl_version": __version__,
        }
        atomic_write(tmp / META_FILE, json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)  # atomic: the patient appears complete or not at all
        except OSError:
            if (final / META_FILE).is_file():  # another process finished it first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _prepare_one(patient_id: str, factory: Callable[[], PatientReader], root: str) -> tuple[str, dict | None, str | None]:
    """Worker: build and write one patient; never raises (the failure is returned)."""
    try:
        reader = factory()
        if reader.patient_id != patient_id:
            raise EcgtlError(f"reader for {patient_id} reports id {reader.patient_id}")
        return patient_id, write_patient(root, reader), None
    except (EcgtlError, OSError, ValueError) as exc:
        return patient_id, None, str(exc)
    except Exception as exc:  # a reader bug must not kill a 11,000-patient run either
        return patient_id, None, f"{type(exc).__name__}: {exc}"


@dataclass
class PrepareReport:
    prepared: list[dict]
    skipped: list[str]
    failures: list[dict]
    seconds: float

    def summary(self) -> str:
        lines = [f"prepared {len(self.prepared)} patient(s), kept {len(self.skipped)} already prepared, "
                 f"{len(self.failures)} failed, in {self.seconds:.1f} s"]
        if self.prepared:
            per = np.mean([m["prepare_seconds"] for m in self.prepared])
            lines.append(f"  {per:.2f} s per patient (mean, per worker)")
        for f in self.failures:
            lines.append(f"  FAILED {f['patient_id']}: {f['error']}")
        return "\n".join(lines)


def prepare(root: str | os.PathLike, jobs: Sequence[tuple[str, Callable[[], PatientReader]]], workers: int = 1,
            progress: bool = True) -> PrepareReport:
    """Prepare every ``(patient_id, reader_factory)`` job into the store at ``root``.

    Already prepared patients are kept (resume); leftovers of a killed run are
    removed; failures are recorded in the manifest and retried on the next run.
    ``reader_factory`` must be picklable when ``workers > 1`` (a process each).
    Raises :class:`DataError` naming the store when it cannot be written or while
    another prepare writes it.
    """
    root = Path(root)
    _writable_store(root)
    with store_lock(root):
        return _prepare_locked(root, jobs, workers, progress)


def _writable_store(root: Path) -> None:
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # exists() is False below a file too: the walk stops at it
    if existing.exists() and not existing.is_dir():
        raise DataError(existing, "is a file, not a folder; give a folder as the store (--out)")
    try:
        (root / "patients").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(exc.filename or root, f"cannot write the store here ({exc.strerror or exc}); "
                                              "give a writable folder as --out") from None


@contextlib.contextmanager
def store_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the store's writer lock, or raise :class:`DataError` if another process holds it."""
    root = Path(root)
    path = root / LOCK_FILE
    with exclusive_lock(path,
                        busy=lambda pid: DataError(root, f"another `ecgtl prepare` is writing to this store (pid {pid}); "
                                                         "wait for it to finish or use another --out"),
                        unusable=lambda e: DataError(path, f"cannot create the store's lock file ({e.strerror}); "
                                                           "give a writable folder as --out")):
        yield


def _prepare_locked(root: Path, jobs: Sequence[tuple[str, Callable[[], PatientReader]]], workers: int,
                    progress: bool) -> PrepareReport:
    for leftover in (root / "patients").glob("*/.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    t0 = time.perf_counter()
    metas = {m["patient_id"]: m for m in _scan_patients(root)}
    done = set(metas)
    todo = [(pid, f) for pid, f in jobs if pid not in done]
    skipped = [pid for pid, _ in jobs if pid in done]
    previous_failures = {f["patient_id"]: f for f in _read_manifest(root).get("failures", [])}
    prepared, failures = [], []
    bar = tqdm(total=len(todo), desc="prepare", unit="patient", disable=not progress)
    last_write = time.monotonic()

    def record(pid, meta, error):
        nonlocal last_write
        previous_failures.pop(pid, None)
        if meta is not None:
            prepared.append(meta)
            metas[pid] = meta
        else:
            failures.append({"patient_id": pid, "error": error})
            bar.write(f"skipped {pid}: {error}")
        bar.update(1)
        if time.monotonic() - last_write > 10:  # the patient folders are the truth; the manifest follows
            write_manifest(root, list(metas.values()), list(previous_failures.values()) + failures)
            last_write = time.monotonic()

    try:
        if workers <= 1 or len(todo) <= 1:
            for pid, factory in todo:
                record(*_prepare_one(pid, factory, os.fspath(root)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_prepare_one, pid, f, os.fspath(root)) for pid, f in todo]
                for fut in as_completed(futures):
                    record(*fut.result())
    finally:
        bar.close()
        # The patient folders are the truth: anything on disk is listed, whoever wrote it.
        metas.update((m["patient_id"], m) for m in _scan_patients(root))
        write_manifest(root, list(metas.values()),
                       [f for f in list(previous_failures.values()) + failures if f["patient_id"] not in metas])
    return PrepareReport(prepared, skipped, failures, time.perf_counter() - t0)


# --------------------------------------------------------------------------- manifest
def _scan_patients(root: Path) -> list[dict]:
    metas = []
    for meta_path in sorted((root / "patients").glob("*/*/" + META_FILE)):
        try:
            metas.append(json.loads(meta_path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # unreadable meta: treated as not prepared, rebuilt next run
    return metas


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def write_manifest(root: str | os.PathLike, metas: Iterable[dict] | None = None, failures: Iterable[dict] = ()) -> dict:
    """Write ``manifest.json`` from patient metadata (default: scanned from the ``meta.json`` files)."""
    root = Path(root)
    metas = sorted(_scan_patients(root) if metas is None else metas, key=lambda m: m["patient_id"])
    beat_total = np.zeros(len(BEAT_CLASSES), np.int64)
    rhythm_total = np.zeros(len(RHYTHM_CLASSES), np.int64)
    for m in metas:
        beat_total += [m["beat_counts"][c] for c in BEAT_CLASSES]
        rhythm_total += [m["rhythm_counts"][c] for c in RHYTHM_CLASSES]
    manifest = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "patients": [{k: m[k] for k in ("patient_id", "source", "fs", "gain", "baseline", "segments", "segment_lengths",
                                         "n_samples", "n_beats", "beat_counts", "rhythm_counts")} for m in metas],
        "failures": list(failures),
        "totals": {
            "patients": len(metas),
            "samples": int(sum(m["n_samples"] for m in metas)),
            "hours": round(sum(m["n_samples"] / m["fs"] for m in metas) / 3600, 3),
            "beat_counts": dict(zip(BEAT_CLASSES, beat_total.tolist())),
            "rhythm_counts": dict(zip(RHYTHM_CLASSES, rhythm_total.tolist())),
        },
    }
    atomic_write(root / MANIFEST_FILE, json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------- reading
#: What a patient needs of its metadata to be read (:class:`StoredPatient` with ``meta=``).
PATIENT_KEYS = ("patient_id", "fs", "gain", "baseline")


class StoredPatient:
    """One prepared patient: a memory-mapped signal and its beat arrays.

    Opening reads the segment offsets only (a few hundred bytes); the signal is mapped
    and each beat array is decompressed on its first use, so a reader that needs no
    beats (future prediction) or only some of them (the beat task never reads
    ``rhythm``) does not pay for the rest. ``beat_sample`` keeps the store's int32
    (positions below 2**31 samples are guaranteed by :func:`write_patient`).

    ``meta``: the patient's metadata when the caller already has it (e.g. its
    manifest entry, with at least :data:`PATIENT_KEYS`); ``meta.json`` is then not
    read and :attr:`meta` is that dict. None reads ``meta.json``.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict | None = None):
        self.folder = Path(folder)
        if meta is None:
            meta_path = self.folder / META_FILE
            if not meta_path.is_file():
                raise DataError(meta_path, "not a prepared patient (meta.json missing)")
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(meta_path, f"unreadable patient metadata ({exc})") from None
        self.meta = meta
        self.patient_id: str = meta["patient_id"]
        self.fs: float = meta["fs"]
        self.gain: float = meta["gain"]
        self.baseline: int = meta["baseline"]
        self.segment_offsets: np.ndarray = self._annotation("segment_offsets")

    def _annotation(self, name: str) -> np.ndarray:
        """One array of ``annotations.npz`` (only that one is decompressed)."""
        path = self.folder / ANNOTATIONS_FILE
        try:
            with np.load(path, allow_pickle=False) as z:
                return z[name]
        except FileNotFoundError:
            raise DataError(path, "not a prepared patient (annotations.npz missing)") from None
        except Exception as exc:  # zipfile, zlib, EOF, missing keys: all mean a corrupt file
            raise DataError(path, f"corrupt annotation arrays ({type(exc).__name__}: {exc})") from None

    @cached_property
    def beat_sample(self) -> np.ndarray:
        """Beat positions (int32, samples from the patient's first sample), sorted."""
        return self._annotation("beat_sample")

    @cached_property
    def beat_class(self) -> np.ndarray:
        """Beat class of each beat (uint8, BEAT_CLASSES indices)."""
        return self._annotation("beat_class")

    @cached_property
    def rhythm(self) -> np.ndarray:
        """Rhythm class of each beat (uint8, RHYTHM_CLASSES indices)."""
        return self._annotation("rhythm")

    @cached_property
    def signal(self) -> np.memmap:
        """All samples (int16 adu), memory-mapped: slicing reads only what is sliced."""
        path = self.folder / SIGNAL_FILE
        n = int(self.segment_offsets[-1])
        if path.stat().st_size != 2 * n:
            raise DataError(path, f"{path.stat().st_size} bytes, expected {2 * n} (truncated store file)")
        return np.memmap(path, dtype="<i2", mode="r", shape=(n,))

    @property
    def n_segments(self) -> int:
        return len(self.segment_offsets) - 1

    @property
    def segment_lengths(self) -> np.ndarray:
        return np.diff(self.segment_offsets)

    def frame(self, segment: int, start: int, length: int) -> np.ndarray:
        """``length`` samples from ``start`` (samples into ``segment``), in mV as float32."""
        seg_len = int(self.segment_offsets[segment + 1] - self.segment_offsets[segment])
        if start < 0 or start + length > seg_len:
            raise IndexError(f"frame [{start}, {start + length}) outside segment {segment} of {seg_len} samples")
        g = int(self.segment_offsets[segment]) + start
        x = np.asarray(self.signal[g:g + length], dtype=np.float32)
        return (x - np.float32(self.baseline)) / np.float32(self.gain)

    def beats_between(self, global_start: int, global_end: int) -> slice:
        """Index range of the beats with ``global_start <= sample < global_end`` (positions from the patient's start)."""
        lo = np.searchsorted(self.beat_sample, global_start, "left")
        hi = np.searchsorted(self.beat_sample, global_end, "left")
        return slice(int(lo), int(hi))


def _lean_entries(keys: Iterable[str]) -> Callable[[dict], dict]:
    """A ``json`` object hook that keeps only ``keys`` (and ``patient_id``) of the patient entries."""
    keep = ("patient_id", *(k for k in keys if k != "patient_id"))

    def hook(obj: dict) -> dict:
        if "patient_id" not in obj or "segment_lengths" not in obj:  # not a patient entry (a failure, counts, totals)
            return obj
        entry = {k: obj[k] for k in keep if k in obj}
        if "segment_lengths" in entry:
            entry["segment_lengths"] = np.asarray(entry["segment_lengths"], np.int64)
        return entry

    return hook


class Store:
    """A prepared store (see the module docstring).

    ``keys``: keep only these keys of each patient entry of the manifest (``patient_id``
    always), dropping the others while the manifest is parsed, and hold
    ``segment_lengths`` as int64 arrays: a lean read for large stores, whose memory and
    time do not grow with what the caller does not use (the full entries of 11,000
    Icentia11k patients, with their segment names and label counts, are ~75 MB of Python
    objects; the sampler's keys about 6 MB). None keeps the full entries.
    """

    def __init__(self, root: str | os.PathLike, keys: Iterable[str] | None = None):
        self.root = Path(root)
        path = self.root / MANIFEST_FILE
        if not path.is_file():
            raise DataError(path, "no store manifest here; run `ecgtl prepare` first")
        try:
            self.manifest = json.loads(path.read_text(), object_hook=None if keys is None else _lean_entries(keys))
        except json.JSONDecodeError as exc:
            raise DataError(path, f"unreadable manifest ({exc}); rerun `ecgtl prepare` to rebuild it") from None
        if self.manifest.get("format") != STORE_FORMAT:
            raise DataError(path, "not an ecgtl store manifest")
        self.patients: list[dict] = self.manifest["patients"]
        self.patient_ids: list[str] = [p["patient_id"] for p in self.patients]

    def __len__(self) -> int:
        return len(self.patients)

    def open(self, patient_id: str) -> StoredPatient:
        return StoredPatient(patient_folder(self.root, patient_id))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.root / "patients").rglob("*") if f.is_file())
