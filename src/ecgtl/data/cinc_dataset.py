"""PyTorch datasets of CinC 2017 records for fine-tuning and evaluation.

Signals are first prepared once with :func:`prepare_cinc` (normalised, then
resampled to the model's rate) and kept in memory as float32 arrays (all 8,528
records at 250 Hz take about 250 MB). The datasets then only cut them:

- :class:`CincCropDataset` -- training: a random crop of ``crop_samples`` per
  record, a new one each epoch (:meth:`~CincCropDataset.set_epoch`), optionally
  augmented (:class:`~ecgtl.data.augment.EcgAugment`);
- :class:`CincPaperDataset` -- the authors' fixed input: the last ``length``
  samples, zero-padded at the front;
- :class:`CincWindowDataset` -- evaluation: every sliding window of every
  record, with :func:`aggregate_windows` to average the window probabilities
  back to one prediction per record.

Items are ``(tensor of shape (1, samples) float32, int)``: the int is the
class index (``CINC_CLASSES``: N=0, A=1, O=2, ~=3; -1 for an unlabelled
record) or, for the window dataset, the record index.

Where the real signal is: built with ``return_valid=True``, a dataset's items
have a third element, ``valid``, an int64 tensor ``(start, end)``: the input's
samples ``[start, end)`` are the record's, the ``start`` samples before them
and the ``length - end`` after them are zero padding (``(0, length)``: no
padding). Batched by a DataLoader it is ``(B, 2)``, the ``valid`` argument of
the models' masked pooling (``pooling: masked``). :meth:`valid_range` gives the
same for one item without cutting it (paper and window datasets); the window
dataset also holds them all in ``valid`` ``(n_windows, 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ecgtl.constants import CINC_CLASSES, CINC_FS_HZ, PAPER_FINETUNE_SAMPLES
from ecgtl.data.augment import EcgAugment
from ecgtl.data.transforms import Normalization, paper_pad_or_crop, random_crop, resample, take_window, window_starts

__all__ = [
    "UNLABELLED",
    "CincCropDataset",
    "CincPaperDataset",
    "CincWindowDataset",
    "aggregate_windows",
    "encode_labels",
    "prepare_cinc",
    "window_valid_range",
]

#: Label of a record without a class.
UNLABELLED = -1


def prepare_cinc(
    records: Sequence[Any],
    fs_out: float,
    normalization: Normalization | None,
    fs_in: float = CINC_FS_HZ,
) -> list[np.ndarray]:
    """Normalise then resample each record to ``fs_out`` Hz; returns float32 1-D arrays.

    ``records`` are :class:`~ecgtl.data.cinc2017.CincRecord` objects (their own
    ``fs`` is used) or plain 1-D arrays in mV sampled at ``fs_in`` Hz.
    ``normalization`` (in mV; derive it from the training records, or use
    :data:`~ecgtl.data.transforms.PAPER_CINC`) is applied before resampling, as
    in the authors' code: the resampler's zero padding at the edges then
    corresponds to the mean level rather than to 0 mV. ``None`` skips it.
    """
    out = []
    for rec in records:
        signal = getattr(rec, "signal", rec)
        fs = float(getattr(rec, "fs", fs_in))
        x = normalization(signal) if normalization is not None else np.asarray(signal, dtype=np.float32)
        out.append(resample(x, fs, fs_out))
    return out


def encode_labels(labels: Sequence[Any] | None, n: int) -> np.ndarray:
    """Class indices (int64) of ``n`` records from labels ``"N"``/``"A"``/``"O"``/``"~"``, ints, or None.

    ``labels=None`` (unlabelled data) or a None entry gives :data:`UNLABELLED` (-1).
    """
    if labels is None:
        return np.full(n, UNLABELLED, dtype=np.int64)
    if len(labels) != n:
        raise ValueError(f"{n} signals but {len(labels)} labels")
    out = np.empty(n, dtype=np.int64)
    for i, lab in enumerate(labels):
        if lab is None:
            out[i] = UNLABELLED
        elif isinstance(lab, str):
            if lab not in CINC_CLASSES:
                raise ValueError(f"unknown label {lab!r} (expected one of {', '.join(CINC_CLASSES)})")
            out[i] = CINC_CLASSES.index(lab)
        else:
            idx = int(lab)
            if idx != lab or not (idx == UNLABELLED or 0 <= idx < len(CINC_CLASSES)):
                raise ValueError(f"label index {lab!r} out of range (0..{len(CINC_CLASSES) - 1}, or -1 for none)")
            out[i] = idx
    return out


def _check_signals(signals: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(signals):
        s = np.asarray(s)
        if s.ndim != 1:
            raise ValueError(f"signal {i} must be 1-D (samples,), got shape {s.shape}")
        out.append(s.astype(np.float32, copy=False))
    return out


def _item(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)


def window_valid_range(n_samples: int, start: int, length: int) -> tuple[int, int]:
    """The samples ``[lo, hi)`` of the input ``take_window(x, start, length)`` that are ``x``'s (the rest is padding).

    ``x`` has ``n_samples`` samples; a negative ``start`` pads ``-start`` zeros in front, a window
    running past the end pads the rest. A window that misses the record entirely is ``(0, 0)``.
    """
    lo, hi = max(int(start), 0), min(int(start) + int(length), int(n_samples))
    if hi <= lo:
        return 0, 0
    return lo - int(start), hi - int(start)


def _valid(lo: int, hi: int) -> torch.Tensor:
    return torch.tensor([lo, hi], dtype=torch.int64)


class _CincBase(Dataset):
    def __init__(self, signals: Sequence[np.ndarray], labels: Sequence[Any] | None, return_valid: bool = False):
        self.signals = _check_signals(signals)
        self.labels = encode_labels(labels, len(self.signals))
        self.return_valid = bool(return_valid)

    def __len__(self) -> int:
        return len(self.signals)

    def _out(self, x: np.ndarray, target: int, valid: tuple[int, int]) -> tuple:
        if self.return_valid:
            return _item(x), target, _valid(*valid)
        return _item(x), target


class CincCropDataset(_CincBase):
    """Training set: item ``i`` -> (random crop of record ``i``, shape (1, crop_samples), class index).

    Records shorter than ``crop_samples`` are zero-padded at the front. The crop
    comes from a generator seeded with ``(seed, epoch, i)``: the same seed and
    epoch give the same crops whatever the worker or the order of access, and
    :meth:`set_epoch` draws new ones. Call ``set_epoch`` before iterating a
    :class:`~torch.utils.data.DataLoader` each epoch (with
    ``persistent_workers=False``, so that workers see the new epoch).
    With ``return_valid`` items are ``(crop, class, valid)``: ``valid = (pad, crop_samples)``
    where ``pad`` samples were padded in front (0 for a record longer than the crop; after
    the augmentation's time stretch, the stretched record's length counts). Amplitude
    augmentations (noise, wander) act on the padding too: ``valid`` still says where the record is.
    The augmentation's ``shift`` moves ``moved`` of the padding's zeros behind the record:
    ``valid = (pad - moved, crop_samples - moved)``.
    """

    def __init__(self, signals: Sequence[np.ndarray], labels: Sequence[Any] | None, crop_samples: int, seed: int = 0,
                 augment: EcgAugment | None = None, return_valid: bool = False):
        super().__init__(signals, labels, return_valid)
        if int(crop_samples) != crop_samples or crop_samples <= 0:
            raise ValueError(f"crop_samples must be a positive whole number, got {crop_samples!r}")
        self.crop_samples = int(crop_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.augment = augment if augment is not None and augment.active else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> tuple:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        record = self.signals[i] if self.augment is None else self.augment.stretch_record(self.signals[i], rng)
        crop = random_crop(record, self.crop_samples, rng)  # a short record: whole, front-padded
        pad = max(0, self.crop_samples - record.shape[0])
        moved = 0
        if self.augment is not None:
            moved = self.augment.draw_shift(pad, rng)
            if moved:  # ``moved`` of the front padding's zeros go behind the record
                crop = np.roll(crop, -moved)
            crop = self.augment(crop, rng)
        return self._out(crop, int(self.labels[i]), (pad - moved, self.crop_samples - moved))


class CincPaperDataset(_CincBase):
    """The authors' input: item ``i`` -> (last ``length`` samples of record ``i``, front zero-padded, (1, length); class index).

    With ``return_valid`` a third element ``valid = (max(0, length - n), length)`` for a record of ``n`` samples.
    """

    def __init__(self, signals: Sequence[np.ndarray], labels: Sequence[Any] | None, length: int = PAPER_FINETUNE_SAMPLES,
                 return_valid: bool = False):
        super().__init__(signals, labels, return_valid)
        if int(length) != length or length <= 0:
            raise ValueError(f"length must be a positive whole number, got {length!r}")
        self.length = int(length)

    def valid_range(self, i: int) -> tuple[int, int]:
        """Samples ``[start, end)`` of item ``i``'s input that are the record's (the rest is front padding)."""
        n = self.signals[i].shape[0]
        return window_valid_range(n, n - self.length, self.length)

    def __getitem__(self, i: int) -> tuple:
        return self._out(paper_pad_or_crop(self.signals[i], self.length), int(self.labels[i]), self.valid_range(i))


class CincWindowDataset(_CincBase):
    """Evaluation: every sliding window of every record, flattened.

    Item ``j`` -> (window, shape (1, window_samples); index of its record).
    The windows of a record are those of
    :func:`~ecgtl.data.transforms.sliding_windows` (the last one aligned to the
    record's end; a short record gives one front-padded window), in record
    order. ``record_index`` (n_windows,) maps windows to records; per-record
    classes are in ``labels``. Average the model's window probabilities with
    :func:`aggregate_windows` ``(probs, dataset.record_index, len(dataset.signals))``.
    ``valid`` (n_windows, 2) int64: the samples ``[start, end)`` of each window that are its
    record's (``(0, window_samples)`` but for a short record's front-padded window); with
    ``return_valid`` items are ``(window, record index, valid)``.
    """

    def __init__(self, signals: Sequence[np.ndarray], labels: Sequence[Any] | None, window_samples: int, hop_samples: int,
                 return_valid: bool = False):
        super().__init__(signals, labels, return_valid)
        self.window_samples = int(window_samples)
        self.hop_samples = int(hop_samples)
        starts = [window_starts(s.shape[0], window_samples, hop_samples) for s in self.signals]
        self.starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.record_index = np.repeat(np.arange(len(starts), dtype=np.int64), [len(s) for s in starts])
        lengths = np.array([s.shape[0] for s in self.signals], dtype=np.int64)[self.record_index]
        lo, hi = np.maximum(self.starts, 0), np.minimum(self.starts + self.window_samples, lengths)
        self.valid = np.where((hi > lo)[:, None], np.stack([lo - self.starts, hi - self.starts], axis=1), 0).astype(np.int64)

    @property
    def n_records(self) -> int:
        return len(self.signals)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def valid_range(self, j: int) -> tuple[int, int]:
        """Samples ``[start, end)`` of window ``j`` that are its record's (the rest is zero padding)."""
        lo, hi = self.valid[j]
        return int(lo), int(hi)

    def __getitem__(self, j: int) -> tuple:
        r = int(self.record_index[j])
        return self._out(take_window(self.signals[r], int(self.starts[j]), self.window_samples), r, self.valid_range(j))


