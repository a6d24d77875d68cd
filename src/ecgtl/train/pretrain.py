"""``ecgtl pretrain``: pre-train a ResNet backbone on the prepared store with a pretext task.

Tasks: ``beat``, ``rhythm``, ``heart_rate`` (frame classification, labels from the store's
beat arrays by the study's rules, :mod:`ecgtl.tasks`) and ``future`` (contrastive future
prediction, `ecgtl.models.future_prediction`). Frames come from :class:`ecgtl.data.sampling.FrameSampler`
(random patient -> segment -> frame, patient-level train/validation split). The engine is the
one fine-tuning uses (:mod:`ecgtl.train.engine`): rounds of ``frames_per_patient`` frames
per training patient, a checkpoint after each, exact resume, CSV/TensorBoard logs.

Scale out with PyTorch DDP: ``torchrun --nproc_per_node 8 -m ecgtl pretrain ...`` (or
``--nnodes``/``--rdzv-endpoint`` for several nodes). Each rank reads its own patients; rank 0
writes logs and checkpoints. On GPU, batch norm is synchronised across ranks (``sync_bn``),
bf16 autocast is on (``amp``), ``compile`` (default auto: on CUDA) applies ``torch.compile``, and 1-D
networks run as channels-last 2-D convolutions (``conv_layout``, default auto: on CUDA); together
3.4x the eager bf16 training step on one H200 (``benchmarks/bench_gpu.py``).

Outputs in ``out``: ``config.yaml``, ``training_set.json`` (the training and validation
patients and the normalisation, written at the start: a resume after the store changed is
refused), ``metrics.csv``, ``checkpoint.pt``, ``best.safetensors``, ``backbone.safetensors`` +
``model.json`` (the card ``ecgtl finetune --init`` reads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.signal import resample_poly

from ecgtl.config import PretrainConfig, add_config_command, compile_enabled, save_or_check_config, to_dict
from ecgtl.constants import ICENTIA_FS_HZ
from ecgtl.data.sampling import FrameSampler, estimate_normalization, fixed_frames, select_fraction, split_patients
from ecgtl.data.store import Store
from ecgtl.data.transforms import resample_factors
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.metrics import macro_f1
from ecgtl.fileio import atomic_write
from ecgtl.models import apply_conv_layout, create_model
from ecgtl.models.card import load_weights, save_weights, write_card
from ecgtl.models.future_prediction import FuturePrediction
from ecgtl.models.registry import with_current_model_name
from ecgtl.runtime import resolve_device, unwrap
from ecgtl.tasks import PRETEXT_TASKS, get_task
from ecgtl.train.engine import BEST_FILE, CHECKPOINT_FILE, Trainer, build_optimizer, write_guard

DETECTED_BEAT_SOURCES = {"cinc2017"}  # beats from a QRS detector: no beat types or rhythm
TRAINING_SET_FILE = "training_set.json"


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process: 0, 1, 0)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class PretrainJob:
    """Everything a pre-training run is made of (built once per process)."""

    cfg: PretrainConfig
    model: torch.nn.Module  # classifier (classification tasks) or FuturePrediction
    backbone: torch.nn.Module
    train_ids: list[str]
    val_ids: list[str]
    normalization: tuple[float, float]
    device: torch.device
    rank: int
    world_size: int

    @property
    def input_samples(self) -> int:
        """Samples of one model input at ``cfg.fs`` (future task: context + next frame)."""
        c = self.cfg
        return c.frame_samples * (c.context_frames + 1) if c.task == "future" else c.frame_samples

    @property
    def window_samples(self) -> int:
        """The same window in samples at the store's rate (250 Hz)."""
        return int(math.ceil(self.input_samples * ICENTIA_FS_HZ / self.cfg.fs))  # to_input crops the excess

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Resample frames from the store's 250 Hz to the model's ``cfg.fs`` (polyphase, anti-aliased)."""
        if self.cfg.fs == ICENTIA_FS_HZ:
            return x
        up, down = resample_factors(ICENTIA_FS_HZ, self.cfg.fs)
        y = resample_poly(x.numpy().astype(np.float64), up, down, axis=-1)[..., : self.input_samples]
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def sampler(self, rank: int | None = None, world_size: int | None = None) -> FrameSampler:
        """This rank's training frames, as whole batches of ``cfg.batch_size`` (read with ``DataLoader(batch_size=None)``)."""
        c = self.cfg
        return FrameSampler(c.store, self.train_ids, self.window_samples, c.frames_per_patient,
                            c.task, seed=c.seed, normalization=self.normalization,
                            rank=self.rank if rank is None else rank,
                            world_size=self.world_size if world_size is None else world_size, batch_size=c.batch_size)

    def step_fn(self, model, batch):
        x, y = batch
        x = self.to_input(x).to(self.device, non_blocking=True)
        out = model(x)  # through the DDP / compile wrappers, so gradients are synchronised
        if self.cfg.task == "future":
            # scores of each context against the next frames of the batch (this rank's batch under DDP)
            return F.cross_entropy(out.float(), unwrap(model).targets(out)), len(x)
        return F.cross_entropy(out.float(), y.to(self.device)), len(y)


