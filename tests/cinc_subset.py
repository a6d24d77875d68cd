"""Test data helpers shared by the inference, ensemble and pooling tests: real CinC subsets, ECG-like signals, tiny cards."""

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


def tiny_card(folder: Path, *, fs: float = 100.0, input_mode: str = "crop", seed: int = 0, classes=None,
              normalization=None, class_bias=None) -> Path:
    """A tiny classifier card (width 0.0625, 1,024-sample windows) in ``folder``, its weights drawn from ``seed``.

    Random weights, batch-norm statistics away from (0, 1) so that eval-mode batch norm does real
    arithmetic: for tests of inference arithmetic and refusals, not of skill.
    """
    import torch

    from ecgtl.constants import CINC_CLASSES
    from ecgtl.models import create_model
    from ecgtl.models.card import save_weights, write_card

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_model("resnet18_preact", num_classes=4, width=0.0625)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    save_weights(model.state_dict(), folder / "best.safetensors")
    extra = {"class_bias": list(class_bias)} if class_bias is not None else {}
    write_card(folder / "model.json", folder / "best.safetensors", architecture="resnet18_preact", width=0.0625, num_classes=4,
               classes=list(classes or CINC_CLASSES), fs=fs, normalization=normalization or {"mean": 0.0075, "std": 0.2373},
               task="cinc2017", input=input_mode, window_samples=1024, hop_samples=512, paper_samples=4096, **extra)
    return folder
