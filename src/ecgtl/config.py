"""One config system: dataclasses, YAML presets, ``key=value`` overrides.

A run's configuration is a dataclass (``FinetuneConfig``, ...). Presets are YAML files in
``ecgtl/configs/`` (``cpu``, ``paper``) or any path; the command line overrides single
fields with ``--set optim.lr=3e-4``. The resolved config is written next to the run's
outputs, so every number a run produced says how it was made.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from ecgtl.constants import PAPER_ADAM
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


@dataclass
class ModelConfig:
    name: str = "resnet18_postact"  # a registered model (ecgtl.models.list_models()) or an older alias (resnet18, resnet18v2)
    width: float = 1.0  # channel multiplier (0.25 -> 16..128 channels)
    drop_rate: float = 0.0


@dataclass
class FinetuneConfig:
    """Fine-tuning on PhysioNet/CinC 2017 (see ``ecgtl finetune --help``)."""

    data: str = "data/raw/challenge-2017/1.0.0/training2017"
    labels: str = "v3"  # "v3", "original" or a label file
    splits: str | None = None  # a splits JSON to reuse; default: made from split_seed and saved in the run folder
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.05
    folds: int = 0  # k-fold cross-validation instead of the 80/20 split (0: off); run each fold with fold=i
    fold: int = 0
    label_fraction: float = 1.0  # fraction of the training records used (low-label fine-tuning)
    fs: float = 250.0  # Hz of the model input (records are resampled from 300 Hz)
    input: str = "crop"  # "crop": random crops in training, sliding windows at test; "paper": last 65.5 s zero-padded
    crop_seconds: float = 16.384  # training crop (and test window) length, s
    hop_seconds: float = 8.192  # hop of the test-time sliding windows, s
    paper_samples: int = 16_384  # input length of input="paper"
    normalization: str = "train"  # "train": mean/std of the training records; "paper": (x - 0.0075) / 0.2373
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: str | None = None  # pre-trained backbone (a model card JSON or .safetensors); None = random init
    freeze_epochs: int = 0  # train only the new head for this many epochs first
    class_weights: bool = False  # inverse-frequency weighted cross-entropy
    epochs: int = 200
    patience: int = 50  # early stopping on validation macro-F1
    batch_size: int = 64
    eval_batch_size: int = 128
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool = False  # torch.compile the model (GPU)
    out: str = "runs/finetune"
    bootstrap: int = 1000  # bootstrap replicates of the confidence intervals

    def __post_init__(self):
        _choice("input", self.input, ("crop", "paper"))
        _choice("normalization", self.normalization, ("train", "paper"))
        _choice("optim.name", self.optim.name, ("adamw", "sgd"))
        _choice("optim.schedule", self.optim.schedule, ("constant", "cosine"))
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")


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
    compile: bool = False
    sync_bn: bool = True  # SyncBatchNorm across DDP ranks, so a multi-GPU run equals one big batch
    out: str = "runs/pretrain"

    def __post_init__(self):
        _choice("task", self.task, tuple(PRETEXT_TASKS))
        _choice("optim.name", self.optim.name, ("adamw", "sgd"))
        _choice("optim.schedule", self.optim.schedule, ("constant", "cosine"))
        if not 0 < self.patient_fraction <= 1:
            raise ConfigError(f"patient_fraction must be in (0, 1], got {self.patient_fraction}")


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _coerce(value: Any, typ: Any, key: str) -> Any:
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
        return tuple(float(v) for v in value)
    if typ == (list | None) or typ is list:
        return list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
    if typ is float or typ == (float | None):
        return float(value)
    if typ is int or typ == (int | None):
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value}")
        return int(value)
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return bool(value)
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
    """A preset by name (``cpu``, ``paper``: ``ecgtl/configs/<kind>-<name>.yaml``) or a YAML path."""
    if os.path.isfile(name_or_path):
        return Path(name_or_path)
    path = resources.files("ecgtl") / "configs" / f"{kind}-{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.name[len(kind) + 1:-5] for p in (resources.files("ecgtl") / "configs").iterdir()
                           if p.name.startswith(kind + "-"))
        raise ConfigError(f"no {kind} preset {name_or_path!r}; available: {', '.join(available)} (or a YAML path)")
    return Path(str(path))


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
    p.add_argument("--preset", default="cpu", help="preset name (cpu, paper) or YAML path (default: cpu)")
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
RESUMABLE_CHANGES = {"epochs", "rounds", "checkpoint_every", "patience", "out", "num_workers", "device", "amp", "compile", "bootstrap",
                     "eval_batch_size"}


def save_or_check_config(cfg, path: str | os.PathLike, canonical=None) -> None:
    """Write the run's config, or, when resuming into a folder that has one, refuse a different run.

    Resuming a checkpoint under other settings would mix two experiments in one result; only
    the fields of :data:`RESUMABLE_CHANGES` may differ (e.g. more epochs). Fields the saved
    config lacks (added in a later version) count as their defaults; ``canonical(dict)`` may
    rewrite both sides before the comparison (e.g. an older model name to its current one).
    """
    path = Path(path)
    canonical = canonical or (lambda d: d)
    new = canonical(_plain(to_dict(cfg)))
    if path.is_file() and any(path.parent.glob("checkpoint.pt")):
        old = _plain(to_dict(type(cfg)()))
        _merge(old, yaml.safe_load(path.read_text()) or {})
        old = canonical(old)
        changed = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
        if changed:
            raise ConfigError(f"{path}: this run folder holds a run with other settings ({', '.join(changed)}); "
                              "use another --out, or delete the folder to start over")
    atomic_write(path, yaml.safe_dump(new, sort_keys=False))