def build_job(cfg: PretrainConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> PretrainJob:
    task = get_task(cfg.task)
    store = Store(cfg.store, keys=("source", "fs"))  # a lean read: 11,000 full entries are ~75 MB the workers would inherit
    ids = [p["patient_id"] for p in store.patients if cfg.sources is None or p["source"] in cfg.sources
           or p["patient_id"].split("/")[0] in cfg.sources]
    if task.needs_annotated_beats:  # detector beats carry no type or rhythm: no labels for these tasks
        source_of = {p["patient_id"]: p["source"] for p in store.patients}
        ids = [i for i in ids if source_of[i] not in DETECTED_BEAT_SOURCES]
    if len(ids) < 2:
        raise ConfigError(f"{cfg.store}: {len(ids)} patient(s) match sources {cfg.sources}; need at least 2 (train + val)")
    chosen = set(ids)
    fs = {p["fs"] for p in store.patients if p["patient_id"] in chosen}
    if fs != {float(ICENTIA_FS_HZ)}:
        raise ConfigError(f"{cfg.store}: patients at {sorted(fs)} Hz; pre-training expects {ICENTIA_FS_HZ} Hz")
    train_ids, val_ids = split_patients(ids, cfg.val_fraction, seed=cfg.seed)
    if cfg.patient_fraction < 1.0:
        train_ids = select_fraction(train_ids, cfg.patient_fraction, seed=cfg.seed)
    if world_size > len(train_ids):
        raise ConfigError(f"{world_size} ranks but only {len(train_ids)} training patients")
    normalization = estimate_normalization(cfg.store, train_ids, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    if not task.is_classification:
        backbone = create_model(cfg.model.name, num_classes=0, width=cfg.model.width)
        model = FuturePrediction(backbone, context_frames=cfg.context_frames, frame_samples=cfg.frame_samples)
    else:
        model = create_model(cfg.model.name, num_classes=task.num_classes, width=cfg.model.width, drop_rate=cfg.model.drop_rate)
        backbone = model
    device = device or resolve_device(cfg.device)
    model.to(device)
    return PretrainJob(cfg, model, backbone, train_ids, val_ids, normalization, device, rank, world_size)


def _ids_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def training_set_record(job: PretrainJob) -> dict:
    """What a resumed run must train on to continue the same run: its patients and normalisation."""
    return {"store": str(job.cfg.store), "train_patients": len(job.train_ids), "val_patients": len(job.val_ids),
            "train_sha256": _ids_sha256(job.train_ids), "val_sha256": _ids_sha256(job.val_ids),
            "normalization": {"mean": float(job.normalization[0]), "std": float(job.normalization[1]), "units": "mV"},
            "train_ids": sorted(job.train_ids), "val_ids": sorted(job.val_ids)}


def _set_change(name: str, old: list[str], new: list[str]) -> str:
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    parts = [f"{len(added)} added (e.g. {added[:3]})" if added else "", f"{len(removed)} gone (e.g. {removed[:3]})" if removed else ""]
    return f"{name} patients: {len(old)} -> {len(new)}, " + ", ".join(p for p in parts if p)


def _rounds_done(out: Path) -> int:
    """Rounds the run folder's checkpoint has completed (0 without a readable one; the resume reports damage)."""
    try:
        return int(json.loads(torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)["state"])["round"])
    except Exception:  # missing or damaged: Trainer.resume raises the clear error
        return 0


def check_training_set(job: PretrainJob, out: Path, write: bool = True) -> None:
    """Record the run's training set at its start (``training_set.json``); on a resume, refuse another one.

    A store that gained, lost or re-prepared patients since the run started would change the
    training patients, the validation patients or the normalisation mid-run, silently.
    ``write``: whether this process may write the record (rank 0).
    """
    path = out / TRAINING_SET_FILE
    now = training_set_record(job)
    if (out / CHECKPOINT_FILE).is_file() and path.is_file():
        try:
            then = json.loads(path.read_text())
            if _rounds_done(out) >= job.cfg.rounds:  # finished: nothing more is trained; the card describes what was
                job.train_ids, job.val_ids = list(then["train_ids"]), list(then["val_ids"])
                job.normalization = (float(then["normalization"]["mean"]), float(then["normalization"]["std"]))
                return
            old_norm = (float(then["normalization"]["mean"]), float(then["normalization"]["std"]))
            changes = [_set_change(part, then[f"{part}_ids"], now[f"{part}_ids"]) for part in ("train", "val")
                       if then[f"{part}_sha256"] != now[f"{part}_sha256"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(path, f"unreadable training-set record ({type(exc).__name__}: {exc}); it is needed to resume "
                                  f"{out / CHECKPOINT_FILE} safely: restore it, or use another --out") from None
        new_norm = job.normalization
        if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(old_norm, new_norm)):
            changes.append(f"normalisation mean/std {old_norm[0]:.6g}/{old_norm[1]:.6g} -> {new_norm[0]:.6g}/{new_norm[1]:.6g} mV")
        if changes:
            raise ConfigError(f"{path}: the store {job.cfg.store} no longer gives the data this run started with "
                              f"({'; '.join(changes)}); resuming would change the training set mid-run; use another --out "
                              "to pre-train on the store as it is now, or restore the store to resume")
        return
    if write:  # a new run (or one started by an earlier version, which has no record yet)
        with write_guard(path):
            atomic_write(path, json.dumps(now, indent=1))


def make_evaluate(job: PretrainJob):
    """Validation on a fixed set of frames of the validation patients (same frames every round)."""
    c = job.cfg
    batch = max(c.batch_size, 2)
    n_val = len(job.val_ids) * c.val_frames_per_patient
    if n_val == 0 or (c.task == "future" and n_val < batch):
        raise ConfigError(f"{n_val} validation frames ({len(job.val_ids)} patients x {c.val_frames_per_patient}); "
                          f"the future task needs at least one batch of {batch}: raise val_frames_per_patient")
    cache: dict = {}

    def frames():
        if not cache:  # built on first use: under DDP only rank 0 evaluates
            x, y = fixed_frames(c.store, job.val_ids, job.window_samples, c.val_frames_per_patient,
                                c.task, seed=c.seed, normalization=job.normalization)
            # mixed order: for the contrastive task the negatives of a batch then come from several
            # patients, as in training (fixed_frames lists each patient's frames together)
            order = np.random.default_rng(c.seed).permutation(len(x))
            cache["x"], cache["y"] = job.to_input(torch.from_numpy(x[order])), torch.from_numpy(y[order])
        return cache["x"], cache["y"]

    def evaluate(model, r):
        x, y = frames()
        if c.task == "future":
            losses, accs = [], []
            for i in range(0, len(x) - batch + 1, batch):  # full batches: the task's difficulty depends on B
                loss, acc = model.loss_and_accuracy(x[i:i + batch].to(job.device))
                losses.append(float(loss))
                accs.append(float(acc))
            return {"val_loss": float(np.mean(losses)), "val_accuracy": float(np.mean(accs)), "val_chance": 1.0 / batch}
        logits = torch.cat([model(x[i:i + 256].to(job.device)).float().cpu() for i in range(0, len(x), 256)])
        pred = logits.argmax(1).numpy()
        yy = y.numpy()
        majority = np.bincount(yy).max() / len(yy)
        return {"val_loss": float(F.cross_entropy(logits, y)), "val_accuracy": float((pred == yy).mean()),
                "val_macro_f1": float(macro_f1(yy, pred, get_task(c.task).num_classes)), "val_majority_accuracy": float(majority)}

    return evaluate


def make_optimizer(job: PretrainJob, steps_per_round: int):
    return build_optimizer(job.model.parameters(), job.cfg.optim, steps_per_round, job.cfg.rounds)


def make_batches_fn(job: PretrainJob, sampler: FrameSampler):
    def make_batches(r):
        sampler.set_round(r)
        return torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=job.cfg.num_workers,
                                           pin_memory=job.device.type == "cuda")
    return make_batches


def run_pretrain(cfg: PretrainConfig, progress: bool = True) -> dict:
    rank, world_size, local_rank = _dist_info()
    distributed = world_size > 1
    device = resolve_device(cfg.device)
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        job = build_job(cfg, rank, world_size, device)
        out = Path(cfg.out)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_or_check_config(cfg, out / "config.yaml", canonical=with_current_model_name)
        check_training_set(job, out, write=rank == 0)  # every rank checks: all stop together
        sampler = job.sampler()
        steps_per_round = sampler.batches_per_round(cfg.batch_size, cfg.num_workers)
        if steps_per_round < 1:
            raise ConfigError(f"{sampler.frames_per_rank()} frames per rank and round < batch size {cfg.batch_size}: "
                              "raise frames_per_patient")
        model = job.model
        apply_conv_layout(model, cfg.conv_layout, device)  # same weights; channels-last 2-D kernels on CUDA
        if distributed:
            if device.type == "cuda" and cfg.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if compile_enabled(cfg.compile, device):
            model = torch.compile(model)
        job.model = model
        optimizer, scheduler = make_optimizer(job, steps_per_round)
        if rank == 0:
            print(f"pretrain {cfg.task}: {cfg.model.name} width {cfg.model.width}, {len(job.train_ids)} train / "
                  f"{len(job.val_ids)} val patients, inputs of {job.input_samples} samples at {cfg.fs:g} Hz, {steps_per_round} steps of "
                  f"{cfg.batch_size} per round and rank, {world_size} rank(s) on {device}, normalisation "
                  f"mean {job.normalization[0]:.4f} std {job.normalization[1]:.4f} mV")
        trainer = Trainer(model, optimizer, job.step_fn, make_batches_fn(job, sampler), make_evaluate(job), out,
                          rounds=cfg.rounds, monitor="val_loss", mode="min", patience=cfg.patience, scheduler=scheduler,
                          seed=cfg.seed, device=device, amp=cfg.amp, steps_per_round=steps_per_round,
                          progress=progress, is_main=rank == 0, checkpoint_every=cfg.checkpoint_every)
        t0 = time.perf_counter()
        state = trainer.fit()
        seconds = time.perf_counter() - t0
        if distributed:
            dist.barrier()
        if rank == 0:
            write_backbone(job, out, state)
        return {"rounds": state.round, "best_round": state.best_round, "seconds": seconds, "history": state.history}
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def write_backbone(job: PretrainJob, out: Path, state) -> dict:
    """``backbone.safetensors`` (ResNet naming, head kept for classification tasks) + the card ``model.json``."""
    c = job.cfg
    best = load_weights(out / BEST_FILE, expected_sha256=state.best_sha256 or None)  # the file this run wrote, finite
    if c.task == "future":
        weights = {k[len("backbone."):]: v for k, v in best.items() if k.startswith("backbone.")}
    else:
        weights = best
    classes = get_task(c.task).class_names
    last = state.history[-1] if state.history else {}
    with write_guard(out):
        save_weights(weights, out / "backbone.safetensors")
        return write_card(out / "model.json", out / "backbone.safetensors", architecture=job.backbone.model_name,
                          width=c.model.width, num_classes=len(classes), classes=list(classes), fs=float(c.fs),
                          normalization={"mean": job.normalization[0], "std": job.normalization[1], "units": "mV"},
                          task=c.task, frame_samples=c.frame_samples, store=c.store, sources=c.sources,
                          train_patients=len(job.train_ids), val_patients=len(job.val_ids),
                          patient_fraction=c.patient_fraction,
                          seed=c.seed, steps=state.step, rounds=state.round, best_round=state.best_round,
                          world_size=job.world_size, final_metrics=last, config=to_dict(c))


def add_parser(subparsers) -> None:
    add_config_command(subparsers, "pretrain", PretrainConfig, run_pretrain, __doc__,
                       {"task": {"choices": list(PRETEXT_TASKS)}, "store": {"help": "prepared store folder"},
                                   "out": {"help": "run folder"}, "seed": {"type": int}})
