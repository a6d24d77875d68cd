"""``ecgtl finetune``: train a 4-class classifier (N, A, O, ~) on PhysioNet/CinC 2017.

From random initialisation or from a pre-trained backbone (``init``: a model card); the
same engine as pre-training (:mod:`ecgtl.train.engine`). The splits are written to the run
folder, so every run of an experiment can reuse the same records (``splits=...``); the
model is chosen on the validation split by macro-F1 and only then scored on test. A *final
fit* (``val_fraction=0``, or a splits file whose ``val`` is empty) has no validation records:
every epoch is trained and the last epoch's weights (the moving average with ``ema_decay``) are
kept; its card and ``results.json`` say so (``selected_on``).

``pooling: masked`` (1-D models) pools the last feature map only over the steps of real signal:
training crops (or the study's padded input) and the validation/test windows carry the sample
range of their record (``valid``), the model is called as ``model(x, valid)``, and the card
records ``pooling`` so that every reader of the model (``evaluate``, ``predict``, ``export``)
does the same. Pooling has no parameters: ``init`` backbones load as before.

Outputs in ``out``: ``config.yaml``, ``splits.json``, ``metrics.csv`` (per-round validation
curves), ``curves.png``, ``best.safetensors`` + ``model.json`` (the card),
``predictions_{val,test}.csv`` and ``report_{val,test}.json`` (for the splits that have records).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ecgtl.config import TRAINING_STATE_FILES, FinetuneConfig, add_config_command, compile_enabled, save_or_check_config, to_dict
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.augment import EcgAugment
from ecgtl.data.cinc2017 import Cinc2017, find_label_file, read_labels
from ecgtl.data.cinc_dataset import CincCropDataset, CincPaperDataset, prepare_cinc
from ecgtl.data.splits import kfold_splits, load_splits, make_splits, save_splits, subset_labels
from ecgtl.data.transforms import PAPER_CINC, Normalization
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.calibration import biased_probabilities, fit_class_bias
from ecgtl.evaluate.inference import PROB_COLUMNS, inference_dataset, predict_dataset, write_predictions
from ecgtl.evaluate.metrics import challenge_f1, classification_report, f1_per_class, fmt, format_report, macro_f1
from ecgtl.fileio import atomic_write
from ecgtl.models import apply_conv_layout, create_model
from ecgtl.models.card import load_weights, model_from_card, write_card
from ecgtl.models.registry import HEAD_PREFIX, resolve_name, with_current_model_name
from ecgtl.runtime import resolve_device, unwrap
from ecgtl.train.engine import BEST_FILE, Trainer, build_optimizer, round_seed, write_guard

NUM_CLASSES = len(CINC_CLASSES)


def _eval_dataset(cfg: FinetuneConfig, signals):
    return inference_dataset(signals, cfg.input, int(round(cfg.crop_seconds * cfg.fs)), int(round(cfg.hop_seconds * cfg.fs)),
                             cfg.paper_samples)


@dataclass
class FinetuneData:
    """The records of one fine-tuning run, preprocessed: per split, signals (mV, normalised, at ``fs``) and labels."""

    splits: dict[str, list[str]]  # the split file's record names (val / test in scoring order)
    train_names: list[str]  # the records trained on (a label fraction of splits["train"])
    normalization: Normalization
    signals: dict[str, list[np.ndarray]]
    labels: dict[str, np.ndarray]  # class indices into CINC_CLASSES
    prior_labels: np.ndarray | None = None  # the training records' labels in an earlier release (cfg.prior_labels), or None
    distill_probs: np.ndarray | None = None  # (n_train, NUM_CLASSES) a teacher's class probabilities (cfg.distill_probs), or None


def read_labelled_records(cfg: FinetuneConfig, progress: bool = True) -> tuple[dict, Cinc2017]:
    """All readable records of ``cfg.data`` by name (unreadable ones are reported and skipped)."""
    cinc = Cinc2017(cfg.data, labels=cfg.labels)
    records, failures = cinc.read_all(progress=progress)
    for name, why in failures:
        print(f"skipped {name}: {why}")
    if not cinc.labels:
        raise ConfigError(f"{cfg.data}: no label file; fine-tuning needs labels")
    return {r.name: r for r in records}, cinc


def _split_settings(cfg: FinetuneConfig, label_file) -> dict:
    """The settings that decide a made split, as :func:`save_splits` records them in the file's meta.

    The label file counts by its name (``REFERENCE-v3.csv`` vs ``REFERENCE.csv``), not its path: a
    run folder made with a relative ``data`` path, or moved to another machine, is the same run.
    """
    settings = {"seed": cfg.split_seed, "label_file": Path(str(label_file)).name, "folds": cfg.folds, "val_fraction": cfg.val_fraction}
    if cfg.folds:
        settings["fold"] = cfg.fold
    else:
        settings["test_fraction"] = cfg.test_fraction
    return settings


_SETTING_NAME = {"seed": "split_seed", "label_file": "labels (label file)"}


def _check_made_splits(split_file: Path, meta: dict, cfg: FinetuneConfig, label_file) -> None:
    """Refuse a run folder's ``splits.json`` made under other split settings than ``cfg``'s."""
    if "source" in meta and not any(k in meta for k in ("seed", "folds")):
        raise ConfigError(f"{split_file}: this run folder's splits were copied from {meta['source']}, but the config makes "
                          "its own (splits is not set): pass the same splits=..., use another --out, or delete "
                          f"{split_file} to make new splits")
    want = _split_settings(cfg, label_file)
    meta = {**meta, **({"label_file": Path(str(meta["label_file"])).name} if "label_file" in meta else {})}
    differ = [k for k, v in want.items() if k in meta and meta[k] != v]
    if differ:
        said = ", ".join(f"{_SETTING_NAME.get(k, k)}={meta[k]!r}" for k in differ)
        asked = ", ".join(f"{_SETTING_NAME.get(k, k)}={want[k]!r}" for k in differ)
        raise ConfigError(f"{split_file}: this run folder's splits were made with {said}, but the config asks for {asked}; "
                          f"use another --out (or delete {split_file} with the rest of the run to start over), "
                          f"or pass splits={split_file} to keep these splits")


def check_run_splits(cfg: FinetuneConfig, out: Path) -> None:
    """Refuse, before anything is written, a run whose split settings differ from those of the folder's ``splits.json``.

    Run first, so that a refused rerun leaves the folder as it was (its ``config.yaml`` included).
    """
    split_file = out / "splits.json"
    if cfg.splits or not split_file.is_file():
        return
    _, meta = load_splits(split_file, return_meta=True)
    _check_made_splits(split_file, meta, cfg, find_label_file(cfg.data, cfg.labels))


def resolve_splits(cfg: FinetuneConfig, out: Path, by_name: dict, cinc: Cinc2017) -> dict[str, list[str]]:
    """The run's splits: ``cfg.splits`` or the run folder's ``splits.json`` if present, else made and saved.

    Made splits are stratified: 80/20 + validation, or fold ``cfg.fold`` of ``cfg.folds``. A
    ``splits.json`` this run folder made earlier (e.g. by a run killed before its first
    checkpoint) is reused only if it was made with the same split settings (seed,
    fractions, folds, fold, label file); ``cfg.splits`` is the user's choice and is used as given.
    """
    split_file = Path(cfg.splits) if cfg.splits else out / "splits.json"
    if split_file.is_file():
        splits, meta = load_splits(split_file, return_meta=True)
        if not cfg.splits:
            _check_made_splits(split_file, meta, cfg, cinc.label_file)
    else:
        names = sorted(by_name)
        labels_all = [by_name[n].label for n in names]
        if cfg.folds:  # k-fold cross-validation: this run is fold ``cfg.fold`` of ``cfg.folds``
            if not 0 <= cfg.fold < cfg.folds:
                raise ConfigError(f"fold must be in 0..{cfg.folds - 1}, got {cfg.fold}")
            splits = kfold_splits(names, labels_all, k=cfg.folds, val_fraction=cfg.val_fraction, seed=cfg.split_seed)[cfg.fold]
        else:
            splits = make_splits(names, labels_all, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                                 seed=cfg.split_seed)
        if not splits["val"]:
            _val_rounds_to_zero(cfg, len(names))  # before the split is saved: a refused run leaves no splits.json
        save_splits(split_file, splits, seed=cfg.split_seed, label_file=str(cinc.label_file), folds=cfg.folds,
                    fold=cfg.fold, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction)
    if cfg.splits:
        save_splits(out / "splits.json", splits, source=str(cfg.splits))
    missing = [n for part in splits.values() for n in part if n not in by_name]
    if missing:
        raise ConfigError(f"{split_file}: {len(missing)} record(s) not readable in {cfg.data}, e.g. {missing[:3]}")
    return splits


def prepare_data(cfg: FinetuneConfig, by_name: dict, splits: dict[str, list[str]]) -> FinetuneData:
    """The label fraction of the training records, the normalisation (from them), and every split resampled to ``cfg.fs``."""
    train_names = splits["train"]
    if cfg.label_fraction < 1.0:
        train_names = subset_labels(train_names, [by_name[n].label for n in train_names], cfg.label_fraction, cfg.seed)
    names = {"train": train_names, "val": splits["val"], "test": splits["test"]}
    t0 = time.perf_counter()
    raw_train = prepare_cinc([by_name[n] for n in train_names], cfg.fs, None)
    norm = PAPER_CINC if cfg.normalization == "paper" else Normalization.from_records(raw_train)
    signals = {part: prepare_cinc([by_name[n] for n in names[part]], cfg.fs, norm) for part in names}
    labels = {part: np.array([CINC_CLASSES.index(by_name[n].label) for n in names[part]]) for part in names}
    print(f"data: {len(train_names)} train / {len(splits['val'])} val / {len(splits['test'])} test records at "
          f"{cfg.fs:g} Hz, normalisation mean {norm.mean:.4f} std {norm.std:.4f} mV ({time.perf_counter() - t0:.1f} s)")
    prior = read_prior_labels(cfg, train_names, labels["train"]) if cfg.prior_labels else None
    teacher = read_distill_probs(cfg.distill_probs, train_names, labels["train"]) if cfg.distill_probs else None
    return FinetuneData(splits, train_names, norm, signals, labels, prior, teacher)


def prior_label_file(cfg: FinetuneConfig) -> Path:
    """The label file of ``cfg.prior_labels``; a ConfigError when it is missing or is the run's own label file."""
    path = find_label_file(cfg.data, cfg.prior_labels)
    if path is None:
        raise ConfigError(f"prior_labels={cfg.prior_labels}: {Path(cfg.data) / 'REFERENCE.csv'} is missing")
    own = find_label_file(cfg.data, cfg.labels)
    if own is not None and Path(own).resolve() == Path(path).resolve():
        raise ConfigError(f"prior_labels={cfg.prior_labels}: {path} is the run's own label file (labels={cfg.labels}), so "
                          "nothing would be mixed in: give an earlier release's label file")
    return Path(path)


