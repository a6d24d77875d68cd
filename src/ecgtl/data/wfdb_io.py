"""Checked access to WFDB records and annotations.

``wfdb`` does the parsing; this module adds the checks a bulk job needs (a
truncated ``.dat``, a broken header, a missing annotation file, NaN or flat
signals) and turns every failure into a :class:`~ecgtl.errors.DataError` that
names the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from ecgtl.errors import DataError

# Bytes per sample of the WFDB storage formats we read (per channel).
_FORMAT_BYTES = {"8": 1.0, "16": 2.0, "61": 2.0, "80": 1.0, "160": 2.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3, "24": 3.0, "32": 4.0}


@dataclass(frozen=True)
class Header:
    """What a WFDB header says about a record."""

    record: str  # path of the record without extension
    fs: float  # Hz
    sig_len: int  # samples per channel
    n_sig: int
    sig_name: tuple[str, ...]
    fmt: tuple[str, ...]
    adc_gain: tuple[float, ...]  # adu per physical unit
    baseline: tuple[int, ...]  # adu
    units: tuple[str, ...]
    file_name: tuple[str, ...]


def read_header(record: str | os.PathLike) -> Header:
    """Parse ``<record>.hea``; raise :class:`DataError` naming the file if it is missing or broken."""
    record = os.fspath(record)
    hea = record + ".hea"
    if not os.path.isfile(hea):
        raise DataError(hea, "header file not found")
    try:
        h = wfdb.rdheader(record)
    except Exception as exc:  # wfdb raises many types on malformed headers
        raise DataError(hea, f"broken WFDB header ({type(exc).__name__}: {exc})") from None
    if not h.fs or h.fs <= 0:
        raise DataError(hea, f"invalid sampling frequency {h.fs!r}")
    if h.n_sig is None or h.n_sig < 1 or not h.fmt:
        raise DataError(hea, "header declares no signal")
    if h.sig_len is None or h.sig_len <= 0:
        raise DataError(hea, f"header declares no samples (sig_len={h.sig_len!r})")
    gains = tuple(float(g) if g else 200.0 for g in h.adc_gain)  # WFDB: gain 0 means the default 200
    return Header(
        record=record,
        fs=float(h.fs),
        sig_len=int(h.sig_len),
        n_sig=int(h.n_sig),
        sig_name=tuple(h.sig_name or ()),
        fmt=tuple(str(f) for f in h.fmt),
        adc_gain=gains,
        baseline=tuple(int(b) for b in h.baseline),
        units=tuple(h.units or ()),
        file_name=tuple(h.file_name),
    )


def check_dat_size(header: Header) -> None:
    """Raise :class:`DataError` if a signal file is shorter than the header promises (a truncated download)."""
    folder = os.path.dirname(header.record)
    by_file: dict[str, list[str]] = {}
    for name, fmt in zip(header.file_name, header.fmt):
        by_file.setdefault(name, []).append(fmt)
    for name, fmts in by_file.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(path, "signal file not found")
        if name.endswith(".mat"):
            continue  # MAT containers have their own framing; checked when read
        per_sample = sum(_FORMAT_BYTES.get(f.split("+")[0], 0.0) for f in fmts)
        if per_sample == 0:
            continue
        expected = int(np.floor(per_sample * header.sig_len))
        actual = os.path.getsize(path)
        if actual < expected:
            raise DataError(path, f"truncated signal file: {actual} bytes, header promises {expected} "
                                  f"({header.sig_len} samples x {len(fmts)} channel(s), format {'/'.join(fmts)})")


def check_signal(signal: np.ndarray, path: str | os.PathLike, *, min_std: float = 1e-6) -> None:
    """Reject signals a model must never see: non-finite values, or a flat line (no variation)."""
    if signal.size == 0:
        raise DataError(path, "empty signal")
    if np.issubdtype(signal.dtype, np.floating) and not np.all(np.isfinite(signal)):
        bad = int(np.size(signal) - np.count_nonzero(np.isfinite(signal)))
        raise DataError(path, f"signal has {bad} non-finite (NaN/inf) samples")
    if float(np.std(signal)) <= min_std:
        raise DataError(path, "flat signal (no variation): lead off or empty recording")


# Amplitude of an ECG in mV, measured on the real data of ../shared/data (the margins are checked by
# tests/test_reliability_inputs.py::test_amplitude_bounds_pass_every_real_record_with_margin): the robust
# spread (1st-99th percentile range) of all 7,248 CinC 2017 records is 0.187-8.85 mV, of MIT-BIH, SVDB,
# AFTDB and Icentia11k patient 0 (every lead) 0.22-7.02 mV; the largest |x - median| is 10.7 mV.
MV_SPREAD_RANGE = (0.05, 20.0)  # mV: 3.7x below the smallest real spread, 2.3x above the largest
MV_PEAK_MAX = 100.0  # mV: 9x the largest real excursion (a 16-bit CinC record saturates at 32.8 mV)
#: Sampling rates a recording may have (Hz): below 50 Hz a QRS complex is not resolved.
ECG_FS_RANGE_HZ = (50.0, 20000.0)
#: Physical units of a voltage -> factor to mV (WFDB headers; case-insensitive).
_UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "microvolt": 1e-3,
               "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "volts": 1e3, "nv": 1e-6}


def unit_to_mv(unit: str | None, path: str | os.PathLike, lead: str = "") -> float:
    """Factor from a signal's physical ``unit`` to mV; a unit that is not a voltage is a :class:`DataError`.

    WFDB's default unit (none written in the header) is mV.
    """
    key = (unit or "mV").strip().lower()
    if key not in _UNIT_TO_MV:
        raise DataError(path, f"{'lead ' + repr(lead) + ' has ' if lead else ''}unit {unit!r}, not a voltage (mV, uV or V): "
                              "not an ECG lead? choose an ECG lead with --lead")
    return _UNIT_TO_MV[key]


def check_fs(fs, path: str | os.PathLike | None, what: str = "sampling frequency") -> float:
    """Refuse a sampling rate no ECG has (non-finite, <= 0, below 50 Hz or above 20 kHz); return it as float."""
    lo, hi = ECG_FS_RANGE_HZ
    try:
        value = float(fs)
    except (TypeError, ValueError):
        value = float("nan")
    if not (lo <= value <= hi):  # also NaN
        raise DataError(path, f"{what} {fs!r} Hz is outside {lo:g}-{hi:g} Hz, the range of ECG recorders: "
                              "give the rate in Hz (e.g. --fs 300)")
    return value


def amplitude_mv(signal: np.ndarray) -> tuple[float, float]:
    """``(spread, peak)`` of a signal in mV: the 1st-99th percentile range, and the largest ``|x - median|``."""
    x = np.asarray(signal, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        x = x[np.isfinite(x)]
    n = x.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    lo_k, mid_k, hi_k = int(0.01 * (n - 1)), (n - 1) // 2, int(np.ceil(0.99 * (n - 1)))
    part = np.partition(x, (lo_k, mid_k, hi_k))  # one O(n) pass instead of three percentiles
    median = part[mid_k]
    return float(part[hi_k] - part[lo_k]), float(max(part[-1] - median, median - part[0]))


def check_millivolts(signal: np.ndarray, path: str | os.PathLike | None, fix: str = "pass --gain ADU_PER_MV") -> None:
    """Refuse a signal that is not an ECG in mV: a time or index column (monotonic values), or an amplitude
    that is not an ECG's in mV (raw ADC counts, uV, V, placeholder values).

    ``fix`` says how to correct the unit where the signal came from (a command-line option, a
    header's gain). Bounds: :data:`MV_SPREAD_RANGE` on the robust spread, :data:`MV_PEAK_MAX` on
    the peak; both are far outside every real record (see the comment above them).
    """
    if signal.size < 2:
        return
    step = np.diff(np.asarray(signal, dtype=np.float64))
    if np.all(step >= 0) or np.all(step <= 0):  # checked first: its amplitude would pass for a wrong unit
        raise DataError(path, "the values only rise (or only fall): a time or sample-index column, not an ECG; "
                              "choose the ECG lead or column with --lead")
    spread, peak = amplitude_mv(signal)
    lo, hi = MV_SPREAD_RANGE
    if spread > hi:
        raise DataError(path, f"amplitude {spread:.4g} (1st-99th percentile range) is far above an ECG's in mV "
                              f"(0.2-9 mV; refused above {hi:g}): the values look like raw ADC counts or uV, not mV; {fix}")
    if spread < lo:
        raise DataError(path, f"amplitude {spread:.3g} (1st-99th percentile range) is far below an ECG's in mV "
                              f"(0.2-9 mV; refused below {lo:g}): the values look like volts, not mV ({fix}; "
                              "for volts the gain is 0.001), or the lead is off")
    if peak > MV_PEAK_MAX:
        n_bad = int(np.count_nonzero(np.abs(np.asarray(signal, np.float64) - np.median(signal)) > MV_PEAK_MAX))
        raise DataError(path, f"{n_bad} sample(s) reach {peak:.4g} mV from the baseline, absurd for an ECG (refused above "
                              f"{MV_PEAK_MAX:g} mV): placeholder values (e.g. -32768, 9999) or a wrong unit; remove them or {fix}")


def read_digital(record: str | os.PathLike, channel: int = 0, header: Header | None = None) -> tuple[np.ndarray, Header]:
    """Read one channel as stored (int16 adu) after checking the header and the file size.

    Format 16 single-channel files (Icentia11k) are read with ``np.fromfile``
    straight from disk, which is several times faster than ``wfdb.rdrecord``;
    other formats (212 of MIT-BIH/SVDB) go through ``wfdb``.
    """
    header = header or read_header(record)
    if not 0 <= channel < header.n_sig:
        raise DataError(header.record + ".hea", f"channel {channel} requested, record has {header.n_sig}")
    check_dat_size(header)
    dat = os.path.join(os.path.dirname(header.record), header.file_name[channel])
    if header.n_sig == 1 and header.fmt[0] == "16" and not dat.endswith(".mat"):
        sig = np.fromfile(dat, dtype="<i2", count=header.sig_len)
    else:
        try:
            rec = wfdb.rdrecord(header.record, channels=[channel], physical=False, return_res=16)
        except Exception as exc:
            raise DataError(dat, f"unreadable signal ({type(exc).__name__}: {exc})") from None
        sig = np.asarray(rec.d_signal[:, 0], dtype=np.int16)
    if sig.shape[0] != header.sig_len:
        raise DataError(dat, f"read {sig.shape[0]} samples, header promises {header.sig_len}")
    return sig, header


@dataclass(frozen=True)
class RawAnnotations:
    """Annotations as stored: positions in samples at the record's own rate."""

    sample: np.ndarray  # int64, samples
    symbol: np.ndarray  # str
    aux_note: np.ndarray  # str ('' where none)
    fs: float  # Hz


def read_annotations(record: str | os.PathLike, extension: str = "atr") -> RawAnnotations:
    """Read ``<record>.<extension>``; raise :class:`DataError` naming the file if missing or corrupt."""
    record = os.fspath(record)
    path = f"{record}.{extension}"
    if not os.path.isfile(path):
        raise DataError(path, "annotation file not found")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(path, "empty annotation file (0 bytes): an interrupted download or copy? fetch it again")
    with open(path, "rb") as fh:  # a WFDB (MIT format) annotation file is 16-bit words ending with the word 0
        fh.seek(max(0, size - 2))
        tail = fh.read(2)
    if size % 2 or tail != b"\x00\x00":
        raise DataError(path, f"truncated annotation file ({size} bytes, no end-of-file marker): fetch it again")
    try:
        ann = wfdb.rdann(record, extension)
    except Exception as exc:
        raise DataError(path, f"corrupt annotation file ({type(exc).__name__}: {exc})") from None
    sample = np.asarray(ann.sample, dtype=np.int64)
    symbol = np.asarray(ann.symbol if ann.symbol is not None else [""] * len(sample), dtype=object)
    aux = ann.aux_note if ann.aux_note is not None else [""] * len(sample)
    aux = np.asarray([a if a and a != "None" else "" for a in aux], dtype=object)
    if len(symbol) != len(sample):
        raise DataError(path, "annotation symbols and positions differ in length")
    if len(sample) and np.any(np.diff(sample) < 0):
        order = np.argsort(sample, kind="stable")
        sample, symbol, aux = sample[order], symbol[order], aux[order]
    return RawAnnotations(sample=sample, symbol=symbol, aux_note=aux, fs=float(ann.fs or 0.0))


def record_names(folder: str | os.PathLike) -> list[str]:
    """Record names listed in ``folder/RECORDS`` (paths relative to ``folder``, no extension)."""
    path = Path(folder) / "RECORDS"
    if not path.is_file():
        raise DataError(path, "RECORDS file not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise DataError(path, "RECORDS lists no record")
    return names
