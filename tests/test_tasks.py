"""Label rules of the beat / rhythm / heart-rate pretext tasks, and QRS detection on real ECG.

Hand-built cases cover every branch of each rule (module docstrings of
``ecgtl.tasks.*``); random annotations compare the vectorised functions with
plain per-frame loops written here from the rules.
"""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ecgtl.constants import (
    BEAT_ABERRATED as A,
)
from ecgtl.constants import (
    BEAT_CLASSES,
    RHYTHM_AF,
    RHYTHM_AFL,
    RHYTHM_CLASSES,
    RHYTHM_END,
    RHYTHM_NOISE,
    RHYTHM_NSR,
    RHYTHM_UNDEFINED,
)
from ecgtl.constants import (
    BEAT_NORMAL as N,
)
from ecgtl.constants import (
    BEAT_PAC as S,
)
from ecgtl.constants import (
    BEAT_PVC as V,
)
from ecgtl.constants import (
    BEAT_UNDEFINED as Q,
)
from ecgtl.errors import ConfigError
from ecgtl.signal import detect_beats
from ecgtl.tasks import (
    PRETEXT_TASKS,
    beat,
    beat_counts,
    beat_label,
    complete_beat_range,
    get_task,
    heart_rate,
    heart_rate_bpm,
    heart_rate_label,
    rhythm,
    rhythm_durations,
    rhythm_label,
)
from ecgtl.tasks.heart_rate import HR_BRADYCARDIA, HR_NOISE, HR_NORMAL, HR_TACHYCARDIA

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def one(fn, *args, **kw):
    """Label of a single frame."""
    out = fn(*args, **kw)
    assert out.shape == (1,) and out.dtype == np.int64
    return int(out[0])


def beats(*pairs):
    """(position, class) pairs -> positions, classes."""
    pos = np.array([p for p, _ in pairs], np.int64)
    cls = np.array([c for _, c in pairs], np.uint8)
    return pos, cls


# --------------------------------------------------------------------------- class tables
def test_class_tables():
    assert beat.NUM_CLASSES == 5 and beat.CLASS_NAMES == tuple(BEAT_CLASSES)
    assert rhythm.NUM_CLASSES == 6 and rhythm.CLASS_NAMES == tuple(RHYTHM_CLASSES)
    # the authors' order: _HR_TACHYCARDIA 0, _HR_BRADYCARDIA 1, _HR_NORMAL 2, _HR_NOISE 3
    assert heart_rate.CLASS_NAMES == ("tachycardia", "bradycardia", "normal", "noise")
    assert (HR_TACHYCARDIA, HR_BRADYCARDIA, HR_NORMAL, HR_NOISE) == (0, 1, 2, 3)
    assert heart_rate.NUM_CLASSES == 4
    assert set(PRETEXT_TASKS) == {"beat", "rhythm", "heart_rate", "future"}
    assert {n for n, t in PRETEXT_TASKS.items() if t.is_classification} == {"beat", "rhythm", "heart_rate"}
    assert get_task("heart_rate").class_names == heart_rate.CLASS_NAMES and get_task("future").num_classes == 0
    # beat and rhythm need typed beats; detector beats (CinC records) carry heart rate and future prediction only
    assert {n for n, t in PRETEXT_TASKS.items() if t.needs_annotated_beats} == {"beat", "rhythm"}
    with pytest.raises(ConfigError, match="task must be one of beat, rhythm, heart_rate, future"):
        get_task("qrs")


# --------------------------------------------------------------------------- complete beats
def test_complete_beats_boundaries():
    pos = np.array([99, 100, 150, 200, 201])
    # frame [100, 200]: 100 is the first beat inside (start inclusive) -> not complete; 150 and 200 are
    # (end inclusive: the authors' searchsorted(end, 'right')); 201 lies outside
    lo, hi = complete_beat_range(pos, [100], 100)
    assert pos[lo[0]:hi[0]].tolist() == [150, 200]
    # frame [101, 201]: 150 is now the first beat inside -> complete are 200, 201
    lo, hi = complete_beat_range(pos, [101], 100)
    assert pos[lo[0]:hi[0]].tolist() == [200, 201]
    # frame with one beat or none: no complete beat, lo == hi
    lo, hi = complete_beat_range(pos, [300, 130], 40)
    assert (hi - lo).tolist() == [0, 0]
    # no beats at all
    lo, hi = complete_beat_range(np.zeros(0, np.int64), [0, 5], 10)
    assert (hi - lo).tolist() == [0, 0]


