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

Vectorisation: with per-class cumulative sums of the full spans
``beat_sample[k] - beat_sample[k-1]``, the spans lying wholly inside a frame sum to
``D[last] - D[first + 1]``; the two clipped spans at the frame's ends are added
separately. No Python loop over frames.

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
from ecgtl.tasks.beat import _as_frames, _as_fs, _as_labels, _as_positions, _priority_label, _segment_beat_bounds

NUM_CLASSES = len(RHYTHM_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(RHYTHM_CLASSES)
# Priority groups in the authors' order (``_HI_PRIO_RHYTHMS``, ``_LO_PRIO_RHYTHMS``); the order breaks ties.
HIGH_PRIORITY = (RHYTHM_UNDEFINED, RHYTHM_AF, RHYTHM_AFL)
LOW_PRIORITY = (RHYTHM_END, RHYTHM_NOISE, RHYTHM_NSR)
EMPTY_LABEL = RHYTHM_UNDEFINED


def rhythm_durations(beat_sample, rhythm, frame_start, frame_length, segment_offsets=None) -> np.ndarray:
    """Samples of each rhythm class inside each frame: int64 array (F, NUM_CLASSES).

    Rows sum to ``frame_length``, or to 0 when no beat follows the frame start.
    """
    pos = _as_positions(beat_sample)
    lab = _as_labels(rhythm, len(pos), NUM_CLASSES, "rhythm")
    start, length, _ = _as_frames(frame_start, frame_length)
    end = start + length
    seg_lo, seg_hi = _segment_beat_bounds(pos, start, length, segment_offsets)
    first = np.clip(np.searchsorted(pos, start, side="right"), seg_lo, seg_hi)  # first beat > start
    after = np.clip(np.searchsorted(pos, end, side="left"), seg_lo, seg_hi)  # first beat >= end
    has = first < seg_hi  # some label ends after the frame start
    last = np.maximum(np.minimum(after, seg_hi - 1), first)  # last label counted (== first when none)
    n, f = len(pos), len(start)
    out = np.zeros((f, NUM_CLASSES), np.int64)
    if n == 0 or not np.any(has):
        return out
    first_c, last_c = np.minimum(first, n - 1), np.minimum(last, n - 1)
    # full spans of the labels strictly between the first and the last one
    span = np.zeros(n, np.int64)
    span[1:] = np.diff(pos)
    cum = np.zeros((n + 1, NUM_CLASSES), np.int64)
    cum[np.arange(1, n + 1), lab] = span
    np.cumsum(cum, axis=0, out=cum)
    inner = last_c > first_c + 1
    lo, hi = np.where(inner, first_c + 1, 0), np.where(inner, last_c, 0)
    out += cum[hi] - cum[lo]
    rows = np.arange(f)
    single = last_c == first_c
    # first label: from the frame start to its beat, or the whole frame when it is also the last
    out[rows, lab[first_c]] += np.where(single, length, pos[first_c] - start)  # (row, col) pairs unique
    # last label (when different from the first): from the previous beat to the frame end
    prev = pos[np.maximum(last_c - 1, 0)]
    out[rows, lab[last_c]] += np.where(single, 0, end - prev)
    out[~has] = 0
    return out


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
