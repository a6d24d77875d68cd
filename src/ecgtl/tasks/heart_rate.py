"""Heart-rate pretext task: one heart-rate class per frame, vectorised over many frames.

Positions are in **samples**, ``fs`` in **Hz**, heart rate in **beats per minute**.

Class order — the authors' (``_HR_TACHYCARDIA = 0``, ``_HR_BRADYCARDIA = 1``,
``_HR_NORMAL = 2``, ``_HR_NOISE = 3`` in ``transplant/datasets/icentia11k.py`` of
github.com/kweimann/ecg-transfer-learning), kept so that heads and confusion
matrices line up with theirs::

    0 tachycardia   1 bradycardia   2 normal   3 noise

(the order of :data:`ecgtl.constants.HEART_RATE_CLASSES`). (The authors' docstring of
``get_heart_rate_label`` also swaps the names "tachycardia <60 BPM" and
"bradycardia >100 BPM"; their code, followed here, gives < 60 -> bradycardia.)

Rule (authors' ``heart_rate_data_generator`` -> ``get_complete_beats`` -> ``get_heart_rate_label``)
    1. Take the *complete beats* of the frame (see :mod:`ecgtl.tasks.beat`: beat
       ``k`` with ``frame_start <= beat_sample[k-1]`` and
       ``beat_sample[k] <= frame_start + frame_length``). The first beat inside the
       frame is not complete, so the RR interval from it to the next beat is not
       used.
    2. Fewer than 2 complete beats (i.e. fewer than 3 beats in the frame) -> noise (3).
    3. Otherwise the mean RR interval of the complete beats, in seconds, is
       ``(last - first) / (n - 1) / fs`` and ``bpm = 60 / mean RR``;
       ``bpm < 60`` -> bradycardia (1); ``60 <= bpm <= 100`` -> normal (2), both
       thresholds included; ``bpm > 100`` -> tachycardia (0). Two complete beats
       at the same sample (RR 0) give infinite bpm -> tachycardia.

    The bpm is computed as ``60 * fs * (n - 1) / (last - first)``, one correctly
    rounded division, so a heart rate of exactly 60 or 100 bpm (e.g. RR of 250 or
    150 samples at 250 Hz) is exactly 60 or 100 and lands in *normal*, as the
    authors' ``bpm <= 100`` intends. Their code averages ``diff / fs`` in floating
    point, which is off by a few ulps at those exact thresholds (11 beats 150
    samples apart at 250 Hz give 100.00000000000003 -> tachycardia there, 10 give
    100.0 -> normal; some 60-bpm frames give 59.999999999999986 -> bradycardia);
    with an integer fs nowhere else can the two differ. On Icentia11k patient 0
    (20,000 random 2,048-sample frames) that is 8 frames (0.04 %), all exactly
    60 or 100 bpm; every other frame gets the authors' label.

For the authors' centred label frame (``label_frame_size`` around the frame
centre) pass that frame's start and length instead of the input frame's.
Without beat annotations (CinC 2017), detect the beats first with
:func:`ecgtl.signal.qrs.detect_beats`.
"""

from __future__ import annotations

import numpy as np

from ecgtl.constants import BRADYCARDIA_BPM, HEART_RATE_CLASSES, TACHYCARDIA_BPM
from ecgtl.tasks.beat import _as_frames, _as_fs, _as_positions, _complete_range, _track

HR_TACHYCARDIA, HR_BRADYCARDIA, HR_NORMAL, HR_NOISE = 0, 1, 2, 3
CLASS_NAMES: tuple[str, ...] = HEART_RATE_CLASSES
NUM_CLASSES = len(CLASS_NAMES)
MIN_COMPLETE_BEATS = 2


def _bpm(pos: np.ndarray, start: np.ndarray, length: int, fs: float, segment_offsets) -> np.ndarray:
    """Flat bpm per frame from the first and last complete beat only (two positions gathered per frame)."""
    lo, hi = _complete_range(pos, start, length, segment_offsets)
    n = hi - lo
    ok = n >= MIN_COMPLETE_BEATS
    bpm = np.full(len(start), np.nan)
    if np.any(ok):
        # samples from the first to the last complete beat (int64 before the difference: int32 store positions)
        span = (pos[hi[ok] - 1].astype(np.int64) - pos[lo[ok]].astype(np.int64)).astype(np.float64)
        with np.errstate(divide="ignore"):
            bpm[ok] = 60.0 * fs * (n[ok] - 1) / span
    return bpm


def heart_rate_bpm(beat_sample, frame_start, frame_length, fs, segment_offsets=None) -> np.ndarray:
    """Mean heart rate (bpm, float64) of each frame's complete beats; NaN with fewer than 2 of them."""
    pos = _as_positions(beat_sample)
    start, length, shape = _as_frames(frame_start, frame_length)
    return _bpm(pos, start, length, _as_fs(fs), segment_offsets).reshape(shape)


def _classify(bpm: np.ndarray) -> np.ndarray:
    # the authors' chain: bpm < 60 -> brady, elif bpm <= 100 -> normal, else tachy; no bpm -> noise
    out = np.where(bpm < BRADYCARDIA_BPM, HR_BRADYCARDIA, np.where(bpm <= TACHYCARDIA_BPM, HR_NORMAL, HR_TACHYCARDIA))
    return np.where(np.isnan(bpm), HR_NOISE, out).astype(np.int64)


def heart_rate_label(beat_sample, frame_start, frame_length, fs, segment_offsets=None) -> np.ndarray:
    """Heart-rate label (index into :data:`CLASS_NAMES`) of each frame; int64, the shape of ``frame_start``.

    ``beat_sample``: sorted beat positions (samples); ``frame_start``: frame starts
    (samples); ``frame_length``: samples per frame; ``fs``: Hz. Rule: module docstring.
    """
    return _classify(heart_rate_bpm(beat_sample, frame_start, frame_length, fs, segment_offsets))


def heart_rate_label_unchecked(beat_sample, frame_start, frame_length, fs, segment_offsets=None) -> np.ndarray:
    """:func:`heart_rate_label` for positions known to be sorted (e.g. a store's): the same labels.

    The positions are neither checked nor converted (a memory map stays one): O(F log n_beats),
    two positions read per frame (:func:`ecgtl.tasks.beat.beat_label_unchecked`).
    """
    pos = _track(beat_sample)
    start, length, shape = _as_frames(frame_start, frame_length)
    return _classify(_bpm(pos, start, length, _as_fs(fs), segment_offsets)).reshape(shape)