def read_prior_labels(cfg: FinetuneConfig, train_names: list[str], labels: np.ndarray) -> np.ndarray:
    """Class indices of ``train_names`` in the earlier release ``cfg.prior_labels`` ("original": the folder's REFERENCE.csv).

    Every training record must be in that file (a DataError names the file and a missing record);
    validation and test records are scored on the run's own labels and never read here.
    """
    path = prior_label_file(cfg)
    prior = read_labels(path)
    missing = [n for n in train_names if n not in prior]
    if missing:
        raise DataError(path, f"{len(missing)} of the {len(train_names)} training records have no label here, e.g. {missing[0]}")
    out = np.array([CINC_CLASSES.index(prior[n]) for n in train_names])
    print(f"prior labels: {path}, {int((out != labels).sum())} of {len(out)} training records labelled otherwise there "
          f"(target weight {cfg.prior_label_weight:g})")
    return out


def read_distill_probs(path: str | os.PathLike, train_names: list[str], labels: np.ndarray) -> np.ndarray:
    """A teacher's class probabilities of ``train_names``, shape ``(len(train_names), NUM_CLASSES)``, from a predictions CSV.

    The file is ``ecgtl evaluate``'s ``predictions.csv`` (columns ``record``, ``label``, ``p_N``,
    ``p_A``, ``p_O``, ``p_~``) of the teacher on the run's training records (``--records
    SPLITS:train``). A DataError names the file and the problem: no such file, a missing column or
    training record, a record listed twice, a probability that is not finite or negative, a row that
    does not sum to 1 (within 1e-3: the file has 6 decimals), or a ``label`` that is not the run's
    (the teacher was scored with other labels). Rows of other records are ignored. Nothing here can
    tell whether the teacher was fit on the run's validation records: make it from models that share
    the run's validation records (none trained on them), or the validation scores are not honest.
    Nor what labels it saw: with ``label_fraction < 1``, a teacher trained on all the labels passes
    them on, and the run no longer measures fine-tuning with that fraction of them.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")  # a byte-order mark (a spreadsheet's CSV) is not part of the header
    except FileNotFoundError:
        raise DataError(path, "no such file (distill_probs: a predictions.csv of `ecgtl evaluate` on the training records)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot be read as text: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing_cols = [c for c in ("record", *PROB_COLUMNS) if c not in (reader.fieldnames or [])]
    if missing_cols:
        raise DataError(path, f"no column {', '.join(missing_cols)} (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                              "expected a predictions.csv of `ecgtl evaluate`")
    rows: dict[str, tuple[str, list[str]]] = {}
    for row in reader:
        name = row["record"]
        if name in rows:
            raise DataError(path, f"line {reader.line_num}: record {name} is listed twice")
        rows[name] = ((row.get("label") or "").strip(), [row[c] for c in PROB_COLUMNS])
    absent = [n for n in train_names if n not in rows]
    if absent:
        raise DataError(path, f"{len(absent)} of the {len(train_names)} training records have no probabilities here, e.g. {absent[0]}")
    probs = np.empty((len(train_names), NUM_CLASSES))
    for i, (name, y) in enumerate(zip(train_names, labels)):
        label, values = rows[name]
        try:
            probs[i] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise DataError(path, f"record {name}: probabilities {values} are not all numbers") from None
        if not np.all(np.isfinite(probs[i])) or probs[i].min() < 0 or abs(probs[i].sum() - 1) > 1e-3:
            raise DataError(path, f"record {name}: probabilities {values} are not finite, non-negative and summing to 1")
        if label and label != CINC_CLASSES[int(y)]:
            raise DataError(path, f"record {name} is labelled {label} here but {CINC_CLASSES[int(y)]} in the run's labels: "
                                  "the teacher was scored with other labels")
    probs /= probs.sum(1, keepdims=True)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    agree = float((probs.argmax(1) == labels).mean())
    print(f"distillation targets: {path} (SHA-256 {digest}...), {len(train_names)} training records, the teacher's class "
          f"agrees with the label for {fmt(100 * agree, digits=1)}%, mean probability of the label "
          f"{fmt(float(probs[np.arange(len(labels)), labels].mean()))} (cut)")
    return probs.astype(np.float32)


DISTILL_PIN = "distill_probs.sha256"  # in the run folder: the SHA-256 of the teacher file the run trains towards


def pin_distill_probs(cfg: FinetuneConfig, out: Path) -> None:
    """Record the teacher file's SHA-256 in the run folder; refuse a run folder with training state whose teacher file has
    changed since (the config keeps only its path, and a resume would train towards other targets mid-run)."""
    if not cfg.distill_probs:
        return
    digest = hashlib.sha256(Path(cfg.distill_probs).read_bytes()).hexdigest()
    pin = out / DISTILL_PIN
    if pin.is_file() and any((out / f).exists() for f in TRAINING_STATE_FILES):
        old = pin.read_text().strip()
        if old != digest:
            raise ConfigError(f"{cfg.distill_probs}: the teacher's probabilities changed since the run in {out} started (SHA-256 "
                              f"{old[:16]}... then, {digest[:16]}... now), so a resume would train towards other targets: "
                              "restore the file, or use another --out")
    atomic_write(pin, digest + "\n")


def distill_cross_entropy(logits: torch.Tensor, teacher: torch.Tensor, temperature: float,
                          record_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al.'s distillation term: ``T^2`` times the cross-entropy of ``softmax(logits / T)`` against the teacher's
    probabilities at temperature ``T`` (``softmax(log p / T)``), a mean over the batch weighted by ``record_weight``.

    ``T^2`` keeps the term's gradients on the scale of a plain cross-entropy's as ``T`` changes; at
    ``T = 1`` it is the cross-entropy against the teacher's probabilities as they are. A weighted
    mean (``sum w_i l_i / sum w_i``) is what ``F.cross_entropy(weight=...)`` takes for hard labels.
    """
    target = torch.softmax(torch.log(teacher.clamp_min(1e-12)) / temperature, dim=1)
    per_record = -(target * F.log_softmax(logits / temperature, dim=1)).sum(1)
    if record_weight is None:
        return temperature ** 2 * per_record.mean()
    return temperature ** 2 * (record_weight * per_record).sum() / record_weight.sum()


