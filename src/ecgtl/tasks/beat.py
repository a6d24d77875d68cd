"""Beat pretext task: one beat-class label per frame, vectorised over many frames.

All positions are in **samples** (integers), counted from the patient's first
sample as in :class:`ecgtl.data.store.StoredPatient`. A frame is
``frame_start .. frame_start + frame_length``.

Complete beats (authors' ``get_complete_beats`` in ``transplant/datasets/icentia11k.py``
of github.com/kweimann/ecg-transfer-learning)
    A beat position marks the *end* of a heartbeat, whose start is the previous
    beat. Beat ``k`` is complete in the frame when both ends lie in the closed
    interval ``[frame_start, frame_start + frame_length]``::

        frame_start <= beat_sample[k - 1]   and   beat_sample[k] <= frame_start + frame_length

    so the first beat inside the frame is never complete (its start lies before
    the frame), and a frame with 0 or 1 beat has no complete beat. Both ends are
    inclusive, as in the authors' code (``searchsorted(start, 'left') + 1`` and
    ``searchsorted(end, 'right')``): a beat exactly at ``frame_start`` counts as
    the start of the next beat, and a beat exactly at ``frame_start + frame_length``
    (one sample past the last sample of the frame's signal) is complete.

Label rule (authors' ``get_beat_label``)
    Count the complete beats of each class (BEAT_CLASSES order: undefined 0,
    normal 1, pac 2, aberrated 3, pvc 4), then

    1. if any PAC, aberrated or PVC beat is present: the most frequent of
       those three; ties go to the first in the order pac > aberrated > pvc
       (``argmax`` over ``[2, 3, 4]``), e.g. 1 PAC + 1 PVC -> pac;
    2. otherwise the more frequent of undefined / normal; a tie goes to
       undefined (``argmax`` over ``[0, 1]``);
    3. no complete beat at all -> undefined (0).

    So one PVC among any number of normal beats gives pvc.

Vectorisation: ``np.searchsorted`` on the sorted beat positions gives each
frame's range of complete beats ``[lo, hi)``; the classes of the beats in those
ranges only are gathered and counted per frame (one ``np.bincount``). Cost
O(n_frames * log n_beats + beats inside the frames): it does not grow with the
patient's length, and of a memory-mapped beat array only the pages around the
frames are read. No Python loop over frames. :func:`beat_label` first checks the
whole arrays (sorted positions, classes in range: O(n_beats)); the ``*_unchecked``
variants of the three tasks skip those checks, for arrays known to be valid (a
store's, :mod:`ecgtl.data.store`, checks them when it writes them): the frame
sampler labels with those (:mod:`ecgtl.tasks.registry`), with the same labels.

Segments: frames must not cross segment boundaries. The authors label frames
on per-segment beat arrays; with the beats of several segments stored back to
back, pass ``segment_offsets`` (segment start samples plus the total length, as
in the store) to restrict every frame to the beats of its own segment, which
reproduces the per-segment result exactly (it only matters for a beat lying
exactly on the next segment's first sample).
"""

from __future__ import annotations

import operator

import numpy as np

from ecgtl.constants import BEAT_ABERRATED, BEAT_CLASSES, BEAT_NORMAL, BEAT_PAC, BEAT_PVC, BEAT_UNDEFINED

NUM_CLASSES = len(BEAT_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(BEAT_CLASSES)
# Priority groups in the authors' order (``_HI_PRIO_BEATS``, ``_LO_PRIO_BEATS``); the order breaks ties.
HIGH_PRIORITY = (BEAT_PAC, BEAT_ABERRATED, BEAT_PVC)
LOW_PRIORITY = (BEAT_UNDEFINED, BEAT_NORMAL)
EMPTY_LABEL = BEAT_UNDEFINED


# --------------------------------------------------------------------------- shared helpers (also used by rhythm, heart rate)
def _as_positions(beat_sample) -> np.ndarray:
    pos = np.asarray(beat_sample)
    if pos.ndim != 1:
        raise ValueError(f"beat_sample must be 1-D, got shape {pos.shape}")
    if pos.size and not np.issubdtype(pos.dtype, np.integer):
        raise TypeError(f"beat_sample must hold integer sample positions, got {pos.dtype}")
    pos = pos.astype(np.int64, copy=False)
    if pos.size > 1 and np.any(pos[1:] < pos[:-1]):
        raise ValueError("beat_sample must be sorted (non-decreasing)")
    return pos


def _as_labels(values, n: int, num_classes: int, name: str) -> np.ndarray:
    lab = np.asarray(values)
    if lab.shape != (n,):
        raise ValueError(f"{name} must have the shape of beat_sample ({n},), got {lab.shape}")
    if n and not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got {lab.dtype}")
    lab = lab.astype(np.int64, copy=False)
    if n and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{lab.min()}, {lab.max()}]")
    return lab


