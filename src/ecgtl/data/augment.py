"""Training-time augmentation of single-lead ECG (normalised units, at the model's rate).

:class:`EcgAugment` draws, per training item, from a :class:`numpy.random.Generator`, so an
epoch's augmentations are fixed by ``(seed, epoch)`` like its crops (exact resume holds):

* ``stretch``: time stretch of the whole record by a factor in ``[1 - stretch, 1 + stretch]``
  (linear interpolation; heart rate changes by the inverse factor), before cropping;
* ``scale``: amplitude times a factor in ``[1 - scale, 1 + scale]``;
* ``flip``: probability of inverting the sign (a reversed lead);
* ``wander``: baseline wander, a sinusoid of 0.05-0.5 Hz with amplitude up to ``wander``;
* ``noise``: white Gaussian noise with a standard deviation up to ``noise``;
* ``shift``: for a record shorter than the crop (zero-padded in front), up to ``shift`` seconds of
  that padding moved behind it, a uniform whole number of samples (:meth:`EcgAugment.draw_shift`):
  the record no longer always ends at the crop's last sample. A strided network is not shift
  invariant, and without it every epoch shows a short record at the same phase.

Amplitudes (``wander``, ``noise``) are in the signal's units: normalised ECG (one standard
deviation of the training records). A field of 0 turns that augmentation off; all 0 is the
identity and draws no random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EcgAugment"]

WANDER_HZ = (0.05, 0.5)  # respiration and movement
MAX_SHIFT_S = 60.0


@dataclass(frozen=True)
class EcgAugment:
    fs: float  # Hz of the signals it is applied to
    scale: float = 0.0
    flip: float = 0.0
    wander: float = 0.0
    noise: float = 0.0
    stretch: float = 0.0
    shift: float = 0.0  # s

    def __post_init__(self):
        for name in ("scale", "stretch"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.flip <= 1:
            raise ValueError(f"augment.flip is a probability in [0, 1], got {self.flip}")
        for name in ("wander", "noise"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"augment.{name} must be in [0, 10] (normalised units), got {getattr(self, name)}")
        if not 0 <= self.shift <= MAX_SHIFT_S:
            raise ValueError(f"augment.shift must be in [0, {MAX_SHIFT_S}] s, got {self.shift}")
        if not (math.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"fs must be a positive rate in Hz, got {self.fs}")

    @property
    def active(self) -> bool:
        return any((self.scale, self.flip, self.wander, self.noise, self.stretch, self.shift))

    def draw_shift(self, pad: int, rng: np.random.Generator) -> int:
        """Samples of a crop's ``pad`` samples of front padding to move behind the record: uniform in
        ``[0, min(pad, shift * fs)]``; 0 without drawing when ``shift`` is off or there is no padding."""
        most = min(int(pad), int(round(self.shift * self.fs)))
        return int(rng.integers(0, most + 1)) if self.shift and most > 0 else 0

    def stretch_record(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The whole record stretched in time (before cropping, so the crop length stays fixed)."""
        if not self.stretch:
            return x
        factor = rng.uniform(1 - self.stretch, 1 + self.stretch)
        n_out = max(2, int(round(len(x) * factor)))
        t = np.linspace(0, len(x) - 1, n_out)
        return np.interp(t, np.arange(len(x)), x).astype(np.float32)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Amplitude, sign, baseline and noise augmentation of one crop (a new float32 array)."""
        y = np.array(x, dtype=np.float32, copy=True)
        if self.scale:
            y *= rng.uniform(1 - self.scale, 1 + self.scale)
        if self.flip and rng.random() < self.flip:
            y = -y
        if self.wander:
            t = np.arange(len(y)) / self.fs
            hz, phase, amp = rng.uniform(*WANDER_HZ), rng.uniform(0, 2 * np.pi), rng.uniform(0, self.wander)
            y += (amp * np.sin(2 * np.pi * hz * t + phase)).astype(np.float32)
        if self.noise:
            y += rng.normal(0, rng.uniform(0, self.noise), len(y)).astype(np.float32)
        return y