class _WithTarget(torch.utils.data.Dataset):
    """A training set whose items gain a second per-record target: ``(*item, target)`` (an earlier label, or a teacher's
    probabilities)."""

    def __init__(self, ds: torch.utils.data.Dataset, target: np.ndarray):
        self.ds, self.target = ds, target

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.ds, "set_epoch"):  # random crops; the study's padded input has no epochs
            self.ds.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple:
        t = self.target[i]
        return (*self.ds[i], int(t) if t.ndim == 0 else torch.from_numpy(t))


def build_model(cfg: FinetuneConfig) -> tuple[torch.nn.Module, float]:
    """A 4-class model: the card's backbone with a new head (``cfg.init``) or random initialisation; returns (model, width).

    Its pooling is ``cfg.pooling`` (whatever the ``init`` card's).
    """
    if not cfg.init:
        model = create_model(cfg.model.name, num_classes=NUM_CLASSES, width=cfg.model.width, drop_rate=cfg.model.drop_rate)
        return _set_pooling(model, cfg), cfg.model.width
    model, card = model_from_card(cfg.init, num_classes=NUM_CLASSES, reset_head=True)
    if abs(float(card["fs"]) - cfg.fs) > 1e-6:
        print(f"warning: backbone pre-trained at {card['fs']} Hz, fine-tuning at {cfg.fs:g} Hz")
    if (model.model_name, float(card["width"])) != (resolve_name(cfg.model.name), float(cfg.model.width)):
        print(f"note: architecture from the card: {model.model_name} width {card['width']}")
        planned = getattr(create_model(cfg.model.name, num_classes=0, width=cfg.model.width), "feature_stride", None)
        if planned is not None and getattr(model, "feature_stride", planned) != planned:
            print(f"warning: the backbone {model.model_name} has a total stride of {model.feature_stride} samples, not the "
                  f"{planned} of {cfg.model.name} that the config names: its receptive field in seconds at {cfg.fs:g} Hz "
                  f"differs by a factor {planned / model.feature_stride:g} (e.g. resnet18_preact at 250 Hz spans half the "
                  "seconds of resnet18_preact_stem4); pre-train the config's model, or fine-tune at the backbone's rate")
    if cfg.model.drop_rate:
        model.head_drop.p = cfg.model.drop_rate
    return _set_pooling(model, cfg), float(card["width"])


