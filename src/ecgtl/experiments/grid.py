"""The study's grid: which pre-training and fine-tuning runs answer its questions, and what they cost.

A grid file (``src/ecgtl/configs/experiment-<preset>.yaml``, or any YAML path) names the
fine-tuning and pre-training presets with overrides for every run, the default value of each
axis, and *blocks*: each block varies some axes (lists) and takes the defaults for the rest, so
the grid is the union of a few small products rather than one huge one::

    finetune_preset: cpu
    pretrain_preset: cpu
    finetune_set: [epochs=30]
    pretrain_set: [rounds=12]
    defaults: {arch: resnet18_preact, pretext: beat, patient_fraction: 1.0, fs: 125,
               label_fraction: 1.0, seeds: [0, 1, 2]}
    blocks:
      q1: {pretext: [none, beat, rhythm, heart_rate@cinc]}
      q3: {patient_fraction: [0.1, 0.2, 0.5, 1.0]}
      labels: {label_fraction: [0.01, 0.1, 1.0], pretext: [none, beat], seeds: [0, 1, 2, 3, 4]}

Axes: ``arch`` (a model name; ``*_2d_stft`` names are the 2-D spectrogram arm), ``pretext``
(:data:`PRETEXTS`: ``none`` is random initialisation; ``X@cinc`` pre-trains task X on the CinC
training split's own records, unlabelled), ``patient_fraction`` (of the pre-training patients),
``fs`` (Hz, of fine-tuning and of its pre-training), ``label_fraction`` (of the CinC training
labels) and ``seeds`` (of fine-tuning). A fine-tune asked for by several blocks runs once; a
pre-training run (arch, pretext, patient fraction, fs) is shared by every fine-tune that starts
from it, whatever its seed or label fraction. Random-init runs have no patient fraction.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from ecgtl.errors import ConfigError

PRETEXTS = ("none", "beat", "rhythm", "heart_rate", "future", "heart_rate@cinc", "future@cinc")
AXES = ("arch", "pretext", "patient_fraction", "fs", "label_fraction")
IN_DOMAIN = "@cinc"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SPEC_KEYS = {"description", "scale", "finetune_preset", "pretrain_preset", "finetune_set", "pretrain_set", "in_domain_set",
             "defaults", "blocks"}

#: training throughput of 2 CPU cores used by the estimates, in FLOP/s of forward + backward
#: (measured: the cpu fine-tuning preset, 30 epochs on 5,436 records, ~15 min)
CPU_FLOPS = 1.3e11
#: pre-training runs at a lower share of that rate (smaller inputs, the sampler in the same process):
#: in the quick grid here, 340 s measured for a 120 s estimate at CPU_FLOPS, while its fine-tunes took
#: 144-162 s of training for 150 s estimated
PRETRAIN_EFFICIENCY = 0.35


@dataclass(frozen=True)
class PretrainRun:
    """One pre-training run: shared by every fine-tune with the same (arch, pretext, patient fraction, fs)."""

    arch: str
    pretext: str
    patient_fraction: float
    fs: float

    @property
    def task(self) -> str:
        """The pretext task (``heart_rate`` for ``heart_rate@cinc``)."""
        return self.pretext.split("@")[0]

    @property
    def in_domain(self) -> bool:
        return self.pretext.endswith(IN_DOMAIN)

    @property
    def run_id(self) -> str:
        return f"{self.arch}-{_slug(self.pretext)}-pf{self.patient_fraction:g}-fs{self.fs:g}"


@dataclass(frozen=True)
class FinetuneRun:
    """One fine-tune: the grid's unit, one row of the results table."""

    arch: str
    pretext: str
    patient_fraction: float | None  # None for random initialisation
    fs: float
    label_fraction: float
    seed: int

    @property
    def pretrain(self) -> PretrainRun | None:
        if self.pretext == "none":
            return None
        return PretrainRun(self.arch, self.pretext, self.patient_fraction, self.fs)

    @property
    def input(self) -> str:
        return "2d_stft" if "_2d" in self.arch else "1d"

    @property
    def run_id(self) -> str:
        pf = "" if self.patient_fraction is None else f"-pf{self.patient_fraction:g}"
        return f"{self.arch}-{_slug(self.pretext)}{pf}-fs{self.fs:g}-lf{self.label_fraction:g}-s{self.seed}"


