"""Inference from a model card: the preprocessing the model was trained with, then windows averaged.

:class:`Classifier` is what ``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export`` share: it
resamples a recording (mV at any rate) to the card's rate, normalises it with the card's
mean/std, and either averages the class probabilities of sliding windows (``input: crop``,
the default) or runs the study's single padded input (``input: paper``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc_dataset import CincPaperDataset, CincWindowDataset, aggregate_windows, prepare_cinc
from ecgtl.data.transforms import Normalization
from ecgtl.errors import ConfigError, DataError
from ecgtl.models.card import model_from_card, read_card
from ecgtl.train.engine import resolve_device

MIN_SECONDS = 5.0  # shorter recordings are refused: a few beats cannot tell AF from other rhythms


def find_card(checkpoint: str | os.PathLike) -> Path:
    """A model card path from a card, a run folder (``model.json`` inside) or its weights file."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "model.json"
    elif p.suffix == ".safetensors":
        p = p.with_name("model.json")
    if not p.is_file():
        raise ConfigError(f"{checkpoint}: no model card (model.json) found")
    return p


class Classifier:
    """A fine-tuned model ready to classify recordings (signal in mV at any sampling rate)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu", batch_size: int = 128):
        self.card = read_card(find_card(checkpoint))
        self.model, _ = model_from_card(self.card)
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.fs = float(self.card["fs"])
        self.normalization = Normalization.from_dict(self.card["normalization"])
        self.classes = tuple(self.card.get("classes", CINC_CLASSES))
        self.input = self.card.get("input", "crop")
        self.window = int(self.card.get("window_samples", 0))
        self.hop = int(self.card.get("hop_samples", 0))
        self.paper_samples = int(self.card.get("paper_samples", 16384))
        self.batch_size = batch_size

    def preprocess(self, signals: list[np.ndarray], fs: float | list[float]) -> list[np.ndarray]:
        """Normalise and resample recordings (mV at ``fs`` Hz) to the model's input."""
        fss = fs if isinstance(fs, (list, tuple)) else [fs] * len(signals)
        return [prepare_cinc([s], self.fs, self.normalization, fs_in=f)[0] for s, f in zip(signals, fss)]

    @torch.no_grad()
    def predict_proba(self, signals: list[np.ndarray], fs: float | list[float]) -> np.ndarray:
        """Class probabilities, shape (n_recordings, n_classes)."""
        x = self.preprocess(signals, fs)
        if self.input == "paper":
            ds = CincPaperDataset(x, None, self.paper_samples)
        else:
            ds = CincWindowDataset(x, None, self.window, self.hop)
        loader = torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False)
        probs = []
        for xb, _ in loader:
            probs.append(torch.softmax(self.model(xb.to(self.device)).float(), dim=1).cpu().numpy())
        probs = np.concatenate(probs)
        if self.input == "paper":
            return probs
        return aggregate_windows(probs, ds.record_index, len(x))


def check_recording(signal: np.ndarray, fs: float, source: str) -> np.ndarray:
    """Refuse what the model must not see: wrong shape, non-finite values, too short, flat."""
    signal = np.asarray(signal)
    if signal.ndim == 2 and 1 in signal.shape:
        signal = signal.reshape(-1)
    if signal.ndim != 1:
        raise DataError(source, f"expected a single-lead recording (1-D), got shape {signal.shape}; choose a lead with --lead")
    if not np.issubdtype(signal.dtype, np.number):
        raise DataError(source, f"signal is not numeric (dtype {signal.dtype})")
    signal = signal.astype(np.float32)
    if not np.all(np.isfinite(signal)):
        raise DataError(source, f"signal has {int(np.sum(~np.isfinite(signal)))} non-finite (NaN/inf) samples")
    if not fs or fs <= 0:
        raise DataError(source, f"invalid sampling frequency {fs!r} Hz")
    seconds = len(signal) / fs
    if seconds < MIN_SECONDS:
        raise DataError(source, f"recording too short: {seconds:.2f} s at {fs:g} Hz (at least {MIN_SECONDS:g} s needed)")
    if float(np.std(signal)) < 1e-6:
        raise DataError(source, "flat signal (no variation)")
    return signal