def _set_pooling(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    """The model with ``cfg.pooling`` (a ConfigError for a pooling the model lacks, e.g. masked in a 2-D one)."""
    if callable(getattr(model, "set_pooling", None)):
        model.set_pooling(cfg.pooling)
    elif cfg.pooling != "mean":
        raise ConfigError(f"pooling={cfg.pooling} needs a model with a choice of pooling (an ecgtl ResNet), not {type(model).__name__}")
    return model


def mixup_pairs(n: int, alpha: float) -> tuple[float, torch.Tensor]:
    """Mixup (Zhang et al. 2018) of a batch of ``n``: ``(lam, perm)``, input ``lam * x + (1 - lam) * x[perm]``.

    ``lam`` ~ Beta(alpha, alpha) and ``perm`` a random permutation, both from torch's global generator.
    The loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])``.
    """
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    return lam, torch.randperm(n)


def make_trainer(cfg: FinetuneConfig, data: FinetuneData, model: torch.nn.Module, device: torch.device, out: Path,
                 progress: bool = True) -> Trainer:
    """The engine set up for fine-tuning: crops (or the study's padded input), weighted loss, validation macro-F1.

    With ``pooling: masked`` the training items carry their ``valid`` sample range and the model
    is called as ``model(x, valid)``; validation does the same (:func:`predict_dataset`).
    """
    masked = cfg.pooling == "masked"
    if cfg.input == "crop":
        train_ds = CincCropDataset(data.signals["train"], data.labels["train"], int(round(cfg.crop_seconds * cfg.fs)), seed=cfg.seed,
                                   augment=EcgAugment(fs=cfg.fs, **dataclasses.asdict(cfg.augment)), return_valid=masked)
    elif cfg.input == "paper":
        train_ds = CincPaperDataset(data.signals["train"], data.labels["train"], cfg.paper_samples, return_valid=masked)
    else:
        raise ConfigError(f"input must be 'crop' or 'paper', got {cfg.input!r}")
    prior_weight = cfg.prior_label_weight if data.prior_labels is not None else 0.0
    distill_weight = cfg.distill_weight if data.distill_probs is not None else 0.0
    if prior_weight:
        train_ds = _WithTarget(train_ds, data.prior_labels)
    elif distill_weight:
        train_ds = _WithTarget(train_ds, data.distill_probs)
    steps_per_round = math.ceil(len(train_ds) / cfg.batch_size)
    optimizer, scheduler = build_optimizer(model.parameters(), cfg.optim, steps_per_round, cfg.epochs)
    class_weight = None
    if cfg.class_weights:
        counts = np.bincount(data.labels["train"], minlength=NUM_CLASSES).astype(float)
        class_weight = torch.tensor(counts.sum() / (NUM_CLASSES * np.maximum(counts, 1)), dtype=torch.float32, device=device)

    def make_batches(r: int):
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(r)
        g = torch.Generator().manual_seed(round_seed(cfg.seed, r))
        if cfg.sampling == "balanced":  # as many draws as records, each class equally likely
            counts = np.bincount(data.labels["train"], minlength=NUM_CLASSES)
            weights = torch.as_tensor(1.0 / counts[data.labels["train"]], dtype=torch.double)
            sampler = torch.utils.data.WeightedRandomSampler(weights, len(train_ds), replacement=True, generator=g)
            return torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                                               num_workers=cfg.num_workers, drop_last=False)
        return torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=g,
                                           num_workers=cfg.num_workers, drop_last=False)

    def target_loss(logits, y, y_second):
        """Cross-entropy against the label, or (1 - w) times it plus w times that against the second target: the earlier
        release's label, or the teacher's probabilities (:func:`distill_cross_entropy`). Each term is a class-weighted
        mean over the batch (by each record's label), as mixup's two terms."""
        loss = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=cfg.label_smoothing)
        if prior_weight:
            loss = (1 - prior_weight) * loss + prior_weight * F.cross_entropy(logits, y_second, weight=class_weight,
                                                                              label_smoothing=cfg.label_smoothing)
        elif distill_weight:
            record_weight = None if class_weight is None else class_weight[y]
            loss = (1 - distill_weight) * loss + distill_weight * distill_cross_entropy(logits, y_second, cfg.distill_temperature,
                                                                                        record_weight)
        return loss

    def step_fn(m, batch):
        y_second = None
        if prior_weight or distill_weight:
            *batch, y_second = batch
            y_second = y_second.to(device)
        x, y, valid = batch if masked else (*batch, None)
        x, y = x.to(device, non_blocking=True), y.to(device)
        if masked:
            valid = valid.to(device, non_blocking=True)
        if cfg.mixup:  # drawn on the CPU generator, which the engine seeds per round (and restores on a mid-round resume)
            lam, perm = mixup_pairs(len(y), cfg.mixup)
            perm = perm.to(device)
            x = lam * x + (1 - lam) * x[perm]  # mixed where the batch already is (the GPU's memory, on a GPU)
            if masked:  # the mixed input is signal wherever either record is
                valid = torch.stack([torch.minimum(valid[:, 0], valid[perm, 0]), torch.maximum(valid[:, 1], valid[perm, 1])], 1)
        logits = (m(x, valid) if masked else m(x)).float()
        loss = target_loss(logits, y, y_second)
        if cfg.mixup:
            loss = lam * loss + (1 - lam) * target_loss(logits, y[perm], None if y_second is None else y_second[perm])
        return loss, len(y)

    def on_round_start(m, r):
        frozen = r < cfg.freeze_epochs
        for name, p in m.named_parameters():
            p.requires_grad_(not frozen or name.startswith(HEAD_PREFIX))

    evaluate = _validation_metrics(cfg, data, device, out) if data.splits["val"] else None  # None: a final fit
    return Trainer(model, optimizer, step_fn, make_batches, evaluate, out, rounds=cfg.epochs,
                   monitor="val_macro_f1" if evaluate else None, patience=cfg.patience, scheduler=scheduler, seed=cfg.seed,
                   device=device, amp=cfg.amp, on_round_start=on_round_start if cfg.freeze_epochs else None,
                   steps_per_round=steps_per_round, progress=progress, ema_decay=cfg.ema_decay,
                   best_metadata={"architecture": unwrap(model).model_name, "fs": cfg.fs})


