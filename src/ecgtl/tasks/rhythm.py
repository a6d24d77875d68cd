"""Rhythm pretext task: one rhythm-class label per frame, vectorised over many frames.

All positions and durations are in **samples**. A frame is the interval
``(frame_start, frame_end]`` with ``frame_end = frame_start + frame_length``.
``rhythm[k]`` is the rhythm class (RHYTHM_CLASSES order: undefined 0, end 1,
noise 2, nsr 3, af 4, afl 5) of beat ``k``, as stored per beat in the store.

Rhythm durations (authors' ``get_rhythm_durations`` in ``transplant/datasets/icentia11k.py``
of github.com/kweimann/ecg-transfer-learning)
    Each per-beat rhythm label marks the *end* of a span that starts at the
    previous beat: label ``k`` covers ``(beat_sample[k-1], beat_sample[k]]``.
    Inside a frame the spans are clipped to the frame, so a label's duration is::

        min(beat_sample[k], frame_end) - max(beat_sample[k-1], frame_start)

    for every beat ``k`` with ``beat_sample[k] > frame_start`` up to and including the
    first beat at or after ``frame_end`` (``searchsorted(start, 'right')`` and
    ``searchsorted(end, 'left') + 1`` in the authors' code). Consequences:

    * the first label after the frame start covers the frame from its start;
    * a beat exactly at ``frame_start`` contributes nothing; a beat exactly at
      ``frame_end`` closes the frame and its label covers the frame's tail;
    * a frame without any beat takes the rhythm of the next beat (whole frame);
    * when no beat follows the frame (end of the beats, or of the frame's segment
      with ``segment_offsets``), the last beat's rhythm also covers the rest of
      the frame up to ``frame_end`` (the authors' ``append=end``);
    * when no beat lies after ``frame_start`` at all, there is no rhythm: label
      undefined (0), as in the authors' code (its label array is empty there).

    The durations of a frame always sum to ``frame_length`` when it has a rhythm.

Label rule (authors' ``get_rhythm_label``)
    Sum the durations of each rhythm class in the frame, then

    1. if undefined, AF or flutter occur (duration > 0): the longest of those;
       ties go to the first in the order undefined > af > afl;
    2. otherwise the longest of end / noise / nsr; ties in the order end > noise > nsr;
    3. no rhythm at all -> undefined (0).

    So a short AF stretch beats a long NSR stretch, and so does an *undefined* one.

Vectorisation: the spans lying wholly inside a frame (between its first and its
last label) are gathered for the frames' beats only and summed per frame and
class (one weighted ``np.bincount``); the two clipped spans at the frame's ends
are added separately. Cost O(n_frames * log n_beats + beats inside the frames),
not growing with the patient's length; no Python loop over frames.
:func:`rhythm_label_unchecked` skips the O(n_beats) checks of the whole arrays
(see :mod:`ecgtl.tasks.beat`).

Segments: see :mod:`ecgtl.tasks.beat`; ``segment_offsets`` restricts every frame
to the beats of its own segment, as the authors' per-segment arrays do, so the
first beat of the next segment never labels a frame's tail.
"""

from __future__ import annotations

import numpy as np

from ecgtl.constants import (
    RHYTHM_AF,
    RHYTHM_AFL,
    RHYTHM_CLASSES,
    RHYTHM_END,
    RHYTHM_NOISE,
    RHYTHM_NSR,
    RHYTHM_UNDEFINED,
)
from ecgtl.tasks.beat import (
    _as_frames,
    _as_fs,
    _as_labels,
    _as_positions,
    _between,
    _gathered_labels,
    _priority_label,
    _range_index,
    _search,
    _segment_beat_bounds,
    _track,
    _track_labels,
)