def _slug(pretext: str) -> str:
    return pretext.replace("@", "-at-")


@dataclass
class GridSpec:
    """A parsed grid file (see the module docstring)."""

    name: str
    finetune_preset: str = "cpu"
    pretrain_preset: str = "cpu"
    finetune_set: list = field(default_factory=list)
    pretrain_set: list = field(default_factory=list)
    in_domain_set: list = field(default_factory=list)  # added for X@cinc pre-training (records of 9-61 s, thousands of them)
    defaults: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)
    description: str = ""
    scale: str = ""  # one line: the scale the grid runs at (data, width, epochs, seeds), quoted by the report

    def recipe(self) -> dict:
        """What every run of the grid shares; a results table is only extended with runs of the same recipe."""
        return {k: getattr(self, k) for k in ("finetune_preset", "pretrain_preset", "finetune_set", "pretrain_set", "in_domain_set")}


def spec_path(name: str | os.PathLike) -> Path:
    """A grid preset name (``quick``, ``cpu``, ``paper``) or a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: grid file not found")
        return p
    path = CONFIG_DIR / f"experiment-{name}.yaml"
    if not path.is_file():
        known = sorted(q.stem.removeprefix("experiment-") for q in CONFIG_DIR.glob("experiment-*.yaml"))
        raise ConfigError(f"unknown experiment preset {name!r}: choose one of {', '.join(known)} or give a .yaml file")
    return path


def load_spec(name: str | os.PathLike) -> GridSpec:
    path = spec_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid file is a mapping of {', '.join(sorted(SPEC_KEYS))}")
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a grid file has {', '.join(sorted(SPEC_KEYS))}")
    spec = GridSpec(name=path.stem.removeprefix("experiment-"), **data)
    _check_spec(spec, path)
    return spec


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


#: settings the grid itself decides per run: an override of one of them in a grid file would silently replace an axis
GRID_OWNED = {"model.name", "fs", "label_fraction", "seed", "patient_fraction", "task", "init", "data", "out", "splits", "store"}


def _check_spec(spec: GridSpec, path: Path) -> None:
    for key in ("finetune_set", "pretrain_set", "in_domain_set"):
        if not all(isinstance(s, str) and "=" in s for s in getattr(spec, key)):
            raise ConfigError(f"{path}: {key} must be a list of 'key=value' overrides")
        owned = [s for s in getattr(spec, key) if s.split("=", 1)[0].strip() in GRID_OWNED]
        if owned:
            raise ConfigError(f"{path}: {key} sets {owned[0]!r}, which the grid sets per run (axes: arch, pretext, "
                              "patient_fraction, fs, label_fraction, seeds; folders: --data, --store, --out)")
    allowed = set(AXES) | {"seeds"}
    for where, values in [("defaults", spec.defaults)] + [(f"blocks.{b}", v) for b, v in spec.blocks.items()]:
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {where} must be a mapping of axes ({', '.join(sorted(allowed))})")
        bad = set(values) - allowed
        if bad:
            raise ConfigError(f"{path}: {where}: unknown axis {', '.join(sorted(bad))}; axes are {', '.join(sorted(allowed))}")
        for p in _as_list(values.get("pretext", [])):
            if p not in PRETEXTS:
                raise ConfigError(f"{path}: {where}: pretext {p!r} is not one of {', '.join(PRETEXTS)}")
        for key in ("patient_fraction", "label_fraction"):
            for v in _as_list(values.get(key, [])):
                if not (isinstance(v, (int, float)) and 0 < v <= 1):
                    raise ConfigError(f"{path}: {where}: {key} {v!r} must be in (0, 1]")
        for v in _as_list(values.get("fs", [])):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"{path}: {where}: fs {v!r} must be a rate in Hz")
        for v in _as_list(values.get("seeds", [])):
            if not (isinstance(v, int) and v >= 0):
                raise ConfigError(f"{path}: {where}: seeds must be non-negative integers, got {v!r}")
    missing = set(allowed) - set(spec.defaults)
    if missing:
        raise ConfigError(f"{path}: defaults must give every axis; missing {', '.join(sorted(missing))}")
    if not spec.blocks:
        raise ConfigError(f"{path}: no blocks: nothing to run")


@dataclass
class Plan:
    """The runs of a grid, in the order they run: each pre-training right before its first fine-tune."""

    finetunes: list[FinetuneRun]
    blocks: dict[str, list[str]]  # run_id -> the blocks that asked for it

    @property
    def pretrains(self) -> list[PretrainRun]:
        return list(dict.fromkeys(r.pretrain for r in self.finetunes if r.pretrain is not None))


def plan(spec: GridSpec) -> Plan:
    """Expand the blocks into unique fine-tunes (grouped by pre-training run, then label fraction, then seed)."""
    runs: dict[str, FinetuneRun] = {}
    blocks: dict[str, list[str]] = {}
    for block, axes in spec.blocks.items():
        values = {k: _as_list(axes.get(k, spec.defaults[k])) for k in (*AXES, "seeds")}
        for arch in values["arch"]:
            for pretext in values["pretext"]:
                for pf in values["patient_fraction"]:
                    for fs in values["fs"]:
                        for lf in values["label_fraction"]:
                            for seed in values["seeds"]:
                                run = FinetuneRun(str(arch), str(pretext), None if pretext == "none" else float(pf),
                                                  float(fs), float(lf), int(seed))
                                runs.setdefault(run.run_id, run)
                                blocks.setdefault(run.run_id, [])
                                if block not in blocks[run.run_id]:
                                    blocks[run.run_id].append(block)
    order = list(runs.values())
    first_use = {}
    for i, r in enumerate(order):
        first_use.setdefault(r.pretrain, i)
    order.sort(key=lambda r: (first_use[r.pretrain], r.label_fraction != 1.0, r.label_fraction, r.seed))
    return Plan(order, blocks)


# --------------------------------------------------------------------------- cost estimates
@lru_cache(maxsize=64)
def forward_flops(arch: str, width: float, samples: int, num_classes: int = 4) -> float:
    """FLOPs of one forward pass of one input of ``samples`` samples (counted on the meta device: no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ecgtl.models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, width=width)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 1, int(samples)))
    return float(counter.get_total_flops())