def _validation_metrics(cfg: FinetuneConfig, data: FinetuneData, device: torch.device, out: Path):
    """The engine's ``evaluate(model, round)``: loss, macro-F1, challenge F1 and per-class F1 on the validation records."""
    val_ds, val_labels = _eval_dataset(cfg, data.signals["val"]), data.labels["val"]

    def evaluate(m, r):
        probs = predict_dataset(m, val_ds, cfg.eval_batch_size, device, source=out, pooling=cfg.pooling)
        pred = probs.argmax(1)
        f1 = f1_per_class(val_labels, pred, NUM_CLASSES)
        nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(pred)), val_labels], 1e-12, 1))))
        return {"val_loss": nll, "val_macro_f1": float(macro_f1(val_labels, pred, NUM_CLASSES)),
                "val_challenge_f1": float(challenge_f1(val_labels, pred)),
                **{f"val_f1_{c}": float(v) for c, v in zip(("N", "A", "O", "noisy"), f1)}}

    return evaluate


def score_best_model(cfg: FinetuneConfig, data: FinetuneData, out: Path, device: torch.device, best_round: int) -> dict:
    """The best model (chosen on validation, read back from its card) scored on val and test: reports and predictions.

    With the card's ``class_bias`` (``calibrate``), the probabilities are the biased ones, as every inference path gives them.
    """
    best, card = model_from_card(out / "model.json")
    best.to(device)
    results = {}
    for part in ("val", "test"):
        if not data.splits[part]:  # e.g. a selection split that leaves the test records out entirely
            continue
        t = time.perf_counter()
        probs = predict_dataset(best, _eval_dataset(cfg, data.signals[part]), cfg.eval_batch_size, device,
                                source=out / "model.json")  # with the card's pooling (model_from_card set it)
        probs = biased_probabilities(probs, card.get("class_bias"))
        seconds = time.perf_counter() - t
        report = classification_report(data.labels[part], probs, n_boot=cfg.bootstrap, seed=cfg.seed, split=part)
        report["inference_records_per_s"] = len(probs) / seconds
        atomic_write(out / f"report_{part}.json", json.dumps(report, indent=1))
        write_predictions(out / f"predictions_{part}.csv", data.splits[part], data.labels[part], probs)
        results[part] = report
        print(f"== {part} ({len(probs)} records, {'last' if not data.splits['val'] else 'best'} round {best_round}) ==")
        print(format_report(report))
    return results


