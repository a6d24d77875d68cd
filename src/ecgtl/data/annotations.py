"""Beat and rhythm annotations in the classes of Icentia11k, from any annotated WFDB database.

Every reader returns a :class:`BeatAnnotations`: one row per beat with its
position (samples), its beat class and the rhythm it lies in (indices into
:data:`~ecgtl.constants.BEAT_CLASSES` and :data:`~ecgtl.constants.RHYTHM_CLASSES`).
That is the form of the Icentia11k torrent label files (``btype``/``rtype``).

How each database's symbols map to those classes is a :class:`DatabaseProfile`:

* **Icentia11k** (PhysioNet WFDB release): beats ``Q N S a V`` -> undefined,
  normal, PAC, aberrated, PVC. Rhythm comes as *intervals*: a ``+`` annotation
  with aux ``(N``, ``(AFIB`` or ``(AFL`` opens one, ``)`` closes it, ``(N)``
  opens and closes at the same sample. A beat inside ``[open, close]``
  (inclusive at both ends) takes that rhythm; a beat outside every interval is
  *noise*. On patient 0 this reproduces the torrent's per-beat rhythm for all
  282,712 beats (the inclusive ends and the ``(N)`` case are what make it exact).
* **MIT-BIH Arrhythmia, SVDB** (and any database with MIT-BIH symbols): rhythm
  comes as *changes*: aux ``(N``, ``(AFIB``, ``(AFL``, ... holds from its sample
  until the next change. Beat symbols follow the AAMI grouping:

  =========  ===================================  ======================
  class      MIT-BIH symbols                      meaning
  =========  ===================================  ======================
  normal     ``N L R e j``                        normal, bundle-branch block, atrial/nodal escape
  pac        ``A J S``                            atrial, nodal, supraventricular premature
  aberrated  ``a``                                aberrated atrial premature
  pvc        ``V``                                premature ventricular contraction
  undefined  ``E F / f Q ? r n B``                escape, fusion, paced, unclassifiable
  =========  ===================================  ======================

  Rhythms other than ``(N``, ``(AFIB``, ``(AFL`` (``(B``, ``(T``, ``(VT``,
  ``(SBR``, ...) have no Icentia class and map to *undefined*; beats before the
  first rhythm annotation are *noise* (unlabelled), as outside Icentia intervals.
* **AFTDB**: beats in ``.qrs`` are detector marks without type -> *undefined*;
  every record is in AF, so every beat's rhythm is *AF*.

Non-beat annotations (``+ ~ | x [ ] !`` ...) are not beats and are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ecgtl.constants import (
    BEAT_ABERRATED,
    BEAT_CLASSES,
    BEAT_NORMAL,
    BEAT_PAC,
    BEAT_PVC,
    BEAT_UNDEFINED,
    ICENTIA_BEAT_SYMBOLS,
    RHYTHM_AF,
    RHYTHM_AFL,
    RHYTHM_CLASSES,
    RHYTHM_NOISE,
    RHYTHM_NSR,
    RHYTHM_UNDEFINED,
)
from ecgtl.data.wfdb_io import RawAnnotations
from ecgtl.errors import DataError

# Every WFDB beat annotation code (wfdb's "is_qrs" set); anything else is not a beat.
WFDB_BEAT_SYMBOLS = frozenset("N L R B A a J S V r F e j n E / f Q ?".split())

MITDB_BEAT_MAP: dict[str, int] = {
    **{s: BEAT_NORMAL for s in "N L R e j".split()},
    **{s: BEAT_PAC for s in "A J S".split()},
    "a": BEAT_ABERRATED,
    "V": BEAT_PVC,
    **{s: BEAT_UNDEFINED for s in "E F / f Q ? r n B".split()},
}

RHYTHM_NOTES: dict[str, int] = {"(N": RHYTHM_NSR, "(AFIB": RHYTHM_AF, "(AFL": RHYTHM_AFL}


@dataclass(frozen=True)
class BeatAnnotations:
    """Beats of one recording segment, in Icentia11k classes.

    ``sample``: int64 beat positions in samples (sorted); ``beat_class``: uint8
    index into BEAT_CLASSES; ``rhythm``: uint8 index into RHYTHM_CLASSES of the
    rhythm the beat lies in.
    """

    sample: np.ndarray
    beat_class: np.ndarray
    rhythm: np.ndarray

    def __post_init__(self):
        n = len(self.sample)
        if len(self.beat_class) != n or len(self.rhythm) != n:
            raise ValueError("sample, beat_class and rhythm must have the same length")

    def __len__(self) -> int:
        return len(self.sample)

    def beat_counts(self) -> np.ndarray:
        return np.bincount(self.beat_class, minlength=len(BEAT_CLASSES))

    def rhythm_counts(self) -> np.ndarray:
        return np.bincount(self.rhythm, minlength=len(RHYTHM_CLASSES))

    def rescaled(self, factor: float, length: int | None = None) -> "BeatAnnotations":
        """Positions multiplied by ``factor`` (new_fs / old_fs) and rounded; beats past ``length`` dropped."""
        sample = np.rint(self.sample * factor).astype(np.int64)
        keep = np.ones(len(sample), bool) if length is None else (sample >= 0) & (sample < length)
        return BeatAnnotations(sample[keep], self.beat_class[keep], self.rhythm[keep])

    @staticmethod
    def empty() -> "BeatAnnotations":
        return BeatAnnotations(np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint8))


@dataclass(frozen=True)
class DatabaseProfile:
    """How one database's annotations map to the Icentia classes (see the module docstring)."""

    name: str
    annotator: str = "atr"
    beat_map: Mapping[str, int] = field(default_factory=lambda: dict(MITDB_BEAT_MAP))
    rhythm_mode: str = "changes"  # "changes" (MIT-BIH), "intervals" (Icentia11k) or "constant"
    constant_rhythm: int = RHYTHM_NOISE  # rhythm of every beat when rhythm_mode == "constant"
    channel: int = 0  # which signal channel to keep

    def decode(self, ann: RawAnnotations) -> BeatAnnotations:
        """Turn raw WFDB annotations into :class:`BeatAnnotations` (positions unchanged)."""
        symbol = ann.symbol
        is_beat = np.isin(symbol, list(WFDB_BEAT_SYMBOLS))
        sample = ann.sample[is_beat]
        beat_class = np.array([self.beat_map.get(s, BEAT_UNDEFINED) for s in symbol[is_beat]], dtype=np.uint8)
        if self.rhythm_mode == "constant":
            rhythm = np.full(len(sample), self.constant_rhythm, np.uint8)
        else:
            notes = (symbol == "+") & (ann.aux_note != "")
            note_sample, note_text = ann.sample[notes], ann.aux_note[notes]
            if self.rhythm_mode == "intervals":
                rhythm = _rhythm_from_intervals(sample, note_sample, note_text)
            elif self.rhythm_mode == "changes":
                rhythm = _rhythm_from_changes(sample, note_sample, note_text)
            else:
                raise ValueError(f"unknown rhythm_mode {self.rhythm_mode!r}")
        return BeatAnnotations(sample.astype(np.int64), beat_class, rhythm)