def estimate_finetune_seconds(cfg, train_records: int, val_records: int, test_records: int) -> float:
    """Rough training + evaluation time of a fine-tune on 2 CPU cores (seconds), from FLOPs.

    Forward + backward of the training records every epoch, a forward pass of the validation
    records every epoch and of the test records once (one window per record).
    """
    samples = cfg.paper_samples if cfg.input == "paper" else round(cfg.crop_seconds * cfg.fs)
    f = forward_flops(cfg.model.name, cfg.model.width, samples)
    n_train = max(1, round(train_records * cfg.label_fraction))
    return ((cfg.epochs * (3 * n_train + val_records) + test_records) * f) / CPU_FLOPS


def estimate_pretrain_seconds(cfg, train_patients: int) -> float:
    """Rough pre-training time on 2 CPU cores (seconds), from FLOPs."""
    samples = cfg.frame_samples * (cfg.context_frames + 1 if cfg.task == "future" else 1)
    f = forward_flops(cfg.model.name, cfg.model.width, cfg.frame_samples, num_classes=5) * samples / cfg.frame_samples
    n = max(1, round(train_patients * cfg.patient_fraction))
    frames = cfg.rounds * (n * cfg.frames_per_patient * 3 + n * cfg.val_frames_per_patient)
    return frames * f / (CPU_FLOPS * PRETRAIN_EFFICIENCY)


def spec_as_yaml(spec: GridSpec) -> str:
    data = {k: v for k, v in dataclasses.asdict(spec).items() if k != "name"}
    return yaml.safe_dump(data, sort_keys=False)


def safe_column_name(name: str) -> str:
    """A folder name as a column-name fragment: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "extra"