def _val_rounds_to_zero(cfg: FinetuneConfig, n_records: int) -> None:
    """Refuse a ``val_fraction`` > 0 that gives 0 of ``n_records`` records (a final fit is asked for with 0, not by accident)."""
    if cfg.val_fraction > 0 and not cfg.splits and round(cfg.val_fraction * n_records) == 0:
        raise ConfigError(f"val_fraction={cfg.val_fraction:g} of {n_records} records rounds to 0 validation records: raise it, "
                          "or set val_fraction=0 for a final fit without validation (every epoch trained, the last kept)")


def check_final_fit(cfg: FinetuneConfig) -> None:
    """A split without validation records: refuse ``calibrate`` (it fits on them) and say what a final fit keeps.

    A ``val_fraction`` that rounded to 0 records was refused before the split was made or saved
    (:func:`_precheck_val_fraction`, :func:`resolve_splits`).
    """
    if cfg.calibrate:
        raise ConfigError(f"{cfg.splits}: its val part is empty, and calibrate=true fits class biases on validation "
                          "records: give a split with validation records, or set calibrate=false")
    kept = "the moving average of the weights (ema_decay) after the last epoch" if cfg.ema_decay else "the last epoch's weights"
    print(f"no validation records: a final fit, all {cfg.epochs} epochs trained and {kept} kept "
          "(nothing is chosen on validation; patience is not used)")