NUM_CLASSES = len(RHYTHM_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(RHYTHM_CLASSES)
# Priority groups in the authors' order (``_HI_PRIO_RHYTHMS``, ``_LO_PRIO_RHYTHMS``); the order breaks ties.
HIGH_PRIORITY = (RHYTHM_UNDEFINED, RHYTHM_AF, RHYTHM_AFL)
LOW_PRIORITY = (RHYTHM_END, RHYTHM_NOISE, RHYTHM_NSR)
EMPTY_LABEL = RHYTHM_UNDEFINED


def _durations(pos: np.ndarray, lab: np.ndarray, start: np.ndarray, length: int, segment_offsets) -> np.ndarray:
    """Durations (F, NUM_CLASSES) from the beats of each frame (and the one after it) only."""
    end = start + length
    seg_lo, seg_hi = _segment_beat_bounds(pos, start, length, segment_offsets)
    first = _between(_search(pos, start, "right"), seg_lo, seg_hi)  # first beat > start
    after = _between(_search(pos, end, "left"), seg_lo, seg_hi)  # first beat >= end
    has = first < seg_hi  # some label ends after the frame start
    last = np.maximum(np.minimum(after, seg_hi - 1), first)  # last label counted (== first when none)
    n, f = len(pos), len(start)
    out = np.zeros((f, NUM_CLASSES), np.int64)
    if n == 0 or not np.any(has):
        return out
    first_c, last_c = np.minimum(first, n - 1), np.minimum(last, n - 1)
    # full spans pos[k] - pos[k-1] of the labels k strictly between the first and the last one
    index, row = _range_index(first_c + 1, last_c)
    if len(index):
        span = pos[index].astype(np.int64) - pos[index - 1].astype(np.int64)
        c = _gathered_labels(lab, index, NUM_CLASSES, "rhythm")
        # float64 sums of integer spans are exact (totals far below 2**53)
        inner = np.bincount(row * NUM_CLASSES + c, weights=span, minlength=f * NUM_CLASSES)
        out += inner.astype(np.int64).reshape(f, NUM_CLASSES)
    rows = np.arange(f)
    single = last_c == first_c
    lab_first = _gathered_labels(lab, first_c, NUM_CLASSES, "rhythm")
    lab_last = _gathered_labels(lab, last_c, NUM_CLASSES, "rhythm")
    # first label: from the frame start to its beat, or the whole frame when it is also the last
    out[rows, lab_first] += np.where(single, length, pos[first_c].astype(np.int64) - start)  # (row, col) pairs unique
    # last label (when different from the first): from the previous beat to the frame end
    prev = pos[np.maximum(last_c - 1, 0)].astype(np.int64)
    out[rows, lab_last] += np.where(single, 0, end - prev)
    out[~has] = 0
    return out


def rhythm_durations(beat_sample, rhythm, frame_start, frame_length, segment_offsets=None) -> np.ndarray:
    """Samples of each rhythm class inside each frame: int64 array (F, NUM_CLASSES).

    Rows sum to ``frame_length``, or to 0 when no beat follows the frame start.
    """
    pos = _as_positions(beat_sample)
    lab = _as_labels(rhythm, len(pos), NUM_CLASSES, "rhythm")
    start, length, _ = _as_frames(frame_start, frame_length)
    return _durations(pos, lab, start, length, segment_offsets)


def rhythm_label(beat_sample, rhythm, frame_start, frame_length, fs=None, segment_offsets=None) -> np.ndarray:
    """Rhythm label (index into :data:`CLASS_NAMES`) of each frame; int64, the shape of ``frame_start``.

    ``beat_sample``: sorted beat positions (samples); ``rhythm``: rhythm class of each
    beat (RHYTHM_CLASSES indices); ``frame_start``: frame starts (samples);
    ``frame_length``: samples per frame. ``fs`` (Hz) is accepted for a uniform
    signature and not needed: the rule compares durations within a frame, so
    samples and seconds give the same label. Rule: module docstring (authors'
    ``get_rhythm_durations`` + ``get_rhythm_label``).
    """
    if fs is not None:
        _as_fs(fs)
    shape = np.shape(frame_start)
    durations = rhythm_durations(beat_sample, rhythm, frame_start, frame_length, segment_offsets)
    return _priority_label(durations, HIGH_PRIORITY, LOW_PRIORITY, EMPTY_LABEL).reshape(shape)


def rhythm_label_unchecked(beat_sample, rhythm, frame_start, frame_length, fs=None, segment_offsets=None) -> np.ndarray:
    """:func:`rhythm_label` for arrays known to be valid (sorted positions, e.g. a store's): the same labels.

    The whole arrays are neither checked nor converted (a memory map stays one): O(F log n_beats
    + beats inside the frames); the rhythm classes read are still checked.
    """
    if fs is not None:
        _as_fs(fs)
    pos = _track(beat_sample)
    lab = _track_labels(rhythm, len(pos), "rhythm")
    start, length, shape = _as_frames(frame_start, frame_length)
    durations = _durations(pos, lab, start, length, segment_offsets)
    return _priority_label(durations, HIGH_PRIORITY, LOW_PRIORITY, EMPTY_LABEL).reshape(shape)