# --------------------------------------------------------------------------- beat rule
def test_beat_one_pvc_among_many_normal():
    pos, cls = beats(*[(100 * i, N) for i in range(20)])
    cls[7] = V
    assert one(beat_label, pos, cls, [0], 2000) == V


def test_beat_high_priority_ties_and_majority():
    # PAC vs PVC tie -> pac (first of pac, aberrated, pvc); aberrated vs PVC tie -> aberrated
    pos, cls = beats((0, N), (100, S), (200, V), (300, N), (400, N))
    assert one(beat_label, pos, cls, [0], 500) == S
    pos, cls = beats((0, N), (100, V), (200, A), (300, N))
    assert one(beat_label, pos, cls, [0], 500) == A
    # the most frequent high-priority class wins over the order
    pos, cls = beats((0, N), (100, S), (200, V), (300, V), (400, N))
    assert one(beat_label, pos, cls, [0], 500) == V
    assert beat_counts(pos, cls, [0], 500).tolist() == [[0, 1, 1, 0, 2]]  # the first beat (at 0) is not counted


def test_beat_low_priority():
    # normal vs undefined tie -> undefined (argmax over [undefined, normal])
    pos, cls = beats((0, N), (100, N), (200, Q))
    assert one(beat_label, pos, cls, [0], 300) == Q
    pos, cls = beats((0, Q), (100, N), (200, N), (300, Q))
    assert one(beat_label, pos, cls, [0], 300) == N
    pos, cls = beats((0, N), (100, Q), (200, Q), (300, N))
    assert one(beat_label, pos, cls, [0], 300) == Q


def test_beat_empty_single_and_first_beat_excluded():
    pos, cls = beats((1000, V), (5000, V))
    assert one(beat_label, pos, cls, [2000], 1000) == Q  # no beat -> undefined
    assert one(beat_label, pos, cls, [500], 1000) == Q  # one beat, not complete -> undefined even if PVC
    pos, cls = beats((1000, V), (1100, N))
    assert one(beat_label, pos, cls, [500], 1000) == N  # the PVC is the first beat inside: not complete
    assert beat_label(np.zeros(0, np.int64), np.zeros(0, np.uint8), [0, 7], 10).tolist() == [Q, Q]


def test_beat_frame_boundaries():
    # PVC exactly at the frame start: the start of the next beat, not counted
    pos, cls = beats((100, V), (150, N), (200, N))
    assert one(beat_label, pos, cls, [100], 100) == N
    # PVC exactly at start + length: complete, counted (authors: end inclusive)
    pos, cls = beats((100, N), (150, N), (200, V))
    assert one(beat_label, pos, cls, [100], 100) == V
    assert one(beat_label, pos, cls, [100], 99) == N  # one sample shorter: the PVC is out
    # the beat before the frame start makes the first beat inside incomplete
    pos, cls = beats((99, N), (120, V), (150, N), (190, N))
    assert one(beat_label, pos, cls, [100], 100) == N


def test_beat_segment_offsets():
    # two segments of 1000 samples; the next segment's first beat sits exactly at this frame's end
    pos, cls = beats((800, N), (900, N), (950, N), (1000, V), (1500, N))
    assert one(beat_label, pos, cls, [900], 100) == V  # without segments the beat at 1000 counts
    assert one(beat_label, pos, cls, [900], 100, segment_offsets=[0, 1000, 2000]) == N
    with pytest.raises(ValueError, match="segment"):
        beat_label(pos, cls, [950], 100, segment_offsets=[0, 1000, 2000])


