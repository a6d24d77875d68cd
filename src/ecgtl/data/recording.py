"""The unit every pre-training reader yields: one patient, as segments of int16 signal + beats."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ecgtl.data.annotations import BeatAnnotations


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of one patient's ECG.

    ``signal``: int16 samples in adu at the patient's ``fs``; physical value
    (mV) = (signal - baseline) / gain. ``beats`` positions are samples into
    this segment.
    """

    name: str
    signal: np.ndarray
    beats: BeatAnnotations


class PatientReader(Protocol):
    """What :func:`ecgtl.data.store.prepare` needs from a reader."""

    patient_id: str  # unique within the store, e.g. "icentia11k/p00000" or "mitdb/100"
    source: str  # "icentia11k-wfdb", "icentia11k-torrent", "mitdb", ...
    fs: float  # Hz of the segments yielded
    gain: float  # adu per mV
    baseline: int  # adu

    def segments(self) -> Iterator[Segment]:
        """Yield the patient's segments in order; raise DataError naming the file on bad input."""
        ...
