"""Reader of the PhysioNet/CinC Challenge 2017 layout (files -> arrays; no torch here).

A folder in this layout holds ``RECORDS``, a label file (``REFERENCE.csv``, or the
relabelled ``REFERENCE-v3.csv``, with or without a header line) and one
``<name>.mat`` + ``<name>.hea`` pair per record (WFDB, 300 Hz, int16,
1000 adu/mV). Signals are returned in mV, computed from the header's gain,
baseline and unit, and refused when their amplitude is not that of an ECG in mV.

Labels come from the folder itself, or from a label file the caller names. The one
exception is PhysioNet's own layout, ``challenge-2017/1.0.0/training2017/`` with the v3
labels in ``1.0.0/REFERENCE-v3.csv``: for a folder named ``training2017`` and
``labels="v3"`` the parent's file is used, and the choice is logged and kept in
:attr:`Cinc2017.label_file`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from tqdm.auto import tqdm

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.splits import load_splits
from ecgtl.data.wfdb_io import check_millivolts, check_signal, read_header, unit_to_mv
from ecgtl.errors import DataError

log = logging.getLogger(__name__)

LABEL_FILES = ("REFERENCE-v3.csv", "REFERENCE.csv")
#: PhysioNet's folder of the training records; its parent holds REFERENCE-v3.csv.
PHYSIONET_FOLDER = "training2017"


@dataclass(frozen=True)
class CincRecord:
    """One recording: ``signal`` in mV (float32, 1-D), ``fs`` in Hz, ``label`` one of N, A, O, ~ (or None)."""

    name: str
    signal: np.ndarray
    fs: float
    label: str | None

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.fs

    @property
    def label_index(self) -> int | None:
        return None if self.label is None else CINC_CLASSES.index(self.label)


def find_label_file(folder: str | os.PathLike, labels: str = "v3") -> Path | None:
    """Locate the label file for ``folder``; which one was chosen is logged.

    ``labels`` is a path (used as given), ``"original"`` (the folder's ``REFERENCE.csv``) or
    ``"v3"``: the folder's ``REFERENCE-v3.csv``; for PhysioNet's layout (a folder named
    ``training2017``) the ``REFERENCE-v3.csv`` of its parent; else the folder's
    ``REFERENCE.csv``. A label file in the parent of any other folder is never used (it may
    label other records: a folder of a few test records inside a data folder); a warning
    names it, to pass as ``labels=PATH``. Returns None when the folder has no labels.
    """
    folder = Path(folder)
    if labels not in ("v3", "original"):
        path = Path(labels)
        if not path.is_file():
            raise DataError(path, "label file not found")
        log.info("%s: labels from %s (given)", folder, path)
        return path
    physionet = labels == "v3" and folder.absolute().name == PHYSIONET_FOLDER
    candidates = [folder / "REFERENCE-v3.csv"] if labels == "v3" else []
    if physionet:
        candidates.append(folder.absolute().parent / "REFERENCE-v3.csv")
    candidates.append(folder / "REFERENCE.csv")
    for path in candidates:
        if path.is_file():
            if path.parent != folder:
                log.info("%s: labels from %s (PhysioNet layout: the v3 labels sit next to %s/)", folder, path, PHYSIONET_FOLDER)
            elif labels == "v3" and path.name == "REFERENCE.csv":
                log.info("%s: labels from %s (the folder has no REFERENCE-v3.csv)", folder, path)
            else:
                log.info("%s: labels from %s", folder, path)
            return path
    outside = [folder.absolute().parent / n for n in LABEL_FILES if (folder.absolute().parent / n).is_file()]
    if outside:
        log.warning("%s: no label file in the folder; %s in its parent folder is not used (it may label other records): "
                    "pass it explicitly (--labels %s) if it labels these", folder, outside[0], outside[0])
    return None


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """Read a CinC label file (``name,label`` per line, optional header line) into ``{name: label}``."""
    path = Path(path)
    out: dict[str, str] = {}
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise DataError(path, f"line {lineno}: expected 'record,label', got {','.join(row)!r}")
            name, label = row[0].strip(), row[1].strip()
            if lineno == 1 and label not in CINC_CLASSES:
                continue  # a header line such as "record,label"
            if label not in CINC_CLASSES:
                raise DataError(path, f"line {lineno}: unknown label {label!r} (expected one of {', '.join(CINC_CLASSES)})")
            out[name] = label
    if not out:
        raise DataError(path, "no labels found")
    return out


def read_record(folder: str | os.PathLike, name: str, label: str | None = None, channel: int = 0) -> CincRecord:
    """Read ``<folder>/<name>.hea`` + ``.mat`` into a :class:`CincRecord` (lead ``channel``, in mV).

    The amplitude is checked (:func:`~ecgtl.data.wfdb_io.check_millivolts`): a header whose
    gain or unit is wrong gives values that are not mV, refused with a :class:`DataError`.
    """
    record = os.path.join(os.fspath(folder), name)
    header = read_header(record)
    if not 0 <= channel < header.n_sig:
        raise DataError(record + ".hea", f"lead {channel} requested, the record has {header.n_sig} "
                                         f"({', '.join(header.sig_name)})")
    mat = os.path.join(os.path.dirname(record), header.file_name[0])
    if not os.path.isfile(mat):
        raise DataError(mat, "signal file not found")
    try:
        content = scipy.io.loadmat(mat)
    except Exception as exc:
        raise DataError(mat, f"unreadable MAT file ({type(exc).__name__}: {exc})") from None
    if "val" not in content:
        raise DataError(mat, f"MAT file has no signal variable 'val' (has: {', '.join(k for k in content if not k.startswith('__')) or 'nothing'})")
    val = np.asarray(content["val"])
    if val.ndim != 2 or not np.issubdtype(val.dtype, np.number):
        raise DataError(mat, f"signal 'val' has shape {val.shape} and dtype {val.dtype}, expected a numeric (channels, samples) array")
    if val.shape[0] != header.n_sig:
        raise DataError(mat, f"signal has {val.shape[0]} channel(s), header {header.n_sig}")
    if val.shape[1] != header.sig_len:
        raise DataError(mat, f"signal has {val.shape[1]} samples, header promises {header.sig_len} (truncated?)")
    signal = ((val[channel].astype(np.float32) - header.baseline[channel]) / np.float32(header.adc_gain[channel])).astype(np.float32)
    lead = header.sig_name[channel] if channel < len(header.sig_name) else str(channel)
    scale = unit_to_mv(header.units[channel] if channel < len(header.units) else None, record + ".hea", lead)
    if scale != 1.0:
        signal = (signal * np.float32(scale)).astype(np.float32)
    check_signal(signal, mat)
    check_millivolts(signal, mat, fix=f"check the gain and unit of {name}.hea (CinC 2017: 1000/mV)")
    return CincRecord(name=name, signal=signal, fs=header.fs, label=label)


class Cinc2017:
    """A folder in the CinC 2017 layout.

    >>> data = Cinc2017("data/raw/challenge-2017/1.0.0/training2017")  # doctest: +SKIP
    >>> rec = data.read("A00001"); rec.fs, rec.label  # doctest: +SKIP
    (300.0, 'N')
    """

    def __init__(self, folder: str | os.PathLike, labels: str = "v3"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(self.folder, "CinC folder not found")
        records_file = self.folder / "RECORDS"
        if records_file.is_file():
            self.names = [ln.strip() for ln in records_file.read_text().splitlines() if ln.strip()]
        else:  # folders a user builds by hand may lack RECORDS: fall back to the headers present
            self.names = sorted(p.stem for p in self.folder.glob("*.hea"))
        if not self.names:
            raise DataError(self.folder, "no records (no RECORDS file and no .hea files)")
        self.label_file = find_label_file(self.folder, labels)
        self.labels: dict[str, str] = read_labels(self.label_file) if self.label_file else {}
        if self.labels:
            missing = [n for n in self.names if n not in self.labels]
            if missing:
                raise DataError(self.label_file, f"{len(missing)} record(s) without a label, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.names)

    def read(self, name: str) -> CincRecord:
        return read_record(self.folder, name, self.labels.get(name))

    def __iter__(self) -> Iterator[CincRecord]:
        for name in self.names:
            yield self.read(name)

    def read_all(self, progress: bool = True, names: list[str] | None = None) -> tuple[list[CincRecord], list[tuple[str, str]]]:
        """Read every record; a bad record is skipped and reported as ``(name, reason)``."""
        records, failures = [], []
        for name in tqdm(names or self.names, desc="read CinC 2017", unit="rec", disable=not progress):
            try:
                records.append(self.read(name))
            except DataError as err:
                failures.append((name, str(err)))
        return records, failures


def read_record_list(path: str | os.PathLike, split: str = "train") -> list[str]:
    """Record names from a splits JSON (its ``split`` list) or a text file (one name per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "record list not found")
    if path.suffix == ".json":
        return list(load_splits(path)[split])
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