def test_beat_shapes_and_errors():
    pos, cls = beats((0, N), (100, V), (200, N))
    assert beat_label(pos, cls, np.zeros((2, 3), np.int32), 250).shape == (2, 3)
    assert beat_label(pos, cls, np.zeros(0, np.int64), 250).shape == (0,)
    with pytest.raises(ValueError, match="sorted"):
        beat_label(pos[::-1], cls, [0], 10)
    with pytest.raises(ValueError, match="frame_length"):
        beat_label(pos, cls, [0], 0)
    with pytest.raises(TypeError):
        beat_label(pos, cls, [0.5], 10)
    with pytest.raises(ValueError, match="beat_class"):
        beat_label(pos, np.array([0, 1, 7]), [0], 10)
    with pytest.raises(ValueError, match="shape"):
        beat_label(pos, cls[:2], [0], 10)


# --------------------------------------------------------------------------- rhythm rule
def test_rhythm_short_af_beats_long_nsr():
    pos = np.arange(0, 2100, 100)
    rh = np.full(len(pos), RHYTHM_NSR, np.uint8)
    rh[5] = RHYTHM_AF  # AF for (400, 500]: 100 of 2000 samples
    assert rhythm_durations(pos, rh, [0], 2000).tolist() == [[0, 0, 0, 1900, 100, 0]]
    assert one(rhythm_label, pos, rh, [0], 2000, 250) == RHYTHM_AF


def test_rhythm_partial_spans():
    # frame (1000, 3000]; the labels mark span ends: AF (500, 1500], NSR (1500, 2500], AFL (2500, 3500]
    pos = np.array([500, 1500, 2500, 3500])
    rh = np.array([RHYTHM_NSR, RHYTHM_AF, RHYTHM_NSR, RHYTHM_AFL], np.uint8)
    assert rhythm_durations(pos, rh, [1000], 2000).tolist() == [[0, 0, 0, 1000, 500, 500]]
    assert one(rhythm_label, pos, rh, [1000], 2000, 250) == RHYTHM_AF  # AF vs AFL tie -> af


