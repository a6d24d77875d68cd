"""Signal transforms for fine-tuning (numpy only, no torch).

Conventions: signals are 1-D arrays of samples, in mV before normalisation
(unitless after it); sampling rates are in Hz; every length, window, hop or
crop size is a number of **samples** at the rate of the signal it applies to
(convert seconds with :func:`seconds_to_samples`). Every function returns a
new float32 array and leaves its input untouched.

The authors' fine-tuning input (see ``shared/reference/paper-protocol.md``):
normalise with fixed constants (:data:`PAPER_CINC`), resample 300 -> 250 Hz,
then :func:`paper_pad_or_crop` to 16,384 samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from ecgtl.errors import ConfigError

__all__ = [
    "PAPER_CINC",
    "Normalization",
    "normalize",
    "paper_pad_or_crop",
    "random_crop",
    "resample",
    "resample_factors",
    "resampled_length",
    "seconds_to_samples",
    "sliding_windows",
    "take_window",
    "window_starts",
]


def _as_1d(x: np.ndarray, what: str = "signal") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{what} must be 1-D (samples,), got shape {x.shape}")
    return x


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{what} must be a positive whole number of samples, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- sampling rate
#: Largest up- or down-sampling factor :func:`resample` accepts (300 Hz -> 50 Hz is 6; 50 -> 1000 Hz is 20).
MAX_RESAMPLE_FACTOR = 1000


def resample_factors(fs_in: float, fs_out: float) -> tuple[int, int]:
    """``(up, down)`` of the polyphase resampler from ``fs_in`` Hz to ``fs_out`` Hz.

    The ratio ``fs_out / fs_in`` is approximated by a fraction with a
    denominator of at most 1000 (exact for all the rates of the study:
    300 -> 250 Hz is 5/6, 300 -> 125 Hz is 5/12, 300 -> 50 Hz is 1/6). A ratio
    beyond 1000 either way (a wrong rate) is a ``ValueError``, not a huge allocation.
    """
    if not (fs_in > 0 and fs_out > 0 and math.isfinite(fs_in) and math.isfinite(fs_out)):
        raise ValueError(f"sampling rates must be positive and finite, got fs_in={fs_in!r} Hz, fs_out={fs_out!r} Hz")
    ratio = Fraction(float(fs_out) / float(fs_in)).limit_denominator(MAX_RESAMPLE_FACTOR)
    if ratio == 0:
        raise ValueError(f"resampling ratio {fs_out}/{fs_in} Hz is too small to represent (< 1/{MAX_RESAMPLE_FACTOR})")
    if ratio > MAX_RESAMPLE_FACTOR:  # e.g. a rate given as 1e-9 Hz: the output would need terabytes
        raise ValueError(f"resampling {fs_in!r} Hz -> {fs_out!r} Hz multiplies the samples by {float(ratio):.3g} "
                         f"(more than {MAX_RESAMPLE_FACTOR}): is a sampling rate wrong?")
    return ratio.numerator, ratio.denominator


def resampled_length(n_samples: int, fs_in: float, fs_out: float) -> int:
    """Number of samples :func:`resample` returns for ``n_samples`` samples at ``fs_in`` Hz."""
    up, down = resample_factors(fs_in, fs_out)
    if up == down:
        return int(n_samples)
    return -(-int(n_samples) * up // down)  # ceil(n * up / down), as scipy's resample_poly


def seconds_to_samples(seconds: float, fs: float) -> int:
    """Round a duration in seconds to a whole number of samples at ``fs`` Hz."""
    return int(round(float(seconds) * float(fs)))


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resample a 1-D signal from ``fs_in`` Hz to ``fs_out`` Hz (polyphase FIR filter).

    Uses :func:`scipy.signal.resample_poly` with the factors of
    :func:`resample_factors`, whose anti-aliasing low-pass removes content above
    the new Nyquist frequency (``fs_out / 2`` Hz). Any target rate works, e.g. the
    50, 100, 125, 250 and 300 Hz of the study. Returns float32 with
    :func:`resampled_length` samples (``ceil(n * up / down)``); a copy of the input
    when the rates are equal. Amplitudes keep their unit (mV in, mV out).
    """
    x = _as_1d(signal)
    up, down = resample_factors(fs_in, fs_out)
    if up == down:
        return x.astype(np.float32, copy=True)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    # float64 inside the filter: float32 input would make scipy filter in float32 (less accurate for long records)
    return resample_poly(x.astype(np.float64, copy=False), up, down).astype(np.float32)


