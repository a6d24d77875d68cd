"""Pretext tasks: their label rules, vectorised over many frames, and the one task registry.

Each classification task module exposes ``NUM_CLASSES``, ``CLASS_NAMES`` and a label
function taking sorted beat positions (samples), frame starts (samples, any shape) and
one frame length (samples), returning one int64 label per frame:

* :func:`beat_label` ``(beat_sample, beat_class, frame_start, frame_length)``
* :func:`rhythm_label` ``(beat_sample, rhythm, frame_start, frame_length, fs)``
* :func:`heart_rate_label` ``(beat_sample, frame_start, frame_length, fs)``

They follow the authors' ``transplant/datasets/icentia11k.py``
(github.com/kweimann/ecg-transfer-learning); each module's docstring states its
rule. All accept ``segment_offsets=`` to keep every frame to its own segment's
beats. Their cost does not grow with the number of beats beyond one O(n_beats) check of
the arrays; the ``*_unchecked`` variants in each module skip it for arrays known to be
valid (a store's) and read only the beats around the frames: the registry's rules.

:data:`PRETEXT_TASKS` (:mod:`ecgtl.tasks.registry`) is the one list of tasks that the
config, the frame sampler and ``ecgtl pretrain`` read. The tasks are plain functions of
arrays: they import nothing from the data layer, the models or training.
"""

from ecgtl.tasks import beat, heart_rate, rhythm
from ecgtl.tasks.beat import beat_counts, beat_label, complete_beat_range
from ecgtl.tasks.heart_rate import heart_rate_bpm, heart_rate_label
from ecgtl.tasks.registry import PRETEXT_TASKS, BeatTrack, PretextTask, get_task
from ecgtl.tasks.rhythm import rhythm_durations, rhythm_label

__all__ = [
    "PRETEXT_TASKS",
    "BeatTrack",
    "PretextTask",
    "beat",
    "beat_counts",
    "beat_label",
    "complete_beat_range",
    "get_task",
    "heart_rate",
    "heart_rate_bpm",
    "heart_rate_label",
    "rhythm",
    "rhythm_durations",
    "rhythm_label",
]