def test_rhythm_high_priority_order():
    pos = np.array([0, 100, 200, 300, 400])
    # undefined vs AF tie -> undefined (argmax over [undefined, af, afl]); undefined beats NSR
    rh = np.array([RHYTHM_NSR, RHYTHM_UNDEFINED, RHYTHM_AF, RHYTHM_NSR, RHYTHM_NSR], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_UNDEFINED
    # AF longer than undefined
    rh = np.array([RHYTHM_NSR, RHYTHM_UNDEFINED, RHYTHM_AF, RHYTHM_AF, RHYTHM_NSR], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_AF
    # AFL longest
    rh = np.array([RHYTHM_AFL, RHYTHM_AFL, RHYTHM_AF, RHYTHM_AFL, RHYTHM_NSR], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_AFL


def test_rhythm_low_priority_order():
    pos = np.array([0, 100, 200, 300, 400])
    rh = np.array([0, RHYTHM_NOISE, RHYTHM_NOISE, RHYTHM_NSR, RHYTHM_NSR], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_NOISE  # tie noise vs nsr -> noise
    rh = np.array([0, RHYTHM_END, RHYTHM_NOISE, RHYTHM_NSR, RHYTHM_NSR], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_NSR
    rh = np.array([0, RHYTHM_END, RHYTHM_END, RHYTHM_NOISE, RHYTHM_NOISE], np.uint8)
    assert one(rhythm_label, pos, rh, [0], 400, 250) == RHYTHM_END  # tie end vs noise -> end


def test_rhythm_frame_boundaries():
    # a beat exactly at the frame start contributes nothing
    pos = np.array([1000, 2000])
    rh = np.array([RHYTHM_AF, RHYTHM_NSR], np.uint8)
    assert rhythm_durations(pos, rh, [1000], 1000).tolist() == [[0, 0, 0, 1000, 0, 0]]
    # a beat exactly at the frame end closes the frame; the next beat does not count
    pos = np.array([1500, 2000, 2500])
    rh = np.array([RHYTHM_NSR, RHYTHM_NOISE, RHYTHM_AF], np.uint8)
    assert rhythm_durations(pos, rh, [1000], 1000).tolist() == [[0, 0, 500, 500, 0, 0]]
    assert one(rhythm_label, pos, rh, [1000], 1000, 250) == RHYTHM_NOISE  # tie noise vs nsr -> noise
    assert one(rhythm_label, pos, rh, [1000], 1001, 250) == RHYTHM_AF  # one sample more


def test_rhythm_empty_frames_and_tails():
    # no beat inside: the whole frame takes the rhythm of the next beat
    pos = np.array([0, 5000])
    rh = np.array([RHYTHM_NSR, RHYTHM_AF], np.uint8)
    assert rhythm_durations(pos, rh, [1000], 2000).tolist() == [[0, 0, 0, 0, 2000, 0]]
    # no beat after the last one: its rhythm covers the tail up to the frame end (authors' append=end)
    pos = np.array([1100, 1200])
    rh = np.array([RHYTHM_NOISE, RHYTHM_NSR], np.uint8)
    assert rhythm_durations(pos, rh, [1000], 2000).tolist() == [[0, 0, 100, 1900, 0, 0]]
    assert one(rhythm_label, pos, rh, [1000], 2000, 250) == RHYTHM_NSR
    pos = np.array([1100])
    assert rhythm_durations(pos, rh[:1], [1000], 2000).tolist() == [[0, 0, 2000, 0, 0, 0]]
    # no beat after the frame start at all: no rhythm -> undefined
    pos = np.array([0, 100])
    rh = np.array([RHYTHM_NSR, RHYTHM_NSR], np.uint8)
    assert rhythm_durations(pos, rh, [100, 500], 50).tolist() == [[0] * 6] * 2
    assert rhythm_label(pos, rh, [100, 500], 50, 250).tolist() == [RHYTHM_UNDEFINED] * 2
    assert rhythm_label(np.zeros(0, np.int64), np.zeros(0, np.uint8), [0], 50, 250).tolist() == [RHYTHM_UNDEFINED]


def test_rhythm_segment_offsets():
    # segments [0, 1000) and [1000, 2000); the next segment's first beat (AF) would label the tail
    pos = np.array([700, 800, 1100, 1500])
    rh = np.array([RHYTHM_NSR, RHYTHM_NSR, RHYTHM_AF, RHYTHM_AF], np.uint8)
    assert one(rhythm_label, pos, rh, [750], 250, 250) == RHYTHM_AF
    assert rhythm_durations(pos, rh, [750], 250, segment_offsets=[0, 1000, 2000]).tolist() == [[0, 0, 0, 250, 0, 0]]
    assert one(rhythm_label, pos, rh, [750], 250, 250, segment_offsets=[0, 1000, 2000]) == RHYTHM_NSR
    # a frame of the first segment after its last beat: no rhythm in its own segment
    assert one(rhythm_label, pos, rh, [800], 200, 250, segment_offsets=[0, 1000, 2000]) == RHYTHM_UNDEFINED


# --------------------------------------------------------------------------- heart-rate rule
def regular(rr, n=20, start=0):
    return start + rr * np.arange(n)


@pytest.mark.parametrize("rr, fs, expected", [
    (250, 250, HR_NORMAL),        # exactly 60 bpm -> normal (bpm < 60 is bradycardia)
    (251, 250, HR_BRADYCARDIA),   # 59.76 bpm
    (150, 250, HR_NORMAL),        # exactly 100 bpm -> normal (bpm <= 100)
    (149, 250, HR_TACHYCARDIA),   # 100.67 bpm
    (360, 360, HR_NORMAL),        # 60 bpm at 360 Hz
    (216, 360, HR_NORMAL),        # 100 bpm at 360 Hz
    (500, 250, HR_BRADYCARDIA),   # 30 bpm
    (100, 250, HR_TACHYCARDIA),   # 150 bpm
])
def test_heart_rate_thresholds(rr, fs, expected):
    pos = regular(rr, 30)
    assert one(heart_rate_label, pos, [0], 20 * rr, fs) == expected
    assert heart_rate_bpm(pos, [0], 20 * rr, fs)[0] == pytest.approx(60 * fs / rr, rel=1e-12)


def test_heart_rate_exact_100_where_float_mean_is_not():
    # 11 complete beats 150 samples apart at 250 Hz: the authors' mean of diff / fs gives 100.00000000000003
    pos = regular(150, 12)
    lo, hi = complete_beat_range(pos, [0], 11 * 150)
    assert hi[0] - lo[0] == 11
    assert heart_rate_bpm(pos, [0], 11 * 150, 250)[0] == 100.0
    assert one(heart_rate_label, pos, [0], 11 * 150, 250) == HR_NORMAL


def test_heart_rate_noise_and_first_rr_unused():
    pos = np.array([20, 50, 350, 650])
    # 3 beats in [10, 400]: complete 50, 350 -> 2 complete beats, one RR of 300 -> 50 bpm
    assert one(heart_rate_label, pos, [10], 390, 250) == HR_BRADYCARDIA
    # 2 beats in the frame -> one complete beat -> noise; 1 or 0 beats -> noise
    assert heart_rate_label(pos, [10, 30, 400, 700], 300, 250).tolist() == [HR_NOISE] * 4
    assert np.isnan(heart_rate_bpm(pos, [10], 300, 250)).all()
    # complete beats 50, 350, 650: RR 300 -> 50 bpm; the RR 20 -> 50 (first beat inside) is not used
    assert one(heart_rate_label, pos, [10], 640, 250) == HR_BRADYCARDIA
    assert heart_rate_label(np.zeros(0, np.int64), [0], 100, 250).tolist() == [HR_NOISE]


def test_heart_rate_zero_rr_and_errors():
    pos = np.array([0, 10, 10, 10])
    assert one(heart_rate_label, pos, [0], 20, 250) == HR_TACHYCARDIA  # RR 0: infinite bpm
    with pytest.raises(ValueError, match="fs"):
        heart_rate_label(pos, [0], 20, 0)


# --------------------------------------------------------------------------- per-frame reference loops
def ref_complete(pos, start, end):
    """Indices k >= 1 with start <= pos[k-1] and pos[k] <= end."""
    return [k for k in range(1, len(pos)) if pos[k - 1] >= start and pos[k] <= end]


def ref_pick(amount, high, low, empty):
    for group in (high, low):
        best = None
        for c in group:
            if amount[c] > 0 and (best is None or amount[c] > amount[best]):
                best = c
        if best is not None:
            return best
    return empty


def ref_beat(pos, cls, start, length):
    counts = [0] * 5
    for k in ref_complete(pos, start, start + length):
        counts[cls[k]] += 1
    return ref_pick(counts, (S, A, V), (Q, N), Q)


def ref_rhythm_durations(pos, rh, start, length):
    """Sample by sample: sample t in (start, end] has the rhythm of the first beat at or after t,
    or of the last beat when none follows; no beat after start -> no rhythm."""
    if not any(p > start for p in pos):
        return [0] * 6
    dur = [0] * 6
    for t in range(start + 1, start + length + 1):
        k = next((i for i, p in enumerate(pos) if p >= t), len(pos) - 1)
        dur[rh[k]] += 1
    return dur


def ref_rhythm(pos, rh, start, length):
    dur = ref_rhythm_durations(pos, rh, start, length)
    return ref_pick(dur, (RHYTHM_UNDEFINED, RHYTHM_AF, RHYTHM_AFL), (RHYTHM_END, RHYTHM_NOISE, RHYTHM_NSR), RHYTHM_UNDEFINED)


def ref_heart_rate(pos, start, length, fs):
    ks = ref_complete(pos, start, start + length)
    if len(ks) < 2:
        return HR_NOISE
    span = pos[ks[-1]] - pos[ks[0]]
    if span == 0:
        return HR_TACHYCARDIA
    bpm = Fraction(60 * fs * (len(ks) - 1), span)  # exact
    return HR_BRADYCARDIA if bpm < 60 else HR_NORMAL if bpm <= 100 else HR_TACHYCARDIA


def random_annotations(rng, n_beats, rr_choices, skew):
    gaps = rng.choice(rr_choices, n_beats)
    pos = np.cumsum(gaps) + rng.integers(0, 50)
    p_beat = np.array([1, skew, 1, 1, 1], float)
    p_rh = np.array([1, 1, 1, skew, 1, 1], float)
    cls = rng.choice(5, n_beats, p=p_beat / p_beat.sum()).astype(np.uint8)
    rh = np.repeat(rng.choice(6, n_beats, p=p_rh / p_rh.sum()), rng.integers(1, 6, n_beats))[:n_beats].astype(np.uint8)
    return pos.astype(np.int64), cls, rh


def random_frames(rng, pos, length, n_frames):
    """Random starts, plus starts and ends exactly on beats (the boundary cases)."""
    lo, hi = int(pos[0]) - length - 20, int(pos[-1]) + 20
    a = rng.integers(lo, hi, n_frames // 2)
    b = rng.choice(pos, n_frames // 4)
    c = rng.choice(pos, n_frames - len(a) - len(b)) - length
    return np.concatenate([a, b, c])


@pytest.mark.parametrize("seed, length, rr_choices, skew, fs, min_classes", [
    # short frames, duplicate positions (RR 0); at 10 Hz an RR of 10 / 6 samples is exactly 60 / 100 bpm
    (0, 40, [0, 3, 5, 6, 8, 10, 12, 15], 3.0, 10, (4, 5, 4)),
    (1, 60, [7, 12, 13, 20, 30], 1.0, 12, (4, 5, 4)),  # balanced classes: many ties
    (2, 500, [60, 100, 149, 150, 250, 251], 20.0, 250, (4, 4, 4)),  # mostly normal; RR around 100 and 60 bpm
    (3, 1, [1, 2, 3], 2.0, 360, (1, 5, 1)),  # one-sample frames: at most one complete beat
])
def test_vectorised_equals_per_frame_reference(seed, length, rr_choices, skew, fs, min_classes):
    rng = np.random.default_rng(seed)
    pos, cls, rh = random_annotations(rng, 400, rr_choices, skew)
    starts = random_frames(rng, pos, length, 1500)
    got_b = beat_label(pos, cls, starts, length)
    got_r = rhythm_label(pos, rh, starts, length, fs)
    got_h = heart_rate_label(pos, starts, length, fs)
    got_d = rhythm_durations(pos, rh, starts, length)
    p, c, r = pos.tolist(), cls.tolist(), rh.tolist()
    for i, s in enumerate(starts.tolist()):
        # a window of beats keeps the loops short: one beat before start - 1, all up to end + 1 and one
        # beat after; the rules never look further
        lo = max(int(np.searchsorted(pos, s - 1)) - 1, 0)
        hi = int(np.searchsorted(pos, s + length + 1, "right")) + 1
        sp, sc, sr = p[lo:hi], c[lo:hi], r[lo:hi]
        assert got_b[i] == ref_beat(sp, sc, s, length), (i, s)
        assert got_h[i] == ref_heart_rate(sp, s, length, fs), (i, s)
        assert got_d[i].tolist() == ref_rhythm_durations(sp, sr, s, length), (i, s)
        assert got_r[i] == ref_rhythm(sp, sr, s, length), (i, s)
    # the random frames reach the branches of every rule (classes seen per task)
    seen = tuple(len(np.unique(g)) for g in (got_b, got_r, got_h))
    assert all(a >= b for a, b in zip(seen, min_classes)), seen


def test_vectorised_with_segments_equals_per_segment_reference():
    rng = np.random.default_rng(7)
    length, fs = 50, 250
    seg_len = [3000, 2000, 4000]
    offsets = np.cumsum([0] + seg_len)
    parts = []
    for s, n in enumerate(seg_len):
        p = np.unique(rng.integers(0, n, n // 15))
        p = np.concatenate([[0], p, [n - 1]]) if s == 1 else p  # beats on the segment edges
        parts.append(np.unique(p))
    pos = np.concatenate([p + o for p, o in zip(parts, offsets)])
    cls = rng.integers(0, 5, len(pos)).astype(np.uint8)
    rh = rng.integers(0, 6, len(pos)).astype(np.uint8)
    seg = rng.integers(0, 3, 2000)
    starts = offsets[seg] + rng.integers(0, np.array(seg_len)[seg] - length + 1)
    kw = {"segment_offsets": offsets}
    got_b, got_r = beat_label(pos, cls, starts, length, **kw), rhythm_label(pos, rh, starts, length, fs, **kw)
    got_h = heart_rate_label(pos, starts, length, fs, **kw)
    for i, (s, g) in enumerate(zip(starts.tolist(), seg.tolist())):
        m = (pos >= offsets[g]) & (pos < offsets[g + 1])
        sp, sc, sr = (pos[m] - offsets[g]).tolist(), cls[m].tolist(), rh[m].tolist()
        local = s - int(offsets[g])
        assert got_b[i] == ref_beat(sp, sc, local, length)
        assert got_r[i] == ref_rhythm(sp, sr, local, length)
        assert got_h[i] == ref_heart_rate(sp, local, length, fs)


@pytest.mark.parametrize("seed, length", [(0, 40), (1, 500), (2, 1)])
def test_unchecked_rules_equal_the_checked_ones_on_the_stores_dtypes(seed, length):
    """What the sampler labels with (registry rules: ``*_unchecked`` on int32 positions, uint8 classes, only the beats
    of each frame gathered) equals the checked public functions, with and without segments (cuts on beats too)."""
    rng = np.random.default_rng(seed)
    pos, cls, rh = random_annotations(rng, 3000, [0, 3, 5, 7, 60, 150, 251], 3.0)
    total = int(pos[-1]) + 100
    offsets = np.unique(np.concatenate([[0], rng.choice(pos[1:-1], 3, replace=False), rng.integers(1, total, 2), [total]]))
    lens = np.diff(offsets)
    seg = rng.integers(len(lens), size=3000)
    seg = seg[lens[seg] >= length]
    starts = offsets[seg] + rng.integers(0, lens[seg] - length + 1)
    on = np.concatenate([rng.choice(pos, 400), rng.choice(pos, 400) - length, offsets[:-1], offsets[1:] - length])
    k = np.searchsorted(offsets, on, side="right") - 1
    on = on[(k >= 0) & (k < len(lens)) & (on + length <= offsets[np.minimum(k + 1, len(lens))])]
    starts = np.concatenate([starts, on])
    p32 = pos.astype(np.int32)
    fs = 250
    for off in (None, offsets):
        kw = {"segment_offsets": off}
        s = starts if off is not None else random_frames(rng, pos, length, 3000)
        assert np.array_equal(beat.beat_label_unchecked(p32, cls, s, length, **kw), beat_label(pos, cls, s, length, **kw))
        assert np.array_equal(rhythm.rhythm_label_unchecked(p32, rh, s, length, fs, **kw), rhythm_label(pos, rh, s, length, fs, **kw))
        assert np.array_equal(heart_rate.heart_rate_label_unchecked(p32, s, length, fs, **kw), heart_rate_label(pos, s, length, fs, **kw))
        # the registry's rules on a patient-like object are these
        track = type("Track", (), {"beat_sample": p32, "beat_class": cls, "rhythm": rh, "fs": fs,
                                   "segment_offsets": off if off is not None else np.array([min(0, s.min()), max(total, s.max() + length)])})
        for name, want in (("beat", beat_label(pos, cls, s, length, segment_offsets=track.segment_offsets)),
                           ("rhythm", rhythm_label(pos, rh, s, length, fs, segment_offsets=track.segment_offsets)),
                           ("heart_rate", heart_rate_label(pos, s, length, fs, segment_offsets=track.segment_offsets))):
            assert np.array_equal(PRETEXT_TASKS[name].label_frames(track, s, length), want), name


def test_unchecked_rules_near_the_int32_limit_and_their_checks():
    """Frame ends past the int32 range of the positions (searched without converting the array) and what is still checked."""
    top = 2**31 - 1
    pos = np.array([top - 700, top - 500, top - 300, top - 200, top - 100, top - 1], np.int64)
    cls = np.array([N, N, V, N, S, N], np.uint8)
    rh = np.array([RHYTHM_NSR, RHYTHM_NSR, RHYTHM_AF, RHYTHM_AF, RHYTHM_NSR, RHYTHM_NSR], np.uint8)
    starts = np.array([top - 800, top - 650, top - 350, top - 250, top + 10, -5], np.int64)
    for length in (100, 400, 1000):
        p32 = pos.astype(np.int32)
        assert np.array_equal(beat.beat_label_unchecked(p32, cls, starts, length), beat_label(pos, cls, starts, length))
        assert np.array_equal(rhythm.rhythm_label_unchecked(p32, rh, starts, length), rhythm_label(pos, rh, starts, length))
        assert np.array_equal(heart_rate.heart_rate_label_unchecked(p32, starts, length, 250),
                              heart_rate_label(pos, starts, length, 250))
    # the search behind them, on positions at the very extremes of their dtype and values beyond
    for dtype in (np.int8, np.int16, np.int32, np.uint16):
        info = np.iinfo(dtype)
        p = np.array([info.min, info.min, 0 if info.min < 0 else 7, info.max - 1, info.max, info.max], dtype)
        values = np.array([-(2**40), int(info.min) - 1, info.min, 0, 5, info.max, int(info.max) + 1, 2**40], np.int64)
        for side in ("left", "right"):
            assert np.array_equal(beat._search(p, values, side), np.searchsorted(p.astype(np.int64), values, side)), (dtype, side)
    # the classes read are checked; the rest of the arrays is not read at all
    bad = cls.copy()
    bad[2] = 9
    with pytest.raises(ValueError, match="beat_class must lie in"):
        beat.beat_label_unchecked(pos, bad, [top - 650], 500)
    assert beat.beat_label_unchecked(pos, bad, [top - 200], 199).tolist() == [S]
    with pytest.raises(ValueError, match="shape of beat_sample"):
        beat.beat_label_unchecked(pos, cls[:-1], [0], 10)
    with pytest.raises(ValueError, match="1-D integer"):
        rhythm.rhythm_label_unchecked(pos.astype(float), rh, [0], 10)


# --------------------------------------------------------------------------- QRS detection
def test_detect_beats_degenerate_inputs():
    assert detect_beats(np.zeros(0), 250).tolist() == []
    assert detect_beats(np.zeros(3000), 250).tolist() == []
    assert detect_beats(np.full(3000, np.nan), 250).tolist() == []
    with pytest.raises(ValueError):
        detect_beats(np.zeros((2, 100)), 250)
    with pytest.raises(ValueError):
        detect_beats(np.zeros(100), 0)


@pytest.fixture(scope="module")
def mitdb_100(tmp_path_factory):
    zpath = SHARED_DATA / "mitdb-1.0.0.zip"
    if not zpath.is_file():
        pytest.skip(f"real data not found: {zpath} (the shared data folder ../shared/data is absent)")
    import wfdb

    folder = tmp_path_factory.mktemp("mitdb100")
    with zipfile.ZipFile(zpath) as zf:
        for ext in ("hea", "dat", "atr"):
            (folder / f"100.{ext}").write_bytes(zf.read(f"mitdb/1.0.0/100.{ext}"))
    rec = wfdb.rdrecord(str(folder / "100"))
    ann = wfdb.rdann(str(folder / "100"), "atr")
    is_beat = np.isin(ann.symbol, list("NLRBAaJSVrFejnE/fQ?"))
    return rec.p_signal[:, 0].astype(np.float64), float(rec.fs), np.asarray(ann.sample[is_beat], np.int64)


def test_detect_beats_mitdb_100(mitdb_100, capsys):
    signal, fs, ref = mitdb_100
    det = detect_beats(signal, fs)
    assert capsys.readouterr().out == ""  # quiet
    assert det.dtype == np.int64 and np.all(np.diff(det) > 0)
    tol = int(round(0.150 * fs))
    idx = np.clip(np.searchsorted(det, ref), 1, len(det) - 1)
    dist = np.minimum(np.abs(det[idx - 1] - ref), np.abs(det[idx] - ref))
    sensitivity = np.mean(dist <= tol)
    assert sensitivity > 0.95, sensitivity
    assert abs(len(det) - len(ref)) <= 0.05 * len(ref)  # few false detections
    # heart-rate labels of 10 s frames from detected beats agree with those from the reference beats
    starts = np.arange(0, len(signal) - 3600, 3600)
    agree = np.mean(heart_rate_label(det, starts, 3600, fs) == heart_rate_label(ref, starts, 3600, fs))
    assert agree > 0.95, agree
