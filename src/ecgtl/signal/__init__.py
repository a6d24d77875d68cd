"""Signal processing on plain arrays, below every other layer: QRS detection (:mod:`ecgtl.signal.qrs`).

Nothing here knows about files, stores, tasks or models; the data layer (CinC records as
unannotated pre-training data) and the tasks both build on it.
"""

from ecgtl.signal.qrs import detect_beats

__all__ = ["detect_beats"]
