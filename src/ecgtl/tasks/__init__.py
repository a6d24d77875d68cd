"""Label rules of the classification pretext tasks, vectorised over many frames.

Each task module exposes ``NUM_CLASSES``, ``CLASS_NAMES`` and a label function
taking sorted beat positions (samples), frame starts (samples, any shape) and
one frame length (samples), returning one int64 label per frame:

* :func:`beat_label` ``(beat_sample, beat_class, frame_start, frame_length)``
* :func:`rhythm_label` ``(beat_sample, rhythm, frame_start, frame_length, fs)``
* :func:`heart_rate_label` ``(beat_sample, frame_start, frame_length, fs)``

They follow the authors' ``transplant/datasets/icentia11k.py``
(github.com/kweimann/ecg-transfer-learning); each module's docstring states its
rule. All accept ``segment_offsets=`` to keep every frame to its own segment's
beats. :func:`detect_beats` (``qrs``) finds beats in unannotated ECG.
"""

from ecgtl.tasks import beat, heart_rate, qrs, rhythm
from ecgtl.tasks.beat import beat_counts, beat_label, complete_beat_range
from ecgtl.tasks.heart_rate import heart_rate_bpm, heart_rate_label
from ecgtl.tasks.qrs import detect_beats
from ecgtl.tasks.rhythm import rhythm_durations, rhythm_label

#: task name -> (module with NUM_CLASSES / CLASS_NAMES, label function)
CLASSIFICATION_TASKS = {
    "beat": (beat, beat_label),
    "rhythm": (rhythm, rhythm_label),
    "heart_rate": (heart_rate, heart_rate_label),
}

__all__ = [
    "CLASSIFICATION_TASKS",
    "beat",
    "beat_counts",
    "beat_label",
    "complete_beat_range",
    "detect_beats",
    "heart_rate",
    "heart_rate_bpm",
    "heart_rate_label",
    "qrs",
    "rhythm",
    "rhythm_durations",
    "rhythm_label",
]
