"""The prepared store: every patient's ECG as one memory-mapped int16 file plus memory-mapped beat arrays.

Layout (``root`` is the store folder)::

    manifest.json                      patients, segments, lengths, label counts, failures
    patients/<source>/<patient>/       e.g. patients/icentia11k/p00000/
        signal.int16                   all segments back to back, little-endian int16 (adu)
        annotations.npz                segment_offsets (n_segments+1, samples), beat_sample
                                       (int32, samples from the patient's first sample),
                                       beat_class, rhythm (uint8, Icentia classes)
        segment_offsets.npy            the same four arrays uncompressed (NumPy .npy files),
        beat_sample.npy                read as memory maps: the beat arrays of the frames
        beat_class.npy                 drawn are read without decompressing (or reading)
        rhythm.npy                     the whole patient
        meta.json                      fs (Hz), gain (adu/mV), baseline (adu), segment names,
                                       lengths, label counts, source

Why this shape: any frame of any patient is a slice of a memory map (no
decompression, no loading the patient), and so are the beats that label it, so
the work of drawing frames from a patient does not grow with the patient's length
and data loading keeps up with a GPU. The signal costs exactly its int16 size on
disk; the uncompressed beat arrays 6 bytes per beat (int32 position, uint8 class,
uint8 rhythm) plus 8 per segment, e.g. 1.7 MB for Icentia11k patient 0 (282,712
beats) next to its 105 MB signal and 0.8 MB of compressed annotations.npz, which
is kept: stores written before the .npy files existed are read from it (each
array decompressed whole on first use, as before), and it is the source of an
upgrade. The positions are checked to be sorted and the classes in range before
any .npy is written, so readers (the frame labels) trust those files.

Upgrading a store written before the .npy files: ``ecgtl prepare --out STORE``
(with or without the raw data's options) writes the missing .npy files of every
prepared patient from its annotations.npz (:func:`write_uncompressed_arrays`;
nothing is re-read from the raw data), under the store's writer lock. Each file
is written to a temporary name and renamed into place, so a killed upgrade leaves
complete files or none, and the next prepare finishes it. Readers never write.

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
import io
import json
import mmap
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
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
#: The beat arrays of a patient and their dtypes; each is also stored uncompressed as ``<name>.npy``.
BEAT_ARRAYS: dict[str, np.dtype] = {"segment_offsets": np.dtype("<i8"), "beat_sample": np.dtype("<i4"),
                                    "beat_class": np.dtype("u1"), "rhythm": np.dtype("u1")}
UNCOMPRESSED_FILES = tuple(f"{name}.npy" for name in BEAT_ARRAYS)


def patient_folder(root: str | os.PathLike, patient_id: str) -> Path:
    return Path(root) / "patients" / patient_id


# --------------------------------------------------------------------------- writing
def check_beat_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Raise :class:`DataError` (no path) unless the arrays are what the readers trust.

    Segment offsets start at 0 and never decrease; beat positions are sorted and lie in
    the recording; classes and rhythms are valid indices; all of the store's dtypes. O(n_beats).
    """
    for name, dtype in BEAT_ARRAYS.items():
        a = arrays[name]
        if a.dtype != dtype or a.ndim != 1:
            raise DataError(None, f"{name}: {a.dtype} {a.shape}, expected a 1-D {dtype} array")
    off, pos = arrays["segment_offsets"], arrays["beat_sample"]
    if len(off) < 2 or off[0] != 0 or np.any(np.diff(off) < 0):
        raise DataError(None, "segment_offsets: not 0 followed by non-decreasing segment ends")
    if len(arrays["beat_class"]) != len(pos) or len(arrays["rhythm"]) != len(pos):
        raise DataError(None, "beat_sample, beat_class and rhythm differ in length")
    if len(pos) and (pos[0] < 0 or pos[-1] >= off[-1] or np.any(pos[1:] < pos[:-1])):
        raise DataError(None, "beat_sample: positions not sorted or outside the recording")
    for name, n in (("beat_class", len(BEAT_CLASSES)), ("rhythm", len(RHYTHM_CLASSES))):
        if len(arrays[name]) and arrays[name].max() >= n:
            raise DataError(None, f"{name}: values outside [0, {n})")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_uncompressed(folder: Path, arrays: dict[str, np.ndarray], names: Iterable[str]) -> None:
    """Write ``<name>.npy`` of ``names`` atomically (temporary file, then rename)."""
    for name in names:
        atomic_write(folder / f"{name}.npy", _npy_bytes(arrays[name]))


