"""Inference from a model card: the preprocessing the model was trained with, then windows averaged.

:class:`Classifier` is what ``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export`` share: it
resamples a recording (mV at any rate) to the card's rate, normalises it with the card's
mean/std, and either averages the class probabilities of sliding windows (``input: crop``,
the default) or runs the study's single padded input (``input: paper``).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc_dataset import CincPaperDataset, CincWindowDataset, aggregate_windows, prepare_cinc
from ecgtl.data.transforms import Normalization
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.calibration import biased_probabilities
from ecgtl.fileio import atomic_write
from ecgtl.models.card import model_from_card, read_card
from ecgtl.runtime import resolve_device

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


def check_probabilities(probs: np.ndarray, source: str | os.PathLike | None) -> np.ndarray:
    """Refuse non-finite class probabilities: NaN must never become a class (``argmax`` of NaN is class 0)."""
    bad = ~np.all(np.isfinite(probs), axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(source, f"the model gave non-finite (NaN/inf) probabilities for {len(rows)} of {len(probs)} "
                                f"recording(s) (e.g. #{', #'.join(map(str, rows[:3]))}), so no class can be given: its weights "
                                "are corrupt or diverged, or an input is far out of range (recordings must be in mV: see --gain)")
    return probs


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                    source: str | os.PathLike | None = None) -> np.ndarray:
    """Per-record class probabilities, shape (n_records, n_classes), in float32 (no autocast).

    ``dataset`` yields ``(x, record_index)``: sliding windows (:class:`CincWindowDataset`, whose
    window probabilities are averaged per record) or one input per record. Non-finite
    probabilities raise a :class:`DataError` naming ``source`` (the model's card or run folder).
    """
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, index = [], []
    for x, idx in loader:
        probs.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu().numpy())
        index.append(np.asarray(idx))
    probs, index = np.concatenate(probs), np.concatenate(index)
    if isinstance(dataset, CincWindowDataset):
        return check_probabilities(aggregate_windows(probs, dataset.record_index, dataset.n_records), source)
    order = np.argsort(index, kind="stable")
    return check_probabilities(probs[order], source)


class RecordIndexDataset(torch.utils.data.Dataset):
    """Wraps a one-input-per-record dataset so it yields ``(x, record_index)`` like the window dataset."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], i


def inference_dataset(signals: list[np.ndarray], input_mode: str, window: int, hop: int, paper_samples: int):
    """The evaluation dataset of a model: sliding windows (``crop``) or the paper's padded input."""
    if input_mode == "paper":
        return RecordIndexDataset(CincPaperDataset(signals, None, paper_samples))
    if window <= 0 or hop <= 0:
        raise ConfigError(f"window ({window}) and hop ({hop}) must be positive samples")
    return CincWindowDataset(signals, None, window, hop)


class Classifier:
    """A fine-tuned model ready to classify recordings (signal in mV at any sampling rate)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", batch_size: int = 128):
        path = find_card(checkpoint)
        self.card = read_card(path)  # the weights are checked against the card by model_from_card
        if self.card.get("task") != "cinc2017" or int(self.card.get("num_classes", 0)) < 2:
            raise DataError(path, f"not a fine-tuned classifier (task {self.card.get('task')!r}); "
                                  "pre-trained backbones are used through `ecgtl finetune --init`")
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

    @property
    def input_samples(self) -> int:
        """Samples of one model input (a window, or the paper's padded record)."""
        return self.paper_samples if self.input == "paper" else self.window

    def predict_proba(self, signals: list[np.ndarray], fs: float | list[float]) -> np.ndarray:
        """Class probabilities, shape (n_recordings, n_classes); all finite (else a :class:`DataError` naming the card)."""
        ds = inference_dataset(self.preprocess(signals, fs), self.input, self.window, self.hop, self.paper_samples)
        probs = predict_dataset(self.model, ds, self.batch_size, self.device, source=self.card["_card_path"])
        return biased_probabilities(probs, self.card.get("class_bias"))  # decision biases fitted on validation, if any


def check_recording(signal: np.ndarray, fs: float, source: str) -> np.ndarray:
    """Refuse what the model must not see, naming ``source``: not one lead, not real numbers, non-finite values,
    a rate no ECG has, too short, flat, a time or index column, an amplitude that is not mV."""
    from ecgtl.data.wfdb_io import check_fs, check_millivolts

    signal = np.asarray(signal)
    if signal.ndim == 2 and 1 in signal.shape:
        signal = signal.reshape(-1)
    if signal.ndim != 1:
        raise DataError(source, f"expected a single-lead recording (1-D), got shape {signal.shape}; choose a lead with --lead")
    if signal.dtype.kind not in "iuf":
        raise DataError(source, f"signal is not real numbers (dtype {signal.dtype})")
    finite = np.isfinite(signal)
    if not np.all(finite):
        raise DataError(source, f"signal has {int(np.sum(~finite))} non-finite (NaN/inf) samples")
    fs = check_fs(fs, source)
    seconds = len(signal) / fs
    if seconds < MIN_SECONDS:
        raise DataError(source, f"recording too short: {seconds:.2f} s at {fs:g} Hz (at least {MIN_SECONDS:g} s needed)")
    signal64 = signal.astype(np.float64)
    if float(np.std(signal64)) < 1e-6:
        raise DataError(source, "flat signal (no variation)")
    check_millivolts(signal64, source, fix="pass --gain ADU_PER_MV for values in raw units (0.001 for volts)")
    return signal.astype(np.float32)


def write_predictions(path: str | os.PathLike, names, labels, probs: np.ndarray) -> None:
    """Per-record predictions as CSV (record, label or empty when ``label < 0``, prediction, one probability per class), atomically."""
    check_probabilities(np.asarray(probs), path)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["record", "label", "prediction", *[f"p_{c}" for c in CINC_CLASSES]])
    for n, y, p in zip(names, labels, probs):
        w.writerow([n, CINC_CLASSES[int(y)] if y >= 0 else "", CINC_CLASSES[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    atomic_write(path, text.getvalue())