def _as_frames(frame_start, frame_length) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """Flat int64 frame starts, the frame length (> 0) and the shape to give the labels."""
    try:
        length = operator.index(frame_length)
    except TypeError:
        raise TypeError(f"frame_length must be an integer number of samples, got {frame_length!r}") from None
    if length <= 0:
        raise ValueError(f"frame_length must be positive, got {length}")
    start = np.asarray(frame_start)
    if start.size and not np.issubdtype(start.dtype, np.integer):
        raise TypeError(f"frame_start must hold integer sample positions, got {start.dtype}")
    return start.astype(np.int64, copy=False).ravel(), length, start.shape


def _as_fs(fs) -> float:
    fs = float(fs)
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"fs must be a positive sampling rate in Hz, got {fs}")
    return fs


def _search(pos: np.ndarray, values, side: str = "left") -> np.ndarray:
    """``np.searchsorted(pos, values, side)`` without a copy of ``pos``.

    NumPy casts both to a common dtype, so int64 frame starts against the store's int32
    positions would convert (copy) the whole beat array at every call: the values are
    cast to ``pos``'s integer dtype instead, those outside its range searched as its
    extremes and then answered directly (0 below every position, ``len(pos)`` above).
    """
    values = np.asarray(values)
    if values.dtype == pos.dtype or not (np.issubdtype(pos.dtype, np.integer) and np.issubdtype(values.dtype, np.integer)):
        return np.searchsorted(pos, values, side)
    info, vinfo = np.iinfo(pos.dtype), np.iinfo(values.dtype)
    lo, hi = values.dtype.type(max(info.min, vinfo.min)), values.dtype.type(min(info.max, vinfo.max))
    index = np.searchsorted(pos, np.minimum(np.maximum(values, lo), hi).astype(pos.dtype), side)  # np.clip, faster
    below, above = values < lo, values > hi
    if below.any() or above.any():
        index = np.where(below, 0, np.where(above, len(pos), index))
    return index


def _between(x: np.ndarray, lo, hi) -> np.ndarray:
    """``np.clip(x, lo, hi)`` (lo <= hi), cheaper on small arrays."""
    return np.minimum(np.maximum(x, lo), hi)


def _track(beat_sample) -> np.ndarray:
    """Positions as a plain 1-D integer array, unconverted (a memory map stays a map): the unchecked paths."""
    pos = np.asarray(beat_sample)
    if pos.ndim != 1 or (pos.size and not np.issubdtype(pos.dtype, np.integer)):
        raise ValueError(f"beat_sample must be a 1-D integer array, got {pos.dtype} {pos.shape}")
    return pos


def _track_labels(values, n: int, name: str) -> np.ndarray:
    lab = np.asarray(values)
    if lab.shape != (n,):
        raise ValueError(f"{name} must have the shape of beat_sample ({n},), got {lab.shape}")
    return lab


def _gathered_labels(lab: np.ndarray, index: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """``lab[index]`` as int64, checked to lie in ``[0, num_classes)`` (only what is gathered is read)."""
    out = lab[index].astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}), got [{out.min()}, {out.max()}]")
    return out


def _range_index(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indices ``k`` with ``lo[i] <= k < hi[i]`` of every row ``i``, concatenated, and the row of each."""
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    row = np.repeat(np.arange(len(n)), n)
    shift = np.repeat(lo - (np.cumsum(n) - n), n)  # index = position in the concatenation + shift of its row
    return np.arange(total, dtype=np.int64) + shift, row


def _segment_beat_bounds(pos: np.ndarray, start: np.ndarray, length: int, segment_offsets):
    """Index range ``[seg_lo, seg_hi)`` of the beats in each frame's segment (whole array without segments)."""
    if segment_offsets is None:
        return 0, len(pos)
    off = np.asarray(segment_offsets, np.int64).ravel()
    if len(off) < 2 or np.any(np.diff(off) < 0):
        raise ValueError("segment_offsets must be sorted segment starts followed by the total length")
    seg = np.searchsorted(off, start, side="right") - 1
    bad = (seg < 0) | (seg >= len(off) - 1)
    seg = _between(seg, 0, len(off) - 2)
    bad |= start + length > off[seg + 1]
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"frame [{start[i]}, {start[i] + length}) crosses a segment boundary or lies outside the recording")
    bounds = _search(pos, np.concatenate([off[seg], off[seg + 1]]), "left")  # one call for both ends
    return bounds[:len(seg)], bounds[len(seg):]


