"""Test data helpers shared by the inference, ensemble and pooling tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def write_cinc_subset(shared_data: Path, out: Path, n: int, label_file: str | Path = "REFERENCE.csv") -> list[str]:
    """The first ``n`` real CinC 2017 records (``.hea`` + ``.mat``) into ``out`` with ``RECORDS`` and their v3 labels.

    ``label_file``: a name inside ``out`` or any path. Returns the record names.
    """
    base = shared_data / "physionet-files" / "challenge-2017" / "1.0.0"
    with zipfile.ZipFile(base / "training2017.zip") as zf:
        names = zf.read("training2017/RECORDS").decode().split()[:n]
        for name in names:
            for ext in (".hea", ".mat"):
                (out / (name + ext)).write_bytes(zf.read(f"training2017/{name}{ext}"))
    labels = dict(line.split(",") for line in (base / "REFERENCE-v3.csv").read_text().split())
    (out / "RECORDS").write_text("".join(name + "\n" for name in names))
    (out / label_file).write_text("".join(f"{name},{labels[name]}\n" for name in names))
    return names


def ecg_like_signals(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    """ECG-like signals in mV of varied lengths and rates (6, 10.24 = one 125 Hz window, 33.3 and 61 s at 300/250/500 Hz)."""
    rng = np.random.default_rng(seed)
    out, rates = [], []
    for i in range(n):
        fs = [300.0, 250.0, 500.0][i % 3]
        samples = [int(6 * fs), int(round(10.24 * fs)), int(33.3 * fs), int(61 * fs)][i % 4]
        t = np.arange(samples) / fs
        x = np.exp(-(((t * rng.uniform(1, 2)) % 1.0 - 0.5) ** 2) / 2e-4) + 0.05 * rng.standard_normal(samples)
        out.append(x.astype(np.float32))
        rates.append(fs)
    return out, rates