def _note_class(text: str) -> int:
    """Rhythm class of an aux note like ``(AFIB``; rhythms without an Icentia class are undefined."""
    return RHYTHM_NOTES.get(text.rstrip(")").rstrip("\x00").strip(), RHYTHM_UNDEFINED)


def _rhythm_from_intervals(beats: np.ndarray, note_sample: np.ndarray, note_text: np.ndarray) -> np.ndarray:
    rhythm = np.full(len(beats), RHYTHM_NOISE, np.uint8)
    open_at, open_cls = None, None
    spans: list[tuple[int, int, int]] = []
    for pos, text in zip(note_sample.tolist(), note_text.tolist()):
        text = text.strip()
        if text.startswith("("):
            if open_at is not None:  # an unclosed interval ends where the next opens
                spans.append((open_at, pos, open_cls))
            cls = _note_class(text)
            if text.endswith(")"):  # "(N)": opens and closes at this sample
                spans.append((pos, pos, cls))
                open_at = None
            else:
                open_at, open_cls = pos, cls
        elif text == ")" and open_at is not None:
            spans.append((open_at, pos, open_cls))
            open_at = None
    if open_at is not None:
        spans.append((open_at, np.iinfo(np.int64).max, open_cls))
    for start, end, cls in spans:
        lo, hi = np.searchsorted(beats, start, "left"), np.searchsorted(beats, end, "right")
        rhythm[lo:hi] = cls
    return rhythm


def _rhythm_from_changes(beats: np.ndarray, note_sample: np.ndarray, note_text: np.ndarray) -> np.ndarray:
    rhythm = np.full(len(beats), RHYTHM_NOISE, np.uint8)
    keep = np.array([t.strip().startswith("(") for t in note_text], bool)
    note_sample, note_text = note_sample[keep], note_text[keep]
    if len(note_sample) == 0:
        return rhythm
    classes = np.array([_note_class(t.strip()) for t in note_text], np.uint8)
    # index of the last change at or before each beat (-1: before the first change)
    idx = np.searchsorted(note_sample, beats, side="right") - 1
    has = idx >= 0
    rhythm[has] = classes[idx[has]]
    return rhythm


ICENTIA11K = DatabaseProfile("icentia11k", beat_map=dict(ICENTIA_BEAT_SYMBOLS), rhythm_mode="intervals")
MITDB = DatabaseProfile("mitdb")
SVDB = DatabaseProfile("svdb")
AFTDB = DatabaseProfile("aftdb", annotator="qrs", beat_map={}, rhythm_mode="constant", constant_rhythm=RHYTHM_AF)

PROFILES: dict[str, DatabaseProfile] = {p.name: p for p in (ICENTIA11K, MITDB, SVDB, AFTDB)}


def torrent_labels_to_beats(entry: Mapping, path: str = "") -> BeatAnnotations:
    """Decode one segment of a torrent label file (``{'btype': [5 arrays], 'rtype': [6 arrays]}``).

    ``btype[c]`` holds the positions of the beats of class c, ``rtype[c]`` the
    positions of the beats lying in rhythm c. A beat missing from every
    ``rtype`` array is *noise*, as outside the WFDB intervals.
    """
    try:
        btype, rtype = entry["btype"], entry["rtype"]
    except (KeyError, TypeError):
        raise DataError(path, "torrent label entry lacks 'btype'/'rtype'") from None
    if len(btype) != len(BEAT_CLASSES) or len(rtype) != len(RHYTHM_CLASSES):
        raise DataError(path, f"expected {len(BEAT_CLASSES)} btype and {len(RHYTHM_CLASSES)} rtype arrays, "
                              f"got {len(btype)} and {len(rtype)}")
    pos = np.concatenate([np.asarray(a, np.int64).ravel() for a in btype])
    cls = np.concatenate([np.full(np.size(a), c, np.uint8) for c, a in enumerate(btype)])
    order = np.argsort(pos, kind="stable")
    pos, cls = pos[order], cls[order]
    rhythm = np.full(len(pos), RHYTHM_NOISE, np.uint8)
    for c, a in enumerate(rtype):
        a = np.asarray(a, np.int64).ravel()
        idx = np.searchsorted(pos, a)
        ok = (idx < len(pos)) & (pos[np.minimum(idx, len(pos) - 1)] == a)
        rhythm[idx[ok]] = c
    return BeatAnnotations(pos, cls, rhythm)
