"""One config system: dataclasses, YAML presets, ``key=value`` overrides.

A run's configuration is a dataclass (``FinetuneConfig``, ...). Presets are YAML files in
``ecgtl/configs/`` (``<command>-<name>.yaml``: ``cpu``, ``gpu``, ``paper``, ...) or any path; the command line overrides single
fields with ``--set optim.lr=3e-4``. The resolved config is written next to the run's
outputs, so every number a run produced says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from ecgtl.constants import PAPER_ADAM, POOLINGS
from ecgtl.errors import ConfigError
from ecgtl.fileio import atomic_write
from ecgtl.tasks.registry import PRETEXT_TASKS

T = TypeVar("T")


@dataclass
class OptimConfig:
    """The optimiser and its learning-rate schedule.

    ``name="adamw"`` (the default): AdamW with the study's Adam settings (lr 1e-3, betas
    0.9/0.98, eps 1e-9), decoupled ``weight_decay``. ``name="sgd"``: SGD with ``lr``,
    ``momentum`` and ``weight_decay`` (an L2 term added to the gradient); its step scales with
    the gradient, unlike Adam's. ``betas`` and ``eps`` are Adam's only (SGD ignores them);
    ``momentum`` is SGD's only (AdamW ignores it). ``schedule`` and ``warmup_epochs`` apply to both.
    """

    name: str = "adamw"  # "adamw" or "sgd"
    lr: float = PAPER_ADAM["lr"]
    betas: tuple[float, float] = PAPER_ADAM["betas"]  # AdamW only
    eps: float = PAPER_ADAM["eps"]  # AdamW only
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" (the study) or "cosine" (with linear warm-up)
    warmup_epochs: float = 0.0

    def __post_init__(self):
        _choice("optim.name", self.name, ("adamw", "sgd"))
        _choice("optim.schedule", self.schedule, ("constant", "cosine"))
        _number("optim.lr", self.lr, 0, 10, lo_open=True, why="learning rate")
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers [beta1, beta2] (Adam's decay rates), got {betas!r}")
        for i, b in enumerate(betas):
            _number(f"optim.betas[{i}]", b, 0, 1, hi_open=True, why="Adam's decay rate")
        _number("optim.eps", self.eps, 0, 1, lo_open=True, hi_open=True, why="Adam's denominator term")
        _number("optim.momentum", self.momentum, 0, 1, hi_open=True, why="SGD momentum")
        _number("optim.weight_decay", self.weight_decay, 0, 1)
        _number("optim.warmup_epochs", self.warmup_epochs, 0, MAX_EPOCHS, unit="epochs")


@dataclass
class ModelConfig:
    name: str = "resnet18_postact"  # a registered model (ecgtl.models.list_models()) or an older alias (resnet18, resnet18v2)
    width: float = 1.0  # channel multiplier (0.25 -> 16..128 channels)
    drop_rate: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"model.name must name a registered model (e.g. resnet18_postact), got {self.name!r}")
        _number("model.width", self.width, 0, MAX_WIDTH, lo_open=True, why="channel multiplier: 1.0 = 64..512 channels")
        _number("model.drop_rate", self.drop_rate, 0, 1, hi_open=True, why="dropout probability before the head")


@dataclass
class AugmentConfig:
    """Training-time ECG augmentation (:class:`ecgtl.data.augment.EcgAugment`); 0 turns each off."""

    scale: float = 0.0  # amplitude times U[1 - scale, 1 + scale]
    flip: float = 0.0  # probability of inverting the sign
    wander: float = 0.0  # baseline wander (0.05-0.5 Hz) up to this amplitude, normalised units
    noise: float = 0.0  # white noise with a standard deviation up to this, normalised units
    stretch: float = 0.0  # time stretch of the record by U[1 - stretch, 1 + stretch]
    shift: float = 0.0  # s of a short record's front padding moved behind it, up to this (U[0, shift])

    def __post_init__(self):
        _number("augment.scale", self.scale, 0, 1, hi_open=True, why="relative amplitude change")
        _number("augment.flip", self.flip, 0, 1, why="probability")
        _number("augment.wander", self.wander, 0, 10, why="amplitude in normalised units")
        _number("augment.noise", self.noise, 0, 10, why="standard deviation in normalised units")
        _number("augment.stretch", self.stretch, 0, 1, hi_open=True, why="relative duration change")
        _number("augment.shift", self.shift, 0, 60, unit="s", why="front padding of a short record moved behind it")


@dataclass
class FinetuneConfig:
    """Fine-tuning on PhysioNet/CinC 2017 (see ``ecgtl finetune --help``)."""

    data: str = "data/raw/challenge-2017/1.0.0/training2017"
    labels: str = "v3"  # "v3", "original" or a label file
    splits: str | None = None  # a splits JSON to reuse; default: made from split_seed and saved in the run folder
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.05  # 0: no validation records (a final fit: every epoch trained, the last kept)
    folds: int = 0  # k-fold cross-validation instead of the 80/20 split (0: off); run each fold with fold=i
    fold: int = 0
    label_fraction: float = 1.0  # fraction of the training records used (low-label fine-tuning)
    fs: float = 250.0  # Hz of the model input (records are resampled from 300 Hz)
    input: str = "crop"  # "crop": random crops in training, sliding windows at test; "paper": last 65.5 s zero-padded
    crop_seconds: float = 16.384  # training crop (and test window) length, s
    hop_seconds: float = 8.192  # hop of the test-time sliding windows, s
    paper_samples: int = 16_384  # input length of input="paper"
    normalization: str = "train"  # "train": mean/std of the training records; "paper": (x - 0.0075) / 0.2373
    # global pooling of the last feature map: "mean" over every step, zero padding included (the study);
    # "masked": only the steps over real signal (short records' padding left out; 1-D models only);
    # "max": each feature's largest value over every step
    pooling: str = "mean"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: str | None = None  # pre-trained backbone (a model card JSON or .safetensors); None = random init
    freeze_epochs: int = 0  # train only the new head for this many epochs first
    class_weights: bool = False  # inverse-frequency weighted cross-entropy
    sampling: str = "shuffle"  # "shuffle": each record once an epoch; "balanced": records drawn with equal class frequency
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    mixup: float = 0.0  # mixup of training pairs, lam ~ Beta(mixup, mixup) (0: off; e.g. 0.2)
    # labels of an earlier release of the same records ("original": the folder's REFERENCE.csv, CinC 2017's first
    # labels; or a label file), mixed into the training loss: (1 - w) * CE(this label) + w * CE(the earlier one)
    prior_labels: str | None = None
    prior_label_weight: float = 0.0  # w above; 0 = off. A record whose label did not change has its plain loss
    # knowledge distillation (Hinton et al. 2015): a teacher's class probabilities per training record, the
    # predictions.csv of `ecgtl evaluate --records SPLITS:train` (e.g. of a seed ensemble), mixed into the training
    # loss: (1 - w) * CE(label) + w * T^2 * CE(teacher's probabilities at temperature T, the model's logits / T), both
    # terms class-weighted by each record's label when class_weights is on
    distill_probs: str | None = None
    distill_weight: float = 0.0  # w above; 0 = off
    distill_temperature: float = 1.0  # T above: the teacher's log-probabilities and the model's logits are divided by it
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema_decay: float = 0.0  # exponential moving average of the weights, evaluated and kept (0: off; e.g. 0.995)
    calibrate: bool = False  # per-class decision biases fitted on validation for macro-F1, stored in the card
    epochs: int = 200
    patience: int = 50  # early stopping on validation macro-F1
    batch_size: int = 64
    eval_batch_size: int = 128
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool | str = False  # torch.compile the model: true, false or auto (on CUDA); off by default (variable shapes)
    conv_layout: str = "auto"  # 1-D convolutions as "1d", or "2d" channels-last (faster on GPU); auto = 2d on CUDA
    out: str = "runs/finetune"
    bootstrap: int = 1000  # bootstrap replicates of the confidence intervals

    def __post_init__(self):
        _text("data", self.data, "a CinC 2017 folder")
        _text("labels", self.labels, "v3, original or a label file")
        _text("out", self.out, "a run folder")
        _choice("input", self.input, ("crop", "paper"))
        _choice("normalization", self.normalization, ("train", "paper"))
        _sections(self, ModelConfig, OptimConfig)
        _choice("pooling", self.pooling, POOLINGS)
        if self.pooling == "masked" and _is_2d_model(self.model.name):
            raise ConfigError(f"pooling=masked applies to 1-D models over raw ECG samples; model.name={self.model.name} is a "
                              "2-D (spectrogram) model, whose pooling also runs over frequency: use pooling=mean")
        _device(self.device)
        _choice("conv_layout", self.conv_layout, ("auto", "1d", "2d"))
        self.compile = _on_off_auto("compile", self.compile)
        _choice("sampling", self.sampling, ("shuffle", "balanced"))
        _number("label_smoothing", self.label_smoothing, 0, 1, hi_open=True, why="probability mass spread over the classes")
        _number("mixup", self.mixup, 0, 10, why="alpha of the Beta(alpha, alpha) mixing weights; 0 = off")
        _number("ema_decay", self.ema_decay, 0, 1, hi_open=True, why="0 = off, else the EMA's decay per optimiser step")
        _number("prior_label_weight", self.prior_label_weight, 0, 1, hi_open=True,
                why="weight of the earlier release's label in the training target; 0 = off")
        if self.prior_labels is not None:
            _text("prior_labels", self.prior_labels, "original or a label file")
            if self.prior_labels == "v3":
                raise ConfigError("prior_labels=v3 names the run's own labels: give an earlier release (original, or a label file)")
        if (self.prior_labels is None) != (self.prior_label_weight == 0):
            raise ConfigError("prior_labels and prior_label_weight go together: set both (e.g. prior_labels=original "
                              f"prior_label_weight=0.3) or neither; got prior_labels={self.prior_labels!r}, "
                              f"prior_label_weight={self.prior_label_weight:g}")
        _number("distill_weight", self.distill_weight, 0, 1, why="weight of the teacher's probabilities in the training target; 0 = off")
        _number("distill_temperature", self.distill_temperature, 0.1, 20, why="softmax temperature of the distillation term")
        if self.distill_probs is not None:
            _text("distill_probs", self.distill_probs, "a predictions.csv of `ecgtl evaluate` on the training records")
        if (self.distill_probs is None) != (self.distill_weight == 0):
            raise ConfigError("distill_probs and distill_weight go together: set both (e.g. distill_probs=teacher/predictions.csv "
                              f"distill_weight=0.5) or neither; got distill_probs={self.distill_probs!r}, "
                              f"distill_weight={self.distill_weight:g}")
        if self.distill_probs is None and self.distill_temperature != 1.0:
            raise ConfigError(f"distill_temperature={self.distill_temperature:g} applies only with distill_probs and distill_weight "
                              "(knowledge distillation); set them too, or leave the temperature at 1")
        if self.distill_probs is not None and self.prior_labels is not None:
            raise ConfigError("distill_probs and prior_labels are two alternative second targets: set one of them")
        if not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"augment must be a section of {', '.join(f.name for f in dataclasses.fields(AugmentConfig))}")
        _integer("split_seed", self.split_seed, 0, MAX_SEED)
        _integer("seed", self.seed, 0, MAX_SEED)
        _number("test_fraction", self.test_fraction, 0, 1, lo_open=True, hi_open=True, why="fraction of the records held out for test")
        _number("val_fraction", self.val_fraction, 0, 1, hi_open=True,
                why="fraction of the records for validation: early stopping and model selection; 0 = none, a final fit "
                    "on all non-test records that trains every epoch and keeps the last")
        if self.val_fraction == 0 and self.calibrate:
            raise ConfigError("calibrate=true fits class biases on validation records, and val_fraction=0 leaves none: "
                              "calibrate a model trained with validation records, or set calibrate=false")
        if self.test_fraction + self.val_fraction >= 1:
            raise ConfigError(f"test_fraction + val_fraction must be below 1 to leave training records, "
                              f"got {self.test_fraction:g} + {self.val_fraction:g}")
        _integer("folds", self.folds, 0, 100, why="0 = off, else k of k-fold cross-validation")
        if self.folds == 1:
            raise ConfigError("folds must be 0 (off) or at least 2 (k-fold cross-validation), got 1")
        _integer("fold", self.fold, 0, None)
        if self.folds and self.fold >= self.folds:
            raise ConfigError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if not self.folds and self.fold:
            raise ConfigError(f"fold={self.fold} needs folds (k-fold cross-validation is off: folds=0); set folds=K")
        _number("label_fraction", self.label_fraction, 0, 1, lo_open=True, why="fraction of the training records used")
        _number("fs", self.fs, *FS_RANGE_HZ, unit="Hz", why="the model's input rate")
        _number("crop_seconds", self.crop_seconds, 0, MAX_INPUT_SECONDS, lo_open=True, unit="s", why="training crop and test window")
        _samples("crop_seconds", self.crop_seconds, self.fs)
        _number("hop_seconds", self.hop_seconds, 0, self.crop_seconds, lo_open=True, unit="s",
                why="hop of the test windows; at most crop_seconds, or samples are skipped")
        if round(self.hop_seconds * self.fs) < 1:
            raise ConfigError(f"hop_seconds={self.hop_seconds:g} s is less than one sample at fs={self.fs:g} Hz")
        _integer("paper_samples", self.paper_samples, MIN_INPUT_SAMPLES, MAX_INPUT_SAMPLES, unit="samples",
                 why="the paper input's length at fs")
        _integer("freeze_epochs", self.freeze_epochs, 0, MAX_EPOCHS, unit="epochs")
        _integer("epochs", self.epochs, 1, MAX_EPOCHS)
        _integer("patience", self.patience, 1, None, why="epochs without a better validation score before stopping")
        _integer("batch_size", self.batch_size, 1, MAX_BATCH)
        _integer("eval_batch_size", self.eval_batch_size, 1, MAX_BATCH)
        _integer("num_workers", self.num_workers, 0, MAX_WORKERS, why="data-loading processes; 0 = in the main process")
        _integer("bootstrap", self.bootstrap, 0, 1_000_000, why="bootstrap replicates of the confidence intervals; 0 = off")
        _warmup(self.optim, self.epochs, "epochs")


@dataclass
class PretrainConfig:
    """Pre-training on the prepared store (see ``ecgtl pretrain --help``)."""

    store: str = "data/store"
    task: str = "beat"  # a name of ecgtl.tasks.PRETEXT_TASKS: beat | rhythm | heart_rate | future
    sources: list | None = None  # store sources to use, e.g. [icentia11k-wfdb, mitdb]; None = all
    patient_fraction: float = 1.0  # fraction of the training patients (data-size ablation)
    val_fraction: float = 0.05  # patients held out for validation
    fs: float = 250.0  # Hz of the model input; frames are resampled from the store's 250 Hz when different
    frame_samples: int = 4096  # samples at ``fs`` (the study: 512, 2048, 4096 at 250 Hz); future task: one frame
    context_frames: int = 8  # future task: context frames before the predicted one
    frames_per_patient: int = 64  # frames drawn from each training patient per round
    val_frames_per_patient: int = 32
    rounds: int = 10
    checkpoint_every: int | None = None  # optimiser steps between mid-round checkpoints (None: after each round)
    patience: int | None = None
    batch_size: int = 32
    num_workers: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on GPU
    compile: bool | str = "auto"  # torch.compile the model: true, false or auto (= on CUDA: 2.2x eager there, see README)
    conv_layout: str = "auto"  # 1-D convolutions as "1d", or "2d" channels-last (faster on GPU); auto = 2d on CUDA
    sync_bn: bool = True  # SyncBatchNorm across DDP ranks, so a multi-GPU run equals one big batch
    out: str = "runs/pretrain"

    def __post_init__(self):
        _text("store", self.store, "a store folder (ecgtl prepare --out)")
        _text("out", self.out, "a run folder")
        _choice("task", self.task, tuple(PRETEXT_TASKS))
        _sections(self, ModelConfig, OptimConfig)
        _device(self.device)
        _choice("conv_layout", self.conv_layout, ("auto", "1d", "2d"))
        self.compile = _on_off_auto("compile", self.compile)
        if self.sources is not None and (not isinstance(self.sources, list) or not self.sources
                                         or not all(isinstance(s, str) and s.strip() for s in self.sources)):
            raise ConfigError(f"sources must list store sources (e.g. [icentia11k-wfdb, mitdb]) or be null for all, got {self.sources!r}")
        _integer("seed", self.seed, 0, MAX_SEED)
        _number("patient_fraction", self.patient_fraction, 0, 1, lo_open=True, why="fraction of the training patients")
        _number("val_fraction", self.val_fraction, 0, 1, lo_open=True, hi_open=True, why="fraction of the patients held out for validation")
        _number("fs", self.fs, *FS_RANGE_HZ, unit="Hz", why="the model's input rate")
        _integer("frame_samples", self.frame_samples, MIN_INPUT_SAMPLES, MAX_INPUT_SAMPLES, unit="samples",
                 why=f"at fs; the model downsamples by 32 (64 with a stride-4 stem) and needs at least {MIN_INPUT_SAMPLES}")
        _integer("context_frames", self.context_frames, 1, 64, unit="frames", why="future task: frames before the predicted one")
        if self.task == "future" and self.frame_samples * (self.context_frames + 1) > MAX_INPUT_SAMPLES:
            raise ConfigError(f"frame_samples x (context_frames + 1) must be at most {MAX_INPUT_SAMPLES} samples (one input of "
                              f"the future task), got {self.frame_samples} x {self.context_frames + 1}")
        _integer("frames_per_patient", self.frames_per_patient, 1, 1_000_000, unit="frames", why="per training patient and round")
        _integer("val_frames_per_patient", self.val_frames_per_patient, 1, 1_000_000, unit="frames")
        _integer("rounds", self.rounds, 1, MAX_EPOCHS)
        if self.checkpoint_every is not None:
            _integer("checkpoint_every", self.checkpoint_every, 1, None, why="optimiser steps between checkpoints, or null: after each round")
        if self.patience is not None:
            _integer("patience", self.patience, 1, None, why="rounds without a better validation loss, or null: no early stopping")
        _integer("batch_size", self.batch_size, 1, MAX_BATCH)
        _integer("num_workers", self.num_workers, 0, MAX_WORKERS, why="data-loading processes; 0 = in the main process")
        _warmup(self.optim, self.rounds, "rounds")


# ----------------------------------------------------------------------------- validation
FS_RANGE_HZ = (50.0, 1000.0)  # model input rates: the study uses 50-250 Hz; CinC 2017 is recorded at 300 Hz
MIN_INPUT_SAMPLES = 256  # the ResNets downsample by 32 (8 time steps left; 4 at stride 64); the STFT models need > 32 samples
MAX_INPUT_SAMPLES = 1 << 20  # one Icentia11k segment (1,048,577 samples); longer inputs only exhaust memory
MAX_INPUT_SECONDS = 300.0  # CinC 2017 records are 9-61 s
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_WORKERS = 256
MAX_SEED = 2**32 - 1  # numpy's legacy seeding accepts 0..2**32-1
MAX_WIDTH = 16.0  # width 16 is 1,024..8,192 channels
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def _is_2d_model(name: str) -> bool:
    """Whether a model name is one of the 2-D (spectrogram) models (``*_2d``, ``*_2d_stft``; their aliases too).

    By name: config sits beside the models package and does not import it; fine-tuning checks
    the model itself too (a ``--init`` card's architecture).
    """
    return re.search(r"_2d(_|$)", str(name)) is not None


def _on_off_auto(key: str, value) -> bool | str:
    """``true`` / ``false`` / ``auto`` (YAML or --set text) as True / False / "auto"."""
    if isinstance(value, bool) or value == "auto":
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{key} must be true, false or auto; got {value!r}")


def compile_enabled(setting: bool | str, device) -> bool:
    """Whether ``compile`` (true / false / auto) compiles on ``device`` (a ``torch.device``): auto = on CUDA only."""
    return setting is True or (setting == "auto" and getattr(device, "type", str(device)) == "cuda")


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        if not lo_open and not hi_open:
            return f"between {_fmt(lo)} and {_fmt(hi)}"
        return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'greater than' if lo_open else 'at least'} {_fmt(lo)}"
    return f"{'less than' if hi_open else 'at most'} {_fmt(hi)}"


def _number(key: str, value, lo=None, hi=None, *, lo_open=False, hi_open=False, unit: str = "", why: str = "") -> None:
    """Refuse a value that is not a finite number within the bounds; the message names the key, the bounds and the unit."""
    ok = _is_number(value) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        what = _bounds(lo, hi, lo_open, hi_open) if (lo is not None or hi is not None) else "a finite number"
        raise ConfigError(f"{key} must be {what}{' ' + unit if unit else ''}{f' ({why})' if why else ''}, got {value!r}")


def _integer(key: str, value, lo=None, hi=None, *, unit: str = "", why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key} must be a whole number{' of ' + unit if unit else ''}, got {value!r}")
    _number(key, value, lo, hi, unit=unit, why=why)


def _samples(key: str, seconds: float, fs: float) -> None:
    n = int(round(seconds * fs))
    if n < MIN_INPUT_SAMPLES:
        raise ConfigError(f"{key}={seconds:g} s is {n} samples at fs={fs:g} Hz; the model needs at least {MIN_INPUT_SAMPLES} "
                          f"samples ({MIN_INPUT_SAMPLES / fs:g} s at this rate)")


def _text(key: str, value, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def _device(value) -> None:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")


def _sections(cfg, model_cls, optim_cls) -> None:
    if not isinstance(cfg.model, model_cls):
        raise ConfigError(f"model must be a section (model.name, model.width, ...), got {cfg.model!r}")
    if not isinstance(cfg.optim, optim_cls):
        raise ConfigError(f"optim must be a section (optim.lr, optim.name, ...), got {cfg.optim!r}")


def _warmup(optim, total: int, unit: str) -> None:
    if optim.schedule == "cosine" and optim.warmup_epochs > total:
        raise ConfigError(f"optim.warmup_epochs ({optim.warmup_epochs:g}) exceeds {unit} ({total}): the learning rate would "
                          f"never reach optim.lr; lower optim.warmup_epochs")


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list"}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """``value`` as type ``typ``; a value that cannot be converted is a :class:`ConfigError` naming ``key``."""
    try:
        return _convert(value, typ, key)
    except (ValueError, TypeError, OverflowError):
        optional = typ in (str | None, int | None, float | None, list | None)
        base = {str | None: str, int | None: int, float | None: float, list | None: list}.get(typ, typ)
        name = _TYPE_NAMES.get(base, getattr(base, "__name__", str(base)))
        raise ConfigError(f"{key}: expected {name}{' or null' if optional else ''}, got {value!r}") from None


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise TypeError(key)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = float(value)  # "1e3"
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key}: expected a whole number, got {value}")
        return int(value)
    if isinstance(value, int):
        return value
    raise TypeError(key)


def _to_float(value: Any) -> float:
    if isinstance(value, (bool, dict, list, tuple)) or value is None:
        raise TypeError(value)
    return float(value)


def _convert(value: Any, typ: Any, key: str) -> Any:
    origin = getattr(typ, "__origin__", None)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(typ, value, prefix=key + ".")
    if value is None:
        return None
    if typ is str or typ == (str | None):
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)  # YAML reads "2024" or "on" as a number or a boolean
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(typ.__args__):
            raise ConfigError(f"{key}: expected {len(typ.__args__)} numbers, e.g. [0.9, 0.98], got {value!r}")
        return tuple(_to_float(v) for v in items)
    if typ == (list | None) or typ is list:
        if isinstance(value, dict):
            raise TypeError(value)
        return list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
    if typ is float or typ == (float | None):
        return _to_float(value)
    if typ is int or typ == (int | None):
        return _to_int(value, key)
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, refusing unknown keys."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def preset_path(name_or_path: str, kind: str) -> Path:
    """A preset by name (:func:`preset_names`: ``ecgtl/configs/<kind>-<name>.yaml``) or a YAML path."""
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    path = resources.files("ecgtl") / "configs" / f"{kind}-{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no {kind} preset {name_or_path!r}; available: {', '.join(preset_names(kind))} (or a YAML path)")
    return Path(str(path))


def preset_names(kind: str) -> list[str]:
    """The names of the presets shipped for ``kind`` (``finetune``: cpu, gpu, paper), from ``ecgtl/configs/<kind>-<name>.yaml``."""
    return sorted(p.name[len(kind) + 1:-5] for p in (resources.files("ecgtl") / "configs").iterdir()
                  if p.name.startswith(kind + "-") and p.name.endswith(".yaml"))


def _set_override(data: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    value = yaml.safe_load(raw)
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {p} is not a section")
    node[parts[-1]] = value


def load_config(cls: type[T], preset: str | None, kind: str, overrides: list[str] = ()) -> T:
    """Defaults of ``cls``, then the preset's values, then the ``key=value`` overrides."""
    data = to_dict(cls())
    if preset:
        path = preset_path(preset, kind)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        _merge(data, loaded)
    for o in overrides:
        _set_override(data, o)
    return from_dict(cls, data)


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def add_config_command(subparsers, name: str, cls: type, run, description: str,
                       shortcuts: dict[str, dict]) -> None:
    """Register a command whose options are a preset, ``--set key=value`` overrides and a few shortcuts.

    ``shortcuts`` maps a config field to ``add_argument`` keyword arguments (``--out`` for
    ``out=...``); ``run(cfg, progress=...)`` does the work.
    """
    import argparse

    p = subparsers.add_parser(name, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help=f"preset name ({', '.join(preset_names(name))}) or YAML path (default: cpu)")
    for field_name, kwargs in shortcuts.items():
        p.add_argument("--" + field_name.replace("_", "-"), dest=field_name, **kwargs)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--no-progress", action="store_true")

    def run_from_args(args) -> int:
        overrides = list(args.set) + [f"{k}={getattr(args, k)}" for k in shortcuts if getattr(args, k) is not None]
        run(load_config(cls, args.preset, name, overrides), progress=not args.no_progress)
        return 0

    p.set_defaults(func=run_from_args)


# fields a resumed run may change: how long to train, where and with what hardware
RESUMABLE_CHANGES = {"epochs", "rounds", "checkpoint_every", "patience", "out", "num_workers", "device", "amp", "compile", "conv_layout", "bootstrap",
                     "eval_batch_size"}


#: files that make a run folder's config binding: what training wrote
TRAINING_STATE_FILES = {"checkpoint.pt", "best.safetensors", "best-pending.safetensors", "metrics.csv", "model.json",
                        "backbone.safetensors"}


def save_or_check_config(cfg, path: str | os.PathLike, canonical=None, resumable=RESUMABLE_CHANGES) -> None:
    """Write the run's config, or, when the run folder already holds a run, refuse a different one.

    A run folder belongs to one configuration as soon as it holds training state (a
    checkpoint, weights, a metrics log, a card): resuming it under other settings would mix
    two experiments in one result. Only the fields of :data:`RESUMABLE_CHANGES` may differ
    (e.g. more epochs); ``resumable=()`` allows none (a finished run reused as it is). Before that (a run that failed at start-up, e.g. out of GPU memory)
    the new config replaces the old one; the files written before training guard themselves
    (``splits.json`` its split settings, pre-training's ``training_set.json`` its patients). Fields the
    saved config lacks (added in a later version) count as their defaults; ``canonical(dict)``
    may rewrite both sides before the comparison (e.g. an older model name to its current one).
    """
    path = Path(path)
    canonical = canonical or (lambda d: d)
    new = canonical(_plain(to_dict(cfg)))
    state = [p.name for p in path.parent.iterdir() if p.name in TRAINING_STATE_FILES] if path.parent.is_dir() else []
    if path.is_file() and state:
        try:
            saved = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable run config ({type(exc).__name__}); this folder holds a run "
                              f"({', '.join(sorted(state)[:3])}): use another --out, or delete the folder to start over") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{path}: not a run config (expected a mapping); use another --out, or delete the folder to start over")
        old = _plain(to_dict(type(cfg)()))
        _merge(old, saved)
        old = canonical(old)
        changed = sorted(k for k in set(old) | set(new) if k not in resumable and old.get(k) != new.get(k))
        if changed:
            raise ConfigError(f"{path}: this run folder holds a run with other settings ({', '.join(changed)}); "
                              "use another --out, or delete the folder to start over")
    atomic_write(path, yaml.safe_dump(new, sort_keys=False))