# ----------------------------------------------------------------------------- amplitude
def normalize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / std`` as float32; ``mean`` and ``std`` in the unit of ``x`` (mV)."""
    if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
        raise ValueError(f"normalisation needs a finite mean and a positive finite std, got mean={mean!r}, std={std!r}")
    out = (np.asarray(x, dtype=np.float64) - float(mean)) / float(std)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Normalization:
    """Amplitude normalisation ``(x - mean) / std``; ``mean`` and ``std`` in mV.

    Derive it from the training records only (:meth:`from_records`) and store it
    with the model (:meth:`to_dict`), so that validation, test and deployment
    data are scaled exactly as the training data were.
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Normalization needs a finite mean and a positive finite std, got mean={self.mean!r}, std={self.std!r}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return normalize(x, self.mean, self.std)

    @classmethod
    def from_records(cls, signals: Iterable[np.ndarray]) -> Normalization:
        """Global mean and (population) std over all samples of all ``signals`` (training records only).

        Every sample counts once, so long records weigh more than short ones, as
        if the records were concatenated. Accumulated per record in float64
        (Chan's pairwise update), without building the concatenation.
        """
        count, mean, m2 = 0, 0.0, 0.0
        for sig in signals:
            x = np.asarray(sig, dtype=np.float64).ravel()
            n = x.shape[0]
            if n == 0:
                continue
            if not np.all(np.isfinite(x)):
                raise ValueError("a training signal holds NaN or infinite samples")
            m = float(x.mean())
            s = float(((x - m) ** 2).sum())
            delta = m - mean
            total = count + n
            mean += delta * n / total
            m2 += s + delta * delta * count * n / total
            count = total
        if count == 0:
            raise ValueError("no samples to compute a normalisation from")
        std = math.sqrt(m2 / count)
        if std == 0:
            raise ValueError("the training signals are constant (std 0): cannot normalise")
        return cls(mean=float(mean), std=float(std))

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; raises :class:`~ecgtl.errors.ConfigError` on a malformed dict."""
        try:
            return cls(mean=float(d["mean"]), std=float(d["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid normalisation {dict(d) if isinstance(d, Mapping) else d!r}: {exc}") from None


#: The authors' fixed constants for CinC 2017 (mV): ``(x - 0.0075) / 0.2373``.
PAPER_CINC = Normalization(mean=0.0075, std=0.2373)


# ----------------------------------------------------------------------------- length
def take_window(x: np.ndarray, start: int, length: int) -> np.ndarray:
    """Samples ``x[start:start + length]`` as float32, zero-padded where the window leaves the record.

    A negative ``start`` pads zeros at the front (how the study pads short
    records); a window running past the end is padded at the back.
    """
    x = _as_1d(x)
    length = _positive_int(length, "length")
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, x.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = x[lo:hi]
    return out


def paper_pad_or_crop(x: np.ndarray, length: int) -> np.ndarray:
    """The authors' fixed-length input: the LAST ``length`` samples of ``x``.

    Records shorter than ``length`` samples are zero-padded at the FRONT (the
    signal ends at the last sample); longer ones lose their beginning.
    """
    x = _as_1d(x)
    return take_window(x, x.shape[0] - _positive_int(length, "length"), length)


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A window of ``length`` samples at a uniformly random start (every start equally likely).

    Records of at most ``length`` samples are returned whole, zero-padded at the
    front like the paper's input (no random number is drawn for them).
    ``rng`` is a :class:`numpy.random.Generator`; the same generator state gives
    the same crop.
    """
    x = _as_1d(x)
    length = _positive_int(length, "length")
    n = x.shape[0]
    if n <= length:
        return take_window(x, n - length, length)
    start = int(rng.integers(0, n - length + 1))
    return x[start : start + length].astype(np.float32, copy=True)


def window_starts(n_samples: int, length: int, hop: int) -> np.ndarray:
    """Start sample of each window of :func:`sliding_windows` (int64 array).

    Starts are ``0, hop, 2*hop, ...`` while the window fits; when the last of
    them does not end at the record's end, one more window starting at
    ``n_samples - length`` is added, so every sample is covered. A record of at
    most ``length`` samples gives a single start ``n_samples - length`` (<= 0:
    zero padding at the front).
    """
    length = _positive_int(length, "window length")
    hop = _positive_int(hop, "hop")
    n = int(n_samples)
    if n <= length:
        return np.array([n - length], dtype=np.int64)
    starts = np.arange(0, n - length + 1, hop, dtype=np.int64)
    if starts[-1] != n - length:
        starts = np.append(starts, n - length)
    return starts


def sliding_windows(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """All windows of ``length`` samples, ``hop`` samples apart, as a float32 array (n_windows, length).

    The windows cover the whole record: the last one is aligned to the record's
    end (so it may overlap its predecessor by more than ``length - hop``), and no
    sample is missed as long as ``hop <= length`` (a larger hop skips samples
    between windows on purpose). A record of at most ``length`` samples gives one
    window, zero-padded at the front. Only the windows are returned; their start
    samples are :func:`window_starts` ``(len(x), length, hop)``.
    """
    x = _as_1d(x)
    starts = window_starts(x.shape[0], length, hop)
    if starts[0] < 0:
        return take_window(x, int(starts[0]), length)[None, :]
    view = np.lib.stride_tricks.sliding_window_view(x, length)
    return view[starts].astype(np.float32, copy=True)