def complete_beat_range(beat_sample, frame_start, frame_length, segment_offsets=None) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the index range ``[lo, hi)`` into ``beat_sample`` of its complete beats.

    Complete: ``frame_start <= beat_sample[k-1]`` and ``beat_sample[k] <= frame_start + frame_length``
    (see the module docstring). ``lo == hi`` when there is none. Both arrays are int64 of shape (F,).
    """
    pos = _as_positions(beat_sample)
    start, length, _ = _as_frames(frame_start, frame_length)
    return _complete_range(pos, start, length, segment_offsets)


def _complete_range(pos, start, length, segment_offsets):
    seg_lo, seg_hi = _segment_beat_bounds(pos, start, length, segment_offsets)
    first_in = _between(_search(pos, start, "left"), seg_lo, seg_hi)  # first beat >= start
    hi = _between(_search(pos, start + length, "right"), seg_lo, seg_hi)  # beats <= end
    lo = np.minimum(first_in + 1, hi)  # skip the first beat inside the frame
    return lo.astype(np.int64, copy=False), hi.astype(np.int64, copy=False)


def _priority_label(amount: np.ndarray, high: tuple[int, ...], low: tuple[int, ...], empty: int) -> np.ndarray:
    """The authors' two-level argmax: the largest of ``high`` if any is > 0, else of ``low``, else ``empty``.

    ``amount``: (F, C) counts or durations. Ties go to the class listed first.
    """
    rows = np.arange(len(amount))
    hp = amount[:, list(high)]
    h_arg = hp.argmax(axis=1)  # argmax returns the first maximum: the tie order of the authors
    lp = amount[:, list(low)]
    l_arg = lp.argmax(axis=1)
    out = np.where(lp[rows, l_arg] > 0, np.asarray(low, np.int64)[l_arg], empty)
    return np.where(hp[rows, h_arg] > 0, np.asarray(high, np.int64)[h_arg], out).astype(np.int64)


# --------------------------------------------------------------------------- the task
def _beat_counts(pos: np.ndarray, cls: np.ndarray, start: np.ndarray, length: int, segment_offsets) -> np.ndarray:
    """Counts (F, NUM_CLASSES) from the classes of each frame's complete beats only."""
    lo, hi = _complete_range(pos, start, length, segment_offsets)
    index, row = _range_index(lo, hi)
    c = _gathered_labels(cls, index, NUM_CLASSES, "beat_class")
    return np.bincount(row * NUM_CLASSES + c, minlength=len(start) * NUM_CLASSES).reshape(len(start), NUM_CLASSES)


def beat_counts(beat_sample, beat_class, frame_start, frame_length, segment_offsets=None) -> np.ndarray:
    """Number of complete beats of each class per frame: int64 array (F, NUM_CLASSES)."""
    pos = _as_positions(beat_sample)
    cls = _as_labels(beat_class, len(pos), NUM_CLASSES, "beat_class")
    start, length, _ = _as_frames(frame_start, frame_length)
    return _beat_counts(pos, cls, start, length, segment_offsets)


def beat_label(beat_sample, beat_class, frame_start, frame_length, segment_offsets=None) -> np.ndarray:
    """Beat label (index into :data:`CLASS_NAMES`) of each frame; int64, the shape of ``frame_start``.

    ``beat_sample``: sorted beat positions (samples); ``beat_class``: their classes
    (BEAT_CLASSES indices); ``frame_start``: frame starts (samples); ``frame_length``:
    samples per frame. Rule: module docstring (authors' ``get_complete_beats`` + ``get_beat_label``).
    """
    shape = np.shape(frame_start)
    counts = beat_counts(beat_sample, beat_class, frame_start, frame_length, segment_offsets)
    return _priority_label(counts, HIGH_PRIORITY, LOW_PRIORITY, EMPTY_LABEL).reshape(shape)


def beat_label_unchecked(beat_sample, beat_class, frame_start, frame_length, segment_offsets=None) -> np.ndarray:
    """:func:`beat_label` for arrays known to be valid (sorted positions, e.g. a store's): the same labels.

    The whole arrays are neither checked nor converted (a memory map stays one): the cost
    is O(F log n_beats + beats inside the frames), and the classes read are still checked.
    Unsorted positions give undefined labels.
    """
    pos = _track(beat_sample)
    cls = _track_labels(beat_class, len(pos), "beat_class")
    start, length, shape = _as_frames(frame_start, frame_length)
    counts = _beat_counts(pos, cls, start, length, segment_offsets)
    return _priority_label(counts, HIGH_PRIORITY, LOW_PRIORITY, EMPTY_LABEL).reshape(shape)