def aggregate_windows(window_probs: np.ndarray, record_index: np.ndarray, n_records: int | None = None) -> np.ndarray:
    """Average window probabilities per record: (n_windows, C) -> (n_records, C) float64.

    ``record_index[j]`` is the record of window ``j`` (any order). ``n_records``
    defaults to ``max(record_index) + 1``; every record must have at least one
    window. Accepts numpy arrays or torch tensors.
    """
    if isinstance(window_probs, torch.Tensor):
        window_probs = window_probs.detach().cpu().numpy()
    if isinstance(record_index, torch.Tensor):
        record_index = record_index.detach().cpu().numpy()
    probs = np.asarray(window_probs, dtype=np.float64)
    idx = np.asarray(record_index, dtype=np.int64)
    if probs.ndim != 2 or idx.shape != (probs.shape[0],):
        raise ValueError(f"expected probabilities (n_windows, C) and record indices (n_windows,), got {probs.shape} and {idx.shape}")
    if idx.size and idx.min() < 0:
        raise ValueError("record indices must be >= 0")
    n = int(idx.max()) + 1 if n_records is None and idx.size else int(n_records or 0)
    if idx.size and idx.max() >= n:
        raise ValueError(f"record index {int(idx.max())} out of range for {n} records")
    counts = np.bincount(idx, minlength=n)
    if np.any(counts == 0):
        raise ValueError(f"{int(np.sum(counts == 0))} record(s) without any window, e.g. record {int(np.flatnonzero(counts == 0)[0])}")
    sums = np.zeros((n, probs.shape[1]), dtype=np.float64)
    for c in range(probs.shape[1]):
        sums[:, c] = np.bincount(idx, weights=probs[:, c], minlength=n)
    return sums / counts[:, None]
