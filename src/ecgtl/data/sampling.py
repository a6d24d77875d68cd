"""Frame sampling for pre-training: patient splits, a sharded streaming dataset, fixed validation frames.

The protocol (``shared/reference/paper-protocol.md``, Pre-training): frames are
drawn per patient, a random segment first (uniform over the segments at least
one frame long), then a random start inside it (no padding, a frame never
crosses a segment boundary); patients are split 95/5 into train/validation.

* :func:`split_patients` -- the patient-level train/validation split. Each patient
  is placed by a hash of ``(seed, patient_id)`` alone, so adding patients to the
  store never moves an existing one between train and validation.
* :func:`select_fraction` -- a seeded, *nested* fraction of the training patients
  (the 1 % subset lies inside the 10 % subset of the same seed), for the
  data-size ablation; an explicit list of patients is accepted too.
* :class:`FrameSampler` -- a torch ``IterableDataset`` over the prepared store
  (:mod:`ecgtl.data.store`). Training runs in rounds (:mod:`ecgtl.train.engine`);
  :meth:`FrameSampler.set_round` selects one and the frames of a round are fully
  determined by ``(seed, round, rank, worker)``.
* :func:`fixed_frames` -- a deterministic validation set (the same frames at
  every call).
* :func:`estimate_normalization` -- input mean/std in mV from random frames (the
  authors' constants belong to the torrent release's units and do not carry over).

Sharding and DDP. For round ``r`` the usable patients are permuted with a seed
of ``(seed, r)``; the first ``world_size * P`` of the permutation, with
``P = n_patients // world_size``, are dealt to the ranks in contiguous blocks
of ``P`` and the last ``n_patients % world_size`` are left out of that round
(another round's permutation leaves out others, so over rounds all are used).
Inside a rank, patient ``i`` of the block goes to DataLoader worker
``i % num_workers``. No patient is ever read by two ranks or two workers in one
round, and every rank yields exactly ``P * frames_per_patient`` frames
(:meth:`FrameSampler.frames_per_rank`, also ``len()``), so DDP ranks stay in
step. A DataLoader batches each worker's frames separately: the exact number of
batches of a round is :meth:`FrameSampler.batches_per_round`, equal on every rank.

Determinism. The frames of a patient in a round come from a generator seeded
with ``(seed, round, hash(patient_id))``: they do not depend on the rank or the
worker that reads the patient. The shuffle buffer (mixing patients) is seeded
with ``(seed, round, rank, worker, num_workers)``. The round is kept in a shared
memory tensor, so :meth:`~FrameSampler.set_round` reaches DataLoader workers
even with ``persistent_workers=True``.

Throughput. A patient is never loaded: the frames of one patient are read with
one ``preadv`` each straight into an int16 array
(:meth:`~ecgtl.data.store.StoredPatient.read_frames`: no memory map of the
signal to set up, fault in and tear down per visit), labelled in one vectorised
call of the task's label rule on the memory-mapped beat arrays (with
``segment_offsets``; only the beats around the frames are read) and kept as
int16 in the shuffle buffer; they are converted to normalised float32 in
blocks. The only per-frame Python work is the read and the ``yield``; nothing
a visit does grows with the patient's length but the binary searches in the
beat positions (log n_beats): a visit of 64 frames of 4,096 samples costs about
0.9 ms on an Icentia11k patient of 52 M samples and 282,712 beats, 0.65 ms on a
30-minute MIT-BIH record (one core; ~70,000 and ~97,000 labelled frames/s).

Scale. Nothing grows with the number of patients but a few bytes per patient:
the manifest is read once, lean (:class:`~ecgtl.data.store.Store` with ``keys``:
only the fields used here, not the segment names and label counts of every
patient), and what opening a patient needs of it (fs, gain, baseline) is kept as
three small arrays, so a visit reads no ``meta.json``; it reads the segment
offsets and maps only the beat arrays the task's labels use (the beat task
never reads ``rhythm``; future prediction no beat array). A store written before
the uncompressed beat arrays (:mod:`ecgtl.data.store`) works, with each array
decompressed whole per visit: upgrade it with ``ecgtl prepare --out STORE``.
Frames/s, peak RSS and start-up at 100 / 1,000 / 11,000 virtual patients:
``benchmarks/bench_data.py --virtual`` (``reports/bench_scale.json``).

Robustness. Patients with no segment as long as a frame are left out at
construction (listed in :attr:`FrameSampler.unusable`). A patient that cannot be
opened during iteration (corrupt or truncated files) is skipped with a warning
and its frames are drawn from the next readable patient of the same worker, so
the frame count per rank does not change.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import IterableDataset, get_worker_info

from ecgtl.data.store import PATIENT_KEYS, SIGNAL_FILE, Store, StoredPatient, patient_folder
from ecgtl.errors import DataError, EcgtlError
from ecgtl.tasks.registry import PRETEXT_TASKS

__all__ = [
    "TASKS",
    "FrameSampler",
    "estimate_normalization",
    "fixed_frames",
    "select_fraction",
    "split_patients",
]

#: Frame label tasks: the names of :data:`ecgtl.tasks.PRETEXT_TASKS` (``future``: y = -1, no labels).
TASKS = tuple(PRETEXT_TASKS)
#: Shuffle buffer memory (int16 frames) when ``shuffle_buffer`` is not given.
DEFAULT_BUFFER_BYTES = 128 * 2**20
#: Frames are read and converted in blocks of about this many bytes of int16 samples.
BLOCK_BYTES = 16 * 2**20

# Domain tags keep the random streams of the different uses apart.
_TAG_ORDER, _TAG_FRAMES, _TAG_SHUFFLE, _TAG_FIXED, _TAG_NORM, _TAG_REFILL = 1, 2, 3, 4, 5, 6
_OPEN_ERRORS = (EcgtlError, OSError, ValueError, KeyError)


# --------------------------------------------------------------------------- hashing helpers
def _hash64(*parts) -> int:
    """A stable 64-bit integer of ``parts`` (sha256; unlike ``hash()`` independent of the process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _unit(*parts) -> float:
    """A stable number in [0, 1) of ``parts``."""
    return _hash64(*parts) / 2.0**64


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def _check_ids(patient_ids: Iterable[str], what: str = "patient_ids") -> list[str]:
    if isinstance(patient_ids, str):
        raise TypeError(f"{what} must be a list of patient ids, not one string")
    ids = [str(p) for p in patient_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise ValueError(f"{what}: {len(dup)} duplicated patient id(s), e.g. {dup[:3]}")
    return ids


# --------------------------------------------------------------------------- splits
def split_patients(patient_ids: Iterable[str], val_fraction: float = 0.05, seed: int = 0) -> tuple[list[str], list[str]]:
    """Patient-level ``(train_ids, val_ids)``, each in the order of ``patient_ids``.

    A patient goes to validation when ``sha256(seed, patient_id)``, read as a number
    in [0, 1), is below ``val_fraction``: the decision depends on nothing else, so
    adding patients never moves an existing one. With 2 patients or more there is
    at least one validation and one training patient: if the hash rule gives no
    validation patient (tiny stores), the one with the smallest hash is taken (the
    only case in which a later addition can move a patient: once some patient falls
    below the threshold the fallback is no longer used).
    """
    ids = _check_ids(patient_ids)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    u = {p: _unit("ecgtl-split", seed, p) for p in ids}
    val = {p for p in ids if u[p] < val_fraction}
    if len(ids) >= 2 and val_fraction > 0:
        if not val:
            val = {min(ids, key=u.__getitem__)}
        if len(val) == len(ids):
            val.discard(max(ids, key=u.__getitem__))
    return [p for p in ids if p not in val], [p for p in ids if p in val]


def select_fraction(train_ids: Iterable[str], fraction: float | Sequence[str], seed: int = 0) -> list[str]:
    """A seeded fraction of ``train_ids`` (at least 1 patient), in the order of ``train_ids``.

    Patients are ranked by ``sha256(seed, patient_id)`` and the first
    ``max(1, round(fraction * n))`` are taken, so for one seed the subsets are
    nested: the 1 % subset lies inside the 10 % subset. ``fraction`` may also be an
    explicit list of patient ids, which must all be in ``train_ids`` (returned in
    the order of ``train_ids``).
    """
    ids = _check_ids(train_ids, "train_ids")
    if not ids:
        raise ValueError("no training patients to select from")
    if isinstance(fraction, numbers.Real) and not isinstance(fraction, bool):
        fraction = float(fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        n = max(1, min(len(ids), int(round(fraction * len(ids)))))
        chosen = set(sorted(ids, key=lambda p: (_hash64("ecgtl-fraction", seed, p), p))[:n])
    else:
        chosen = set(_check_ids(fraction, "fraction (explicit patient list)"))
        if not chosen:
            raise ValueError("the explicit patient list is empty")
        missing = sorted(chosen - set(ids))
        if missing:
            raise ValueError(f"{len(missing)} selected patient(s) are not training patients, e.g. {missing[:3]}")
    return [p for p in ids if p in chosen]


# --------------------------------------------------------------------------- drawing frames of one patient
def _check_normalization(normalization) -> tuple[float, float]:
    if normalization is None:
        return 0.0, 1.0
    mean, std = (float(v) for v in normalization)
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"normalization must be (mean, std) in mV with std > 0, got {normalization!r}")
    return mean, std


def _check_common(frame_samples, frames_per_patient, task) -> tuple[int, int, str]:
    frame_samples, frames_per_patient = int(frame_samples), int(frames_per_patient)
    if frame_samples <= 0:
        raise ValueError(f"frame_samples must be positive, got {frame_samples}")
    if frames_per_patient <= 0:
        raise ValueError(f"frames_per_patient must be positive, got {frames_per_patient}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return frame_samples, frames_per_patient, task


def _usable_segments(segment_lengths, frame_samples: int) -> np.ndarray:
    return np.flatnonzero(np.asarray(segment_lengths, np.int64) >= frame_samples)


def _draw_starts(offsets: np.ndarray, frame_samples: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sorted frame starts (samples from the patient's first sample): uniform segment, then uniform start.

    Raises :class:`DataError` when no segment holds a whole frame.
    """
    lengths = np.diff(offsets)
    usable = _usable_segments(lengths, frame_samples)
    if not len(usable):
        raise DataError(None, f"no segment of at least {frame_samples} samples")
    seg = usable[rng.integers(len(usable), size=n)]
    start = rng.integers(0, lengths[seg] - frame_samples + 1)  # high exclusive: start + L <= segment length
    return np.sort(offsets[seg] + start)


def _labels(patient: StoredPatient, task: str, starts: np.ndarray, frame_samples: int) -> np.ndarray:
    return PRETEXT_TASKS[task].label_frames(patient, starts, frame_samples)


def _gather(patient: StoredPatient, starts: np.ndarray, frame_samples: int) -> np.ndarray:
    """Raw int16 frames (n, L): the frames' bytes of the signal file, nothing else read or mapped."""
    return patient.read_frames(starts, frame_samples)


def _to_float(raw: np.ndarray, baseline, gain, mean: float, std: float) -> np.ndarray:
    """int16 adu -> mV exactly as :meth:`StoredPatient.frame` (float32), then ``(x - mean) / std``."""
    x = raw.astype(np.float32)
    x -= np.asarray(baseline, np.float32).reshape(-1, 1)
    x /= np.asarray(gain, np.float32).reshape(-1, 1)
    if mean != 0.0:
        x -= np.float32(mean)
    if std != 1.0:
        x /= np.float32(std)
    return x


# --------------------------------------------------------------------------- the streaming dataset
class FrameSampler(IterableDataset):
    """Random frames of stored patients for pre-training, sharded over DDP ranks and DataLoader workers.

    Yields ``(x, y)``: ``x`` float32 tensor ``(1, frame_samples)``, normalised
    ``(mV - mean) / std``; ``y`` int64 0-d tensor, the frame's label for ``task``
    (``"beat"``, ``"rhythm"``, ``"heart_rate"``) or -1 (``"future"``, a task without frame labels). With
    ``return_position=True`` also the index of the patient in :attr:`patient_ids`
    and the frame's start (samples from the patient's first sample), both int64.

    Parameters: ``store_root`` a prepared store; ``patient_ids`` the patients to
    draw from (e.g. from :func:`split_patients` / :func:`select_fraction`);
    ``frame_samples`` frame length (samples); ``frames_per_patient`` frames drawn
    from each patient per round; ``seed``; ``normalization`` ``(mean, std)`` in mV
    (None: raw mV); ``shuffle_buffer`` frames kept for mixing patients (0 or 1: no
    mixing; None: ``max(8 * frames_per_patient, 1024)`` capped at 128 MiB of int16
    frames); ``rank`` / ``world_size`` (default: torch.distributed's when it is
    initialised, else 0 / 1); ``sources`` keep only patients of these sources (the
    manifest's ``source`` or the id's prefix, e.g. ``"mitdb"``, ``"icentia11k"``);
    ``cache_patients`` open patients kept per worker (LRU); ``batch_size`` yields whole
    batches ``x (B, 1, frame_samples)``, ``y (B,)`` (read it with ``DataLoader(sampler,
    batch_size=None)``): the same batches, in the same order, as ``DataLoader(sampler,
    batch_size=B, drop_last=True)`` over single frames, without a tensor per frame.
    """

    def __init__(self, store_root: str | os.PathLike, patient_ids: Iterable[str], frame_samples: int,
                 frames_per_patient: int, task: str, seed: int = 0,
                 normalization: tuple[float, float] | None = None, shuffle_buffer: int | None = None,
                 rank: int | None = None, world_size: int | None = None, sources: Iterable[str] | None = None,
                 cache_patients: int = 4, return_position: bool = False, batch_size: int | None = None):
        super().__init__()
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1 or None, got {batch_size!r}")
        #: frames per yielded batch (use ``DataLoader(sampler, batch_size=None)``); None: one frame at a time
        self.batch_size = None if batch_size is None else int(batch_size)
        self.frame_samples, self.frames_per_patient, self.task = _check_common(frame_samples, frames_per_patient, task)
        self.store_root = Path(store_root)
        self.seed = int(seed)
        self.mean, self.std = _check_normalization(normalization)
        self.normalization = (self.mean, self.std)
        self.return_position = bool(return_position)
        self.cache_patients = max(1, int(cache_patients))
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = (torch.distributed.get_rank() if dist else 0) if rank is None else rank
            world_size = (torch.distributed.get_world_size() if dist else 1) if world_size is None else world_size
        self.rank, self.world_size = int(rank), int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")

        # a lean manifest read: only what the sampler uses, so memory and start-up stay flat with the store's size
        entries = {p["patient_id"]: p for p in Store(self.store_root, keys=(*PATIENT_KEYS, "source", "segment_lengths")).patients}
        ids = sorted(_check_ids(patient_ids))  # the given order does not matter
        missing = [p for p in ids if p not in entries]
        if missing:
            raise DataError(self.store_root, f"{len(missing)} patient(s) not in the store, e.g. {missing[:3]}")
        if sources is not None:
            wanted = {sources} if isinstance(sources, str) else set(sources)
            ids = [p for p in ids if entries[p]["source"] in wanted or p.split("/", 1)[0] in wanted]
        #: patients left out because no segment holds a whole frame
        self.unusable: list[str] = [p for p in ids if not len(_usable_segments(entries[p]["segment_lengths"], self.frame_samples))]
        bad = set(self.unusable)
        #: the usable patients, sorted; ``return_position`` indexes into this list
        self.patient_ids: list[str] = [p for p in ids if p not in bad]
        rates = sorted({float(entries[p]["fs"]) for p in self.patient_ids})
        if len(rates) > 1:
            warnings.warn(f"frame sampler: patients at several sampling rates {rates} Hz: a frame of {self.frame_samples} "
                          "samples then spans different durations", RuntimeWarning, stacklevel=2)
        #: sampling rate of the patients (Hz; the first of several)
        self.fs: float | None = rates[0] if rates else None
        self.patients_per_rank = len(self.patient_ids) // self.world_size
        if self.patients_per_rank == 0:
            raise ValueError(f"{len(self.patient_ids)} usable patient(s) (frames of {self.frame_samples} samples, "
                             f"{len(self.unusable)} unusable) for {self.world_size} rank(s): need at least one per rank")
        self._keys = np.array([_hash64("ecgtl-patient", p) for p in self.patient_ids], dtype=np.uint64)
        # what opening a patient needs (its manifest entry, so that no meta.json is read per visit); one small
        # array per key rather than the entries: a few bytes per patient, pickled cheaply to DataLoader workers
        self._meta = {k: np.array([entries[p][k] for p in self.patient_ids]) for k in PATIENT_KEYS if k != "patient_id"}
        del entries

        if shuffle_buffer is None:
            cap = max(1, DEFAULT_BUFFER_BYTES // (2 * self.frame_samples))
            shuffle_buffer = min(max(8 * self.frames_per_patient, 1024), cap)
        self.shuffle_buffer = max(0, int(shuffle_buffer))
        #: frames gathered / converted at once (bounds the memory of one step to about BLOCK_BYTES of int16)
        self.block_frames = max(1, BLOCK_BYTES // (2 * self.frame_samples))
        # the round lives in shared memory so that set_round reaches (persistent) DataLoader workers
        self._round = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._cache: OrderedDict[str, StoredPatient] = OrderedDict()
        #: patients that could not be read during iteration in this process: (patient_id, error)
        self.failures: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ rounds and shards
    def set_round(self, round_index: int) -> None:
        """Select the round whose frames the next iteration yields."""
        self._round.fill_(int(round_index))

    @property
    def round(self) -> int:
        return int(self._round.item())

    def _order(self, round_index: int) -> np.ndarray:
        return _rng(self.seed, round_index, _TAG_ORDER).permutation(len(self.patient_ids))

    def _rank_indices(self, rank: int, world_size: int, round_index: int) -> np.ndarray:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        per = len(self.patient_ids) // world_size
        return self._order(round_index)[rank * per:(rank + 1) * per]

    def patients_of_rank(self, rank: int | None = None, world_size: int | None = None, round: int | None = None) -> list[str]:
        """The patients a rank reads in a round, in reading order (default: this rank, the current round)."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        round = self.round if round is None else round
        return [self.patient_ids[i] for i in self._rank_indices(rank, world_size, round)]

    def patients_of_worker(self, worker: int, num_workers: int, round: int | None = None) -> list[str]:
        """The patients DataLoader worker ``worker`` of this rank reads in a round."""
        return self.patients_of_rank(round=round)[worker::max(1, num_workers)]

    def frames_per_rank(self) -> int:
        """Frames every rank yields per round: ``patients_per_rank * frames_per_patient``."""
        return self.patients_per_rank * self.frames_per_patient

    def __len__(self) -> int:
        return self.frames_per_rank()

    def frames_per_worker(self, num_workers: int) -> list[int]:
        """Frames each DataLoader worker yields per round (the same on every rank)."""
        w = max(1, int(num_workers))
        return [len(range(i, self.patients_per_rank, w)) * self.frames_per_patient for i in range(w)]

    def batches_per_round(self, batch_size: int, num_workers: int = 0, drop_last: bool = True) -> int:
        """Exact batches per round of ``DataLoader(self, batch_size, num_workers=..., drop_last=...)``.

        The DataLoader batches each worker's frames separately, so with several
        workers this can be less than ``len(self) // batch_size``. Equal on every rank.
        """
        per = self.frames_per_worker(num_workers)
        return sum(n // batch_size if drop_last else -(-n // batch_size) for n in per)

    # ------------------------------------------------------------------ reading
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # never pickle open memory maps (they would be copied whole)
        return state

    def _open(self, index: int) -> StoredPatient:
        patient_id = self.patient_ids[index]
        patient = self._cache.get(patient_id)
        if patient is not None:
            self._cache.move_to_end(patient_id)
            return patient
        meta = {"patient_id": patient_id, **{k: v[index].item() for k, v in self._meta.items()}}
        patient = StoredPatient(patient_folder(self.store_root, patient_id), meta=meta)
        patient.check_signal()  # a truncated file fails here, not in the middle of a draw
        self._cache[patient_id] = patient
        while len(self._cache) > self.cache_patients:
            self._cache.popitem(last=False)
        return patient

    def _draw(self, index: int, n: int, rng: np.random.Generator) -> tuple[StoredPatient, np.ndarray, np.ndarray]:
        """Open patient ``index`` and draw n frames: (patient, sorted starts, labels), all frames in one vectorised call."""
        patient = self._open(index)
        starts = _draw_starts(patient.segment_offsets, self.frame_samples, n, rng)
        labels = _labels(patient, self.task, starts, self.frame_samples)
        return patient, starts, labels

    def _chunks(self, indices: Sequence[int], round_index: int) -> Iterator[tuple]:
        """Blocks of frames (raw, labels, starts, patient index, baseline, gain), patient after patient.

        The frames of an unreadable patient are drawn from the next readable one of this worker.
        """
        pending, last_good = 0, None
        for index in indices:
            n = self.frames_per_patient + pending
            rng = _rng(self.seed, round_index, int(self._keys[index]), _TAG_FRAMES)
            try:
                patient, starts, labels = self._draw(index, n, rng)
            except _OPEN_ERRORS as exc:
                self._cache.pop(self.patient_ids[index], None)
                self.failures.append((self.patient_ids[index], str(exc)))
                warnings.warn(f"frame sampler: skipping patient {self.patient_ids[index]} ({exc}); "
                              "its frames are drawn from the next readable patient", RuntimeWarning, stacklevel=2)
                pending = n
                continue
            pending, last_good = 0, index
            yield from self._blocks(patient, starts, labels, index)
        if pending:
            if last_good is None:
                raise DataError(self.store_root, f"no readable patient among {len(indices)} of this worker in round {round_index}")
            rng = _rng(self.seed, round_index, int(self._keys[last_good]), _TAG_REFILL)
            yield from self._blocks(*self._draw(last_good, pending, rng), last_good)

    def _blocks(self, patient: StoredPatient, starts: np.ndarray, labels: np.ndarray, index: int) -> Iterator[tuple]:
        """The signal is gathered in blocks of :attr:`block_frames` frames: bounded memory for long frames."""
        b = self.block_frames
        for i in range(0, len(starts), b):
            s = starts[i:i + b]
            yield _gather(patient, s, self.frame_samples), labels[i:i + b], s, index, patient.baseline, patient.gain

    def _emit(self, raw, y, pidx, starts, baseline, gain) -> Iterator[tuple]:
        """One block of frames as tensors: x (k, 1, L) float32, y (k,) [, patient index, start]."""
        x = torch.from_numpy(_to_float(raw, baseline, gain, self.mean, self.std)).unsqueeze(1)
        yt = torch.from_numpy(np.ascontiguousarray(y, np.int64))
        if self.return_position:
            yield (x, yt, torch.from_numpy(np.ascontiguousarray(pidx, np.int64)),
                   torch.from_numpy(np.ascontiguousarray(starts, np.int64)))
        else:
            yield x, yt

    def __iter__(self) -> Iterator[tuple]:
        blocks = self._iter_blocks()
        if self.batch_size is None:  # one frame at a time (a DataLoader with batch_size collates them)
            for block in blocks:
                for i in range(len(block[0])):
                    yield tuple(t[i] for t in block)
            return
        # whole batches, cut from the blocks in order: the batches a DataLoader(batch_size, drop_last=True)
        # would collate from the frames, without a tensor per frame
        pending: list[tuple] = []
        have, b = 0, self.batch_size
        for block in blocks:
            pending.append(block)
            have += len(block[0])
            if have < b:
                continue
            joined = tuple(torch.cat(parts) for parts in zip(*pending)) if len(pending) > 1 else pending[0]
            cut = have - have % b
            for i in range(0, cut, b):
                yield tuple(t[i:i + b] for t in joined)
            pending = [tuple(t[cut:] for t in joined)] if cut < have else []
            have -= cut  # a last partial batch is dropped, as drop_last=True does

    def _iter_blocks(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        round_index = self.round
        mine = self._rank_indices(self.rank, self.world_size, round_index)[worker::num_workers]
        chunks = self._chunks(mine, round_index)
        cap = self.shuffle_buffer
        if cap <= 1:
            for raw, y, starts, index, baseline, gain in chunks:
                n = len(raw)
                yield from self._emit(raw, y, np.full(n, index), starts, np.full(n, baseline), np.full(n, gain))
            return

        rng = _rng(self.seed, round_index, self.rank, worker, num_workers, _TAG_SHUFFLE)
        L = self.frame_samples
        buf_raw = np.empty((cap, L), np.int16)
        buf_y = np.empty(cap, np.int64)
        buf_p = np.empty(cap, np.int64)
        buf_s = np.empty(cap, np.int64)
        buf_base = np.empty(cap, np.float32)
        buf_gain = np.empty(cap, np.float32)
        filled = 0
        for raw, y, starts, index, baseline, gain in chunks:
            k, pos = len(raw), 0
            while pos < k:
                if filled < cap:  # still filling: no output yet
                    take = min(cap - filled, k - pos)
                    dst = slice(filled, filled + take)
                    filled += take
                else:  # full: `take` random distinct slots go out, the new frames take their place
                    take = min(cap, k - pos)
                    dst = rng.choice(cap, size=take, replace=False)
                    yield from self._emit(buf_raw[dst], buf_y[dst], buf_p[dst], buf_s[dst], buf_base[dst], buf_gain[dst])
                src = slice(pos, pos + take)
                buf_raw[dst], buf_y[dst], buf_s[dst] = raw[src], y[src], starts[src]
                buf_p[dst], buf_base[dst], buf_gain[dst] = index, baseline, gain
                pos += take
        rest = rng.permutation(filled)
        for block in range(0, filled, self.block_frames):  # convert in blocks to bound the float32 copy
            sel = rest[block:block + self.block_frames]
            yield from self._emit(buf_raw[sel], buf_y[sel], buf_p[sel], buf_s[sel], buf_base[sel], buf_gain[sel])

    def __repr__(self) -> str:
        return (f"FrameSampler({len(self.patient_ids)} patients, task={self.task}, frame_samples={self.frame_samples}, "
                f"frames_per_patient={self.frames_per_patient}, rank {self.rank}/{self.world_size}, "
                f"{self.frames_per_rank()} frames per rank and round)")


# --------------------------------------------------------------------------- fixed validation frames
def fixed_frames(store_root: str | os.PathLike, patient_ids: Iterable[str], frame_samples: int, frames_per_patient: int,
                 task: str, seed: int = 0, normalization: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic validation set: ``(x float32 (N, 1, L), y int64 (N,))``, the same at every call.

    ``frames_per_patient`` frames of every patient (sorted by id), drawn like the
    training frames from a generator seeded by ``(seed, patient_id)`` alone, so a
    patient's frames do not change when other patients are added. Patients without
    a segment of ``frame_samples`` samples are skipped with a warning.
    """
    frame_samples, frames_per_patient, task = _check_common(frame_samples, frames_per_patient, task)
    mean, std = _check_normalization(normalization)
    entries = {p["patient_id"]: p for p in Store(store_root, keys=PATIENT_KEYS).patients}
    ids = sorted(_check_ids(patient_ids))
    missing = [p for p in ids if p not in entries]
    if missing:
        raise DataError(store_root, f"{len(missing)} patient(s) not in the store, e.g. {missing[:3]}")
    xs, ys, skipped = [], [], []
    for pid in ids:
        patient = StoredPatient(patient_folder(store_root, pid), meta=entries[pid])
        rng = _rng(seed, _hash64("ecgtl-patient", pid), _TAG_FIXED)
        try:
            starts = _draw_starts(patient.segment_offsets, frame_samples, frames_per_patient, rng)
        except DataError:
            skipped.append(pid)
            continue
        raw = _gather(patient, starts, frame_samples)
        xs.append(_to_float(raw, patient.baseline, patient.gain, mean, std))
        ys.append(_labels(patient, task, starts, frame_samples))
    if skipped:
        warnings.warn(f"fixed_frames: {len(skipped)} patient(s) without a segment of {frame_samples} samples skipped, "
                      f"e.g. {skipped[:3]}", RuntimeWarning, stacklevel=2)
    if not xs:
        return np.zeros((0, 1, frame_samples), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs)[:, None, :], np.concatenate(ys).astype(np.int64)


# --------------------------------------------------------------------------- normalisation
def estimate_normalization(store_root: str | os.PathLike, patient_ids: Iterable[str], n_frames: int = 2000,
                           frame_samples: int = 2048, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` in mV of ``n_frames`` random frames (patients drawn uniformly, then frames as in training).

    Reads only the memory-mapped signals and the manifest (no beat arrays).
    """
    frame_samples, n_frames = int(frame_samples), int(n_frames)
    if frame_samples <= 0 or n_frames <= 0:
        raise ValueError("frame_samples and n_frames must be positive")
    entries = {p["patient_id"]: p for p in Store(store_root, keys=("gain", "baseline", "segment_lengths")).patients}
    ids = sorted(_check_ids(patient_ids))
    missing = [p for p in ids if p not in entries]
    if missing:
        raise DataError(store_root, f"{len(missing)} patient(s) not in the store, e.g. {missing[:3]}")
    ids = [p for p in ids if len(_usable_segments(entries[p]["segment_lengths"], frame_samples))]
    if not ids:
        raise ValueError(f"no patient has a segment of {frame_samples} samples")
    rng = _rng(seed, _TAG_NORM)
    counts = np.bincount(rng.integers(len(ids), size=n_frames), minlength=len(ids))
    total = total_sq = 0.0
    n = 0
    for pid, k in zip(ids, counts):
        if not k:
            continue
        e = entries[pid]
        offsets = np.concatenate([[0], np.cumsum(e["segment_lengths"])]).astype(np.int64)
        path = patient_folder(store_root, pid) / SIGNAL_FILE
        if path.stat().st_size != 2 * int(offsets[-1]):
            raise DataError(path, f"{path.stat().st_size} bytes, expected {2 * int(offsets[-1])} (truncated store file)")
        signal = np.memmap(path, dtype="<i2", mode="r", shape=(int(offsets[-1]),)).view(np.ndarray)
        starts = _draw_starts(offsets, frame_samples, int(k), rng)
        x = (sliding_window_view(signal, frame_samples)[starts].astype(np.float64) - e["baseline"]) / e["gain"]
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        n += x.size
        del signal
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
    if not std > 0:
        raise ValueError("the sampled frames are constant: cannot normalise")
    return mean, std
