"""The registry of pretext tasks: one entry per task, read by the config, the sampler and ``ecgtl pretrain``.

A :class:`PretextTask` says what a task is made of: its classes (none for future
prediction, which needs no frame labels), the rule that labels frames from a patient's
beats, and whether it needs annotated beats (beat types, rhythm) or only beat positions
(which a QRS detector gives for unannotated ECG such as the CinC 2017 records).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ecgtl.errors import ConfigError
from ecgtl.tasks import beat, heart_rate, rhythm

#: Label of a frame for a task without frame labels (future prediction).
NO_LABEL = -1


class BeatTrack(Protocol):
    """What a label rule reads of one patient (e.g. :class:`ecgtl.data.store.StoredPatient`).

    Positions in samples from the patient's first sample, sorted; ``fs`` in Hz; ``segment_offsets``
    the segment start samples plus the total length. The label rules trust these arrays
    (no O(n_beats) checks; see :mod:`ecgtl.tasks.beat`) and read them only around the frames.
    """

    beat_sample: np.ndarray
    beat_class: np.ndarray
    rhythm: np.ndarray
    fs: float
    segment_offsets: np.ndarray


#: ``label_frames(patient, frame_starts, frame_samples) -> int64 labels``, one per frame start.
LabelRule = Callable[[BeatTrack, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class PretextTask:
    name: str
    description: str
    class_names: tuple[str, ...]  # () for a task without frame labels
    label_rule: LabelRule | None  # None: frames carry NO_LABEL
    needs_annotated_beats: bool  # beat types / rhythm; False: detected beat positions suffice

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_classification(self) -> bool:
        return self.label_rule is not None

    def label_frames(self, patient: BeatTrack, frame_starts: np.ndarray, frame_samples: int) -> np.ndarray:
        """One int64 label per frame start (``NO_LABEL`` for a task without labels)."""
        if self.label_rule is None:
            return np.full(len(frame_starts), NO_LABEL, np.int64)
        return self.label_rule(patient, frame_starts, frame_samples)


# The rules read a patient's arrays unchecked (the store checks them when it writes them: sorted positions,
# classes in range) and only around the frames: the cost of labelling a patient's frames does not grow with
# its length, and of memory-mapped arrays only the pages near the frames are read.
def _beat(p: BeatTrack, starts: np.ndarray, length: int) -> np.ndarray:
    return beat.beat_label_unchecked(p.beat_sample, p.beat_class, starts, length, segment_offsets=p.segment_offsets)


def _rhythm(p: BeatTrack, starts: np.ndarray, length: int) -> np.ndarray:
    return rhythm.rhythm_label_unchecked(p.beat_sample, p.rhythm, starts, length, p.fs, segment_offsets=p.segment_offsets)


def _heart_rate(p: BeatTrack, starts: np.ndarray, length: int) -> np.ndarray:
    return heart_rate.heart_rate_label_unchecked(p.beat_sample, starts, length, p.fs, segment_offsets=p.segment_offsets)


PRETEXT_TASKS: dict[str, PretextTask] = {t.name: t for t in (
    PretextTask("beat", "most frequent abnormal beat type in the frame (else normal/undefined)",
                beat.CLASS_NAMES, _beat, needs_annotated_beats=True),
    PretextTask("rhythm", "rhythm class of the frame (noise, NSR, AF, flutter by duration)",
                rhythm.CLASS_NAMES, _rhythm, needs_annotated_beats=True),
    PretextTask("heart_rate", "tachycardia / bradycardia / normal / noise from the mean RR interval",
                heart_rate.CLASS_NAMES, _heart_rate, needs_annotated_beats=False),
    PretextTask("future", "contrastive prediction of the next frame from the context frames "
                "(the model: ecgtl.models.future_prediction)", (), None, needs_annotated_beats=False),
)}


def get_task(name: str) -> PretextTask:
    """The registered task ``name``; :class:`ConfigError` naming the known tasks otherwise."""
    try:
        return PRETEXT_TASKS[name]
    except KeyError:
        raise ConfigError(f"task must be one of {', '.join(PRETEXT_TASKS)}, got {name!r}") from None