def missing_uncompressed_arrays(folder: str | os.PathLike) -> list[str]:
    """Names of the beat arrays of the patient at ``folder`` that have no ``.npy`` file yet."""
    folder = Path(folder)
    return [name for name in BEAT_ARRAYS if not (folder / f"{name}.npy").is_file()]


def write_uncompressed_arrays(folder: str | os.PathLike) -> list[str]:
    """Upgrade one prepared patient: write its missing ``.npy`` beat arrays from ``annotations.npz``.

    Returns the names written (none when the patient is complete). The arrays are checked
    first (:func:`check_beat_arrays`); a patient whose arrays fail the check gets no file and
    :class:`DataError` naming its ``annotations.npz`` is raised. Leftover temporary files
    of a killed upgrade are removed. Hold the store's lock (:func:`store_lock`) or own the folder.
    """
    folder = Path(folder)
    missing = missing_uncompressed_arrays(folder)
    if not missing:
        return []
    for leftover in folder.glob(".*.npy.*.tmp"):
        leftover.unlink(missing_ok=True)
    path = folder / ANNOTATIONS_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in BEAT_ARRAYS}
    except FileNotFoundError:
        raise DataError(path, "not a prepared patient (annotations.npz missing)") from None
    except Exception as exc:  # zipfile, zlib, EOF, missing keys: all mean a corrupt file
        raise DataError(path, f"corrupt annotation arrays ({type(exc).__name__}: {exc})") from None
    try:
        check_beat_arrays(arrays)
    except DataError as exc:
        raise DataError(path, f"not upgraded: {exc.problem}") from None
    _write_uncompressed(folder, arrays, missing)
    return missing


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
        arrays = {"segment_offsets": np.asarray(offsets, np.int64), "beat_sample": beat_sample,
                  "beat_class": beat_class, "rhythm": rhythm}
        try:
            check_beat_arrays(arrays)
        except DataError as exc:
            raise DataError(None, f"{reader.patient_id}: {exc.problem}") from None
        np.savez_compressed(tmp / ANNOTATIONS_FILE, **arrays)
        _write_uncompressed(tmp, arrays, BEAT_ARRAYS)
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
    #: already prepared patients whose missing .npy beat arrays were written (store upgrade)
    upgraded: list[str] = field(default_factory=list)
    #: ``{"patient_id", "error"}`` of prepared patients that could not be upgraded (still read from annotations.npz)
    upgrade_failures: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"prepared {len(self.prepared)} patient(s), kept {len(self.skipped)} already prepared, "
                 f"{len(self.failures)} failed, in {self.seconds:.1f} s"]
        if self.upgraded or self.upgrade_failures:
            lines.append(f"  upgraded {len(self.upgraded)} prepared patient(s) with uncompressed beat arrays (.npy)"
                         + (f", {len(self.upgrade_failures)} could not be" if self.upgrade_failures else ""))
        for f in self.upgrade_failures:
            lines.append(f"  NOT UPGRADED {f['patient_id']}: {f['error']}")
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
    Every prepared patient of the store (in ``jobs`` or not) missing its uncompressed
    beat arrays gets them from its ``annotations.npz`` first (the store upgrade of the
    module docstring; ``jobs`` may be empty for an upgrade alone).
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
    upgraded, upgrade_failures = _upgrade(root, metas, progress)
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
    return PrepareReport(prepared, skipped, failures, time.perf_counter() - t0, upgraded, upgrade_failures)