def _precheck_val_fraction(cfg: FinetuneConfig, out: Path) -> None:
    """Before anything is written: a ``val_fraction`` that would round to 0 records of the label file's."""
    if cfg.val_fraction > 0 and not cfg.splits and not (out / "splits.json").is_file():
        label_file = find_label_file(cfg.data, cfg.labels)
        if label_file is not None and Path(label_file).is_file():
            _val_rounds_to_zero(cfg, len(read_labels(label_file)))


def run_finetune(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Read, split and preprocess CinC 2017, train (resuming a checkpoint in ``cfg.out``), then score the best model."""
    out = Path(cfg.out)
    _precheck_val_fraction(cfg, out)
    if cfg.prior_labels:  # before anything is read or written
        prior_label_file(cfg)
    if cfg.distill_probs and not Path(cfg.distill_probs).is_file():
        raise DataError(cfg.distill_probs, "no such file (distill_probs: a predictions.csv of `ecgtl evaluate` on the training records)")
    out.mkdir(parents=True, exist_ok=True)
    check_run_splits(cfg, out)
    save_or_check_config(cfg, out / "config.yaml", canonical=with_current_model_name)
    pin_distill_probs(cfg, out)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    by_name, cinc = read_labelled_records(cfg, progress)
    splits = resolve_splits(cfg, out, by_name, cinc)
    if not splits["val"]:
        check_final_fit(cfg)
    data = prepare_data(cfg, by_name, splits)
    model, width = build_model(cfg)
    model.to(device)
    apply_conv_layout(model, cfg.conv_layout, device)  # same weights; channels-last 2-D kernels on CUDA
    if compile_enabled(cfg.compile, device):
        model = torch.compile(model)  # the engine saves the plain module's weights (unwrap)

    t_train = time.perf_counter()
    state = make_trainer(cfg, data, model, device, out, progress).fit()
    train_minutes = (time.perf_counter() - t_train) / 60

    with write_guard(out):  # a full disk: an error naming the file, not a traceback
        return _write_outputs(cfg, data, out, device, state, unwrap(model).model_name, width, train_minutes)


def _write_outputs(cfg: FinetuneConfig, data: FinetuneData, out: Path, device: torch.device, state, architecture: str,
                   width: float, train_minutes: float) -> dict:
    """The card (for the weights the engine recorded), the scores of the best model, the curves, ``results.json``.

    With ``calibrate``, per-class decision biases are fitted on the validation records' probabilities
    and written into the card (``class_bias``), so every reader of the card applies them.
    """
    fields = dict(architecture=architecture, width=width,
                  num_classes=NUM_CLASSES, classes=list(CINC_CLASSES), fs=cfg.fs,
                  normalization={"mean": data.normalization.mean, "std": data.normalization.std, "units": "mV"},
                  input=cfg.input, pooling=cfg.pooling, window_samples=int(round(cfg.crop_seconds * cfg.fs)),
                  hop_samples=int(round(cfg.hop_seconds * cfg.fs)), paper_samples=cfg.paper_samples,
                  task="cinc2017", init=cfg.init, seed=cfg.seed, best_round=state.best_round, selected_on=_selected_on(data),
                  rounds_run=state.round, steps=state.step, train_records=len(data.train_names), config=to_dict(cfg))
    if cfg.calibrate:  # before the card is written, so that no card without the biases ever exists
        best = _set_pooling(create_model(architecture, num_classes=NUM_CLASSES, width=width), cfg)
        best.load_state_dict(load_weights(out / BEST_FILE, expected_sha256=state.best_sha256 or None))
        val_probs = predict_dataset(best.to(device), _eval_dataset(cfg, data.signals["val"]), cfg.eval_batch_size, device,
                                    source=out / BEST_FILE, pooling=cfg.pooling)
        bias, val_f1 = fit_class_bias(val_probs, data.labels["val"])
        print(f"calibration on {len(val_probs)} validation records: class biases {np.round(bias, 2).tolist()}, "
              f"validation macro-F1 {fmt(macro_f1(data.labels['val'], val_probs.argmax(1), NUM_CLASSES))} -> {fmt(val_f1)}")
        fields["class_bias"] = bias.tolist()
    write_card(out / "model.json", out / BEST_FILE, expected_sha256=state.best_sha256 or None, **fields)
    results = {"best_round": state.best_round, "selected_on": _selected_on(data), "rounds_run": state.round,
               "stopped_early": state.stopped_early,
               "train_minutes_this_session": round(train_minutes, 2), **score_best_model(cfg, data, out, device, state.best_round)}
    plot_curves(out / "metrics.csv", out / "curves.png")
    atomic_write(out / "results.json", json.dumps(results, indent=1, default=float))
    return results


def _selected_on(data: FinetuneData) -> str:
    """How the kept weights were chosen, as the card and ``results.json`` record it."""
    if data.splits["val"]:
        return f"validation macro-F1 (best epoch, {len(data.splits['val'])} validation records)"
    return "none: a final fit without validation records (the last epoch's weights)"


def plot_curves(metrics_csv: Path, png: Path) -> None:
    """Training loss and validation F1 per round (what people look at to judge convergence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    r = [int(x["round"]) for x in rows]
    validated = "val_macro_f1" in rows[0]  # a final fit (no validation records) logs the training loss only
    fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5, 3.5), squeeze=False)
    a = axes[0, 0]
    a.plot(r, [float(x["train_loss"]) for x in rows], label="train loss")
    if validated:
        a.plot(r, [float(x["val_loss"]) for x in rows], label="val loss")
        b = axes[0, 1]
        b.plot(r, [float(x["val_macro_f1"]) for x in rows], label="val macro-F1 (4 classes)")
        b.plot(r, [float(x["val_challenge_f1"]) for x in rows], label="val challenge F1 (N, A, O)")
        b.set_xlabel("epoch"), b.legend(), b.set_title("validation")
    a.set_xlabel("epoch"), a.legend(), a.set_title("loss")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def add_parser(subparsers) -> None:
    add_config_command(subparsers, "finetune", FinetuneConfig, run_finetune, __doc__,
                       {"data": {"help": "CinC folder (RECORDS, REFERENCE*.csv, .mat/.hea)"},
                                   "init": {"help": "pre-trained model card (model.json) to start from"},
                                   "out": {"help": "run folder"}, "seed": {"type": int}})