def _upgrade(root: Path, metas: dict[str, dict], progress: bool) -> tuple[list[str], list[dict]]:
    """Write the missing .npy beat arrays of the prepared patients (a store written before they existed)."""
    todo = [pid for pid in metas if missing_uncompressed_arrays(patient_folder(root, pid))]
    done, failed = [], []
    for pid in tqdm(todo, desc="upgrade", unit="patient", disable=not progress or not todo):
        try:
            write_uncompressed_arrays(patient_folder(root, pid))
            done.append(pid)
        except (DataError, OSError) as exc:  # the patient stays readable from annotations.npz (or as broken as it was)
            failed.append({"patient_id": pid, "error": str(exc)})
    return done, failed


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
# The header numpy writes for a 1-D C-order array (np.lib.format, versions 1.0 to 3.0).
_NPY_1D = re.compile(rb"\{'descr': '([<>|=][a-zA-Z]\d+)', 'fortran_order': False, 'shape': \((\d+),\), \}\s*$")
_NPY_MAGIC = b"\x93NUMPY"


def _read_npy(path: Path, dtype: np.dtype, mapped: bool) -> np.ndarray:
    """A 1-D ``.npy`` array of ``dtype``: a read-only memory map (``mapped``) or read whole.

    What ``np.load(path, mmap_mode="r")`` gives, in a few microseconds instead of ~80 (no
    path resolution, no ``ast`` parse of the header, no ``np.memmap`` object): the
    per-visit cost of the frame sampler. A header of another form goes to ``np.load``.
    Raises ``FileNotFoundError`` when the file is missing and :class:`DataError` when it
    is corrupt, truncated or not a 1-D ``dtype`` array.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096 if not mapped else 256)
        try:
            if head[:6] != _NPY_MAGIC:
                raise ValueError("not a .npy file")
            size_len = 2 if head[6] == 1 else 4
            start = 8 + size_len
            end = start + int.from_bytes(head[8:start], "little")
            match = _NPY_1D.match(head[start:end]) if end <= len(head) else None
            if match is None:  # another layout of the header: numpy's own reader
                a = np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
            else:
                descr, n = np.dtype(match.group(1).decode()), int(match.group(2))
                if descr != dtype:
                    raise ValueError(f"{descr}, expected {dtype}")
                nbytes = end + n * dtype.itemsize
                if mapped:
                    buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    if len(buf) < nbytes:
                        raise ValueError(f"{len(buf)} bytes, expected {nbytes} (truncated)")
                    a = np.frombuffer(buf, dtype, count=n, offset=end)
                else:
                    data = head + fh.read()
                    if len(data) < nbytes:
                        raise ValueError(f"{len(data)} bytes, expected {nbytes} (truncated)")
                    a = np.frombuffer(data, dtype, count=n, offset=end)
        except DataError:
            raise
        except Exception as exc:  # a bad header, a truncated file, an empty file (mmap refuses it)
            raise DataError(path, f"corrupt beat array ({type(exc).__name__}: {exc})") from None
    if a.dtype != dtype or a.ndim != 1:
        raise DataError(path, f"corrupt beat array ({a.dtype} {a.shape}, expected 1-D {dtype})")
    return a


#: What a patient needs of its metadata to be read (:class:`StoredPatient` with ``meta=``).
PATIENT_KEYS = ("patient_id", "fs", "gain", "baseline")


class StoredPatient:
    """One prepared patient: a memory-mapped signal and its beat arrays.

    Opening reads the segment offsets only (a few hundred bytes); the signal is mapped
    and each beat array is opened on its first use, so a reader that needs no
    beats (future prediction) or only some of them (the beat task never reads
    ``rhythm``) does not pay for the rest. A beat array is a read-only memory map of
    its ``.npy`` file, whose pages are read only where it is indexed (opening costs
    the same for any length); in a store written before those files (see the module
    docstring) it is decompressed whole from ``annotations.npz`` instead, and checked
    as the writer checks the .npy files (:func:`check_beat_arrays`), since the label
    rules trust it. ``beat_sample`` keeps the store's int32 (positions below 2**31
    samples are guaranteed by :func:`write_patient`).

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
        """One beat array: its ``.npy`` file (memory-mapped; the small segment offsets read), else from ``annotations.npz``."""
        try:
            return _read_npy(self.folder / f"{name}.npy", BEAT_ARRAYS[name], mapped=name != "segment_offsets")
        except FileNotFoundError:
            return self._compressed(name)

    def _compressed(self, name: str) -> np.ndarray:
        """One array of ``annotations.npz`` (only that one is decompressed), checked as the .npy files are."""
        path = self.folder / ANNOTATIONS_FILE
        try:
            with np.load(path, allow_pickle=False) as z:
                a = z[name]
        except FileNotFoundError:
            raise DataError(path, "not a prepared patient (annotations.npz missing)") from None
        except Exception as exc:  # zipfile, zlib, EOF, missing keys: all mean a corrupt file
            raise DataError(path, f"corrupt annotation arrays ({type(exc).__name__}: {exc})") from None
        dtype = BEAT_ARRAYS[name]
        bad = a.dtype != dtype or a.ndim != 1
        if not bad and name == "beat_sample" and len(a):
            bad = a[0] < 0 or bool(np.any(a[1:] < a[:-1]))
        elif not bad and name in ("beat_class", "rhythm") and len(a):
            bad = a.max() >= len(BEAT_CLASSES if name == "beat_class" else RHYTHM_CLASSES)
        elif not bad and name == "segment_offsets":
            bad = len(a) < 2 or a[0] != 0 or bool(np.any(np.diff(a) < 0))
        if bad:
            raise DataError(path, f"corrupt annotation arrays ({name}: unsorted, out of range or of the wrong type)")
        return a

    @property
    def uncompressed(self) -> bool:
        """Whether all the beat arrays have their ``.npy`` file (False: a store to upgrade; see the module docstring)."""
        return not missing_uncompressed_arrays(self.folder)

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
        self.check_signal()
        return np.memmap(self.folder / SIGNAL_FILE, dtype="<i2", mode="r", shape=(int(self.segment_offsets[-1]),))

    def check_signal(self) -> None:
        """Raise :class:`DataError` unless the signal file holds exactly the samples of the segment offsets."""
        path = self.folder / SIGNAL_FILE
        size, n = path.stat().st_size, int(self.segment_offsets[-1])
        if size != 2 * n:
            raise DataError(path, f"{size} bytes, expected {2 * n} (truncated store file)")

    def read_frames(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Raw int16 frames ``(len(starts), length)`` (adu) from ``starts`` (samples from the patient's first sample).

        The bytes of :attr:`signal` ``[s:s + length]``, read with one ``preadv`` per frame into
        the result: no memory map to set up, fault in and tear down (which, for a
        100 MB patient visited once, costs more than the reads). Where the system has no
        ``preadv``, sliced from :attr:`signal`. A frame past the end raises IndexError; a file
        shorter than its frames (truncated since opening) :class:`DataError`.
        """
        starts = np.asarray(starts, np.int64).ravel()
        length = int(length)
        total = int(self.segment_offsets[-1])
        if len(starts) and (length < 0 or starts.min() < 0 or starts.max() + length > total):
            raise IndexError(f"frames of {length} samples outside the {total} samples of {self.patient_id}")
        if not hasattr(os, "preadv"):  # pragma: no cover - not Linux / BSD
            return np.array([self.signal[s:s + length] for s in starts.tolist()], dtype="<i2").reshape(len(starts), length)
        out = np.empty((len(starts), length), "<i2")
        path = self.folder / SIGNAL_FILE
        nbytes = 2 * length
        fd = os.open(path, os.O_RDONLY)
        try:
            for row, s in zip(out, starts.tolist()):
                if os.preadv(fd, [row], 2 * s) != nbytes:
                    raise DataError(path, f"short read at sample {s} (truncated store file)")
        finally:
            os.close(fd)
        return out

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
        pos = self.beat_sample
        # clipped into int32 (the same indices) so that searchsorted does not convert the whole array to int64
        lo, hi = (np.searchsorted(pos, np.int32(np.clip(v, -2**31, 2**31 - 1)), "left") for v in (global_start, global_end))
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
