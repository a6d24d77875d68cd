"""The training engine: one loop for pre-training and fine-tuning.

Training runs in *rounds* (an epoch when fine-tuning, N steps when pre-training). A round
is fully determined by ``(seed, round)``: the caller's ``make_batches(round)`` must draw its
data from that, and the engine seeds torch/numpy/random from it before the round. After
every round the engine evaluates, logs a CSV row (and TensorBoard if installed), keeps the
best weights (``best.safetensors``, whose SHA-256 the checkpoint records, so readers of the
finished run can check they read that file) and writes a checkpoint atomically. So a run killed at
any moment resumes from its last checkpoint and ends with the same weights as an
uninterrupted run with the same seed.

Bit-exact resume holds on CPU (tested); on GPU, cuDNN and atomics make runs
non-deterministic unless ``torch.use_deterministic_algorithms(True)`` is set, so a resumed
GPU run matches an uninterrupted one only statistically.

Checkpoints are read with ``torch.load(weights_only=True)``: they hold only tensors and
plain Python values, never pickled objects, plus a digest of their content, so a truncated
or bit-flipped checkpoint is refused on resume (never silently used, never silently
replaced by a fresh start). A write that fails (a full disk) leaves the previous file
intact and stops the run with a :class:`~ecgtl.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ecgtl.errors import ConfigError, DataError, TrainingDiverged
from ecgtl.evaluate.metrics import fmt
from ecgtl.fileio import atomic_write, file_sha256
from ecgtl.models.card import save_weights
from ecgtl.runtime import unwrap

CHECKPOINT_FILE, BEST_FILE, METRICS_FILE = "checkpoint.pt", "best.safetensors", "metrics.csv"
# new best weights wait here until the checkpoint that records their hash is written (see Trainer._end_round)
BEST_PENDING_FILE = "best-pending.safetensors"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def round_seed(seed: int, round_index: int) -> int:
    """A distinct, reproducible seed per (run seed, round)."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0])


def build_optimizer(parameters, optim, steps_per_round: int, rounds: int):
    """The optimiser of ``optim`` (an :class:`ecgtl.config.OptimConfig`) and its schedule.

    ``optim.name``: ``adamw`` (the study's Adam settings: ``lr``, ``betas``, ``eps``, decoupled
    ``weight_decay``) or ``sgd`` (``lr``, ``momentum``, ``weight_decay``; its step scales with
    the gradient). On CUDA, AdamW is the fused implementation (same update, one kernel).
    ``constant`` keeps the rate (the study); ``cosine`` warms up linearly for
    ``warmup_epochs`` rounds, then decays to 0 over the remaining steps. The scheduler
    steps once per optimiser step.
    """
    parameters = list(parameters)
    fused = bool(parameters) and all(p.is_cuda for p in parameters)  # one kernel for the whole update on CUDA
    if optim.name == "adamw":
        opt = torch.optim.AdamW(parameters, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
                                fused=fused or None)
    elif optim.name == "sgd":
        opt = torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    else:
        raise ConfigError(f"optim.name must be 'adamw' or 'sgd', got {optim.name!r}")
    if optim.schedule == "constant":
        return opt, None
    if optim.schedule != "cosine":
        raise ConfigError(f"optim.schedule must be 'constant' or 'cosine', got {optim.schedule!r}")
    total, warm = max(1, steps_per_round * rounds), int(optim.warmup_epochs * steps_per_round)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class TrainState:
    round: int = 0  # rounds completed
    step: int = 0  # optimiser steps completed
    best_metric: float = -math.inf
    best_round: int = -1
    stale_rounds: int = 0  # rounds since the best (early stopping)
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    round_batches: int = 0  # batches done in the unfinished round (a mid-round checkpoint)
    round_loss_sum: float = 0.0
    round_items: int = 0
    best_sha256: str = ""  # of the best weights file this run wrote (readers check they read that file)


@contextlib.contextmanager
def write_guard(path: str | os.PathLike):
    """Turn an operating-system error while writing run outputs (a full disk, no permission) into a
    :class:`DataError` naming the file; the atomic writer has left the previous version in place."""
    try:
        yield
    except FileNotFoundError:  # a missing input, not a failed write
        raise
    except OSError as exc:
        target = exc.filename or path
        raise DataError(target, f"could not write ({exc.strerror or exc}); the previous version of the file, if any, "
                                "is unchanged, so no finished round is lost: free disk space (or use another --out) "
                                "and rerun the same command to resume") from exc


def _content_digest(obj, h=None) -> str:
    """SHA-256 over a checkpoint's tensors (dtype, shape, bytes) and plain values, in a fixed order."""
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _content_digest(obj[k], h)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _content_digest(v, h)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())
    return h.hexdigest()


SCORE_KEYS = ("f1", "auroc", "accuracy")  # metrics columns holding a score, as opposed to a loss or a speed


def _shown(key: str, value) -> str:
    """A metrics row's value for the round log: scores (F1, AUROC, accuracy) cut to 4 decimals, never rounded up;
    losses and speeds as ``:.4f``."""
    if not isinstance(value, float):
        return f"{value}"
    return fmt(value, digits=4) if any(s in key for s in SCORE_KEYS) else f"{value:.4f}"


def _atomic_torch_save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save({**obj, "digest": _content_digest(obj)}, buf)
    with write_guard(path):
        atomic_write(path, buf.getvalue())


def _non_finite(state: dict) -> list[str]:
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def _unusable_checkpoint(path: Path, problem: str) -> DataError:
    return DataError(path, f"{problem}; it cannot be resumed (a crash or a full disk may have damaged it). "
                           "Delete it to train this run folder again from the start (its progress is lost), "
                           "or use another --out")


class Trainer:
    """Rounds of training + evaluation with checkpoints, early stopping, CSV logs.

    ``step_fn(model, batch) -> (loss, n_items)`` computes the loss of one batch (the engine
    moves nothing: the step function puts tensors on the device). ``evaluate(model, round)``
    returns a dict of metrics; ``monitor`` names the one that selects the best model
    (higher is better unless ``mode="min"``). ``on_round_start(model, round)`` may freeze or
    unfreeze parameters (fine-tuning schedules). ``ema_decay`` > 0 keeps an exponential moving
    average of the weights and batch-norm statistics (updated after every optimiser step); the
    average is what is evaluated and kept as the best weights, and it is checkpointed.

    ``evaluate=None`` with ``monitor=None`` trains without validation (a final fit on all labelled
    records, once the settings are chosen): every round's weights replace the kept ones, so the
    last round's are kept, and nothing stops early.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 step_fn: Callable[[torch.nn.Module, object], tuple[torch.Tensor, int]],
                 make_batches: Callable[[int], Iterable], evaluate: Callable[[torch.nn.Module, int], dict] | None,
                 out_dir: str | os.PathLike, rounds: int, monitor: str | None, mode: str = "max",
                 patience: int | None = None, scheduler=None, seed: int = 0, device: torch.device | None = None,
                 amp: bool = False, on_round_start: Callable[[torch.nn.Module, int], None] | None = None,
                 steps_per_round: int | None = None, progress: bool = True, best_metadata: dict | None = None,
                 is_main: bool = True, checkpoint_every: int | None = None, ema_decay: float = 0.0):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.ema = (torch.optim.swa_utils.AveragedModel(unwrap(model), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
                                                        use_buffers=True) if ema_decay else None)
        self.step_fn, self.make_batches, self.evaluate = step_fn, make_batches, evaluate
        self.out = Path(out_dir)
        if (evaluate is None) != (monitor is None):
            raise ValueError("evaluate and monitor go together: both given, or both None (no validation: the last round is kept)")
        self.rounds, self.monitor, self.mode, self.patience = rounds, monitor, mode, patience
        self.seed, self.device = seed, device or torch.device("cpu")
        self.amp = amp and self.device.type == "cuda"
        if self.amp and not torch.cuda.is_bf16_supported():
            print("warning: this GPU has no bf16 support (pre-Ampere): mixed precision is off")
            self.amp = False
        self.on_round_start, self.steps_per_round, self.progress = on_round_start, steps_per_round, progress
        self.best_metadata = {k: str(v) for k, v in (best_metadata or {}).items()}
        self.is_main = is_main
        self.checkpoint_every = checkpoint_every  # optimiser steps between mid-round checkpoints (None: rounds only)
        self.state = TrainState()
        self._rng: dict | None = None
        self._tb = None
        self._data_seconds = 0.0

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "state": json.dumps(asdict(self.state)),
            # the random stream of an unfinished round (dropout), so a mid-round resume is exact
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; return whether it did.

        A checkpoint that cannot be read back exactly (truncated, bytes changed, non-finite
        weights, another model's) raises a :class:`DataError`: starting over silently would
        throw away the run's progress, resuming from it would train on garbage.
        """
        path = self.out / CHECKPOINT_FILE
        if not path.is_file():
            return False
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError, UnpicklingError... on damage
            raise _unusable_checkpoint(path, f"unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "state"} <= set(ckpt):
            raise _unusable_checkpoint(path, "not a checkpoint of the ecgtl training engine")
        stored = ckpt.pop("digest", None)  # checkpoints of earlier versions have none
        if stored is not None and stored != _content_digest(ckpt):
            raise _unusable_checkpoint(path, "corrupt checkpoint: its content no longer matches the digest stored in it")
        bad = _non_finite(ckpt["model"])
        if bad:
            raise _unusable_checkpoint(path, f"non-finite (NaN/inf) weights in {bad[:3]}")
        try:
            state = TrainState(**json.loads(ckpt["state"]))
            unwrap(self.model).load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt["scheduler"] is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.ema is not None:
                if "ema" not in ckpt:
                    raise KeyError("the checkpoint holds no weight average (ema_decay was off when it was written)")
                self.ema.load_state_dict(ckpt["ema"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise _unusable_checkpoint(path, f"checkpoint does not fit this run's model or optimiser ({str(exc)[:200]})") from None
        self.state = state
        self._rng = {k: ckpt[k] for k in ("rng_cpu", "rng_cuda") if k in ckpt} if self.state.round_batches else None
        if self.is_main:
            self._settle_pending_best()
        return True

    def _settle_pending_best(self) -> None:
        """After a kill or a failed write between the best weights and the checkpoint: commit the pending best
        weights if the checkpoint records them, else drop them (their round is retrained)."""
        pending = self.out / BEST_PENDING_FILE
        if not pending.is_file():
            return
        if self.state.best_sha256 and file_sha256(pending) == self.state.best_sha256:
            with write_guard(self.out / BEST_FILE):
                os.replace(pending, self.out / BEST_FILE)
        else:
            pending.unlink()

    def _check_weights_finite(self, r: int) -> None:
        """Never checkpoint non-finite weights (a step with a finite loss can still overflow them)."""
        bad = _non_finite(unwrap(self.model).state_dict())
        if bad:
            raise TrainingDiverged(f"{self.out}: non-finite weights {bad[:3]} in round {r + 1}, step {self.state.step}; "
                                     f"the last checkpoint ({self.out / CHECKPOINT_FILE}) is kept: lower optim.lr")

    def _write_metrics(self) -> None:
        if not self.state.history:
            return
        keys = list(dict.fromkeys(k for row in self.state.history for k in row))
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=keys)
        w.writeheader()
        w.writerows(self.state.history)
        with write_guard(self.out / METRICS_FILE):
            atomic_write(self.out / METRICS_FILE, text.getvalue())

    def _tensorboard(self, row: dict) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: the CSV is the record
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        if self._tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("round", "step"):
                    self._tb.add_scalar(k, v, row["step"])
            self._tb.flush()

    def _evaluate(self, r: int) -> dict:
        """Metrics of the round, in float32 (the model is chosen on them and reported in float32).

        Under DDP only rank 0 evaluates and broadcasts, so every rank takes the same
        early-stopping decision (per-rank batch-norm statistics could otherwise differ).
        """
        if self.evaluate is None:  # no validation records: nothing to score
            return {}
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        metrics = None
        if self.is_main or not distributed:
            self.model.eval()
            with torch.no_grad():
                metrics = self.evaluate(self.kept_model(), r)
        if distributed:
            box = [metrics]
            torch.distributed.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def kept_model(self) -> torch.nn.Module:
        """The weights that are evaluated and kept: the moving average if there is one, else the trained model."""
        if self.ema is not None:
            self.ema.eval()
            return self.ema.module
        return unwrap(self.model)

    def _check_resume_agrees(self, found: bool) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(flags, found)
            if len(set(flags)) > 1:
                raise ConfigError(f"{self.out / CHECKPOINT_FILE}: present on some ranks only ({flags}); "
                                  "the run folder must be on a file system all nodes share")

    # ------------------------------------------------------------------ the loop
    def _improved(self, value: float | None) -> bool:
        if self.monitor is None:  # no validation: the latest weights are the kept ones
            return True
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        v = value if self.mode == "max" else -value
        return v > self.state.best_metric

    def fit(self, resume: bool = True) -> TrainState:
        """Train the remaining rounds (all of them, or those after the checkpoint in ``out_dir``); returns the state."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._resume_if_checkpointed(resume)
        while self.state.round < self.rounds and not self.state.stopped_early:
            r = self.state.round
            seed_everything(round_seed(self.seed, r))
            if self.on_round_start is not None:
                self.on_round_start(unwrap(self.model), r)
            t0 = time.perf_counter()
            loss_sum, items = self._train_round(r)
            train_seconds = time.perf_counter() - t0
            row = {"round": r + 1, "step": self.state.step, "train_loss": loss_sum / max(items, 1),
                   "train_items_per_s": items / max(train_seconds, 1e-9), "train_seconds": round(train_seconds, 2),
                   "data_wait_share": round(self._data_seconds / max(train_seconds, 1e-9), 4),
                   "lr": self.optimizer.param_groups[0]["lr"], **self._evaluate(r)}
            self._end_round(row)
        if self._tb:
            self._tb.close()
        return self.state

    def _resume_if_checkpointed(self, resume: bool) -> None:
        found = resume and (self.out / CHECKPOINT_FILE).is_file()
        self._check_resume_agrees(found)
        if found and self.resume() and self.is_main:
            print(f"resumed from {self.out / CHECKPOINT_FILE} after round {self.state.round} (step {self.state.step}"
                  + (f", {self.state.round_batches} batches into round {self.state.round + 1})" if self.state.round_batches else ")"))

    def _train_round(self, r: int) -> tuple[float, int]:
        """The optimiser steps of round ``r`` (from a mid-round checkpoint on, if resuming there); returns (loss sum, items)."""
        self.model.train()
        skip = self.state.round_batches  # resuming inside this round: replay the data, not the steps
        total, count = torch.full((), self.state.round_loss_sum, device=self.device), self.state.round_items
        batches = iter(self.make_batches(r))  # a DataLoader draws its base seed here, before the restore
        if skip and self._rng is not None:
            torch.set_rng_state(self._rng["rng_cpu"])
            if "rng_cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["rng_cuda"], self.device)
        self._rng = None
        bar = tqdm(itertools.islice(batches, skip, None), total=self.steps_per_round,
                   initial=skip, desc=f"round {r + 1}/{self.rounds}",
                   unit="batch", leave=False, disable=not (self.progress and self.is_main))
        self._data_seconds = 0.0  # time spent waiting for the next batch (the data loader starving the model)
        batches_left = iter(bar)
        while True:
            t_wait = time.perf_counter()
            batch = next(batches_left, None)
            self._data_seconds += time.perf_counter() - t_wait
            if batch is None:
                break
            loss, n = self._step(batch, r)
            total += loss.detach() * n
            count += n
            if self.progress and self.is_main and self.state.step % 20 == 0:  # reading the loss syncs a GPU
                bar.set_postfix(loss=f"{float(total) / max(count, 1):.4f}")
            self.state.round_batches += 1
            if self.checkpoint_every and self.state.step % self.checkpoint_every == 0 and self.is_main:
                self._check_weights_finite(r)
                self.state.round_loss_sum, self.state.round_items = float(total), count
                _atomic_torch_save(self._checkpoint(), self.out / CHECKPOINT_FILE)
        bar.close()
        self.state.round_batches, self.state.round_loss_sum, self.state.round_items = 0, 0.0, 0
        return float(total), count

    def _step(self, batch, r: int) -> tuple[torch.Tensor, int]:
        """One optimiser step on ``batch``; refuses a non-finite loss before it reaches the weights."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, n = self.step_fn(self.model, batch)
        if not torch.isfinite(loss):  # never let NaN weights reach a checkpoint
            raise TrainingDiverged(f"{self.out}: non-finite loss {loss.detach().item()} in round {r + 1}, step {self.state.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.model))
        if self.scheduler is not None:
            self.scheduler.step()
        self.state.step += 1
        return loss, n

    def _end_round(self, row: dict) -> None:
        """Book-keeping after a round's evaluation: best weights, early stopping, checkpoint, logs."""
        r = row["round"] - 1
        if self.is_main:
            self._check_weights_finite(r)
        self.state.round = r + 1
        self.state.history.append(row)
        value = row.get(self.monitor)
        if self._improved(value):
            if self.monitor is not None:
                self.state.best_metric = value if self.mode == "max" else -value
            self.state.best_round = r + 1
            self.state.stale_rounds = 0
            if self.is_main:
                pending = self.out / BEST_PENDING_FILE
                with write_guard(pending):
                    save_weights(self.kept_model().state_dict(), pending,
                                 {**self.best_metadata, "round": str(r + 1),
                                  **({self.monitor: str(value)} if self.monitor else {})})
                self.state.best_sha256 = file_sha256(pending)
        else:
            self.state.stale_rounds += 1
        if self.patience is not None and self.state.stale_rounds >= self.patience:
            self.state.stopped_early = True
        if self.is_main:
            # the log first, then the checkpoint (the commit point: it records the new best weights' hash), then
            # the best weights move into place. A kill or a failed write anywhere costs at most this round, which
            # a resume retrains; best.safetensors is always the file the checkpoint vouches for.
            self._write_metrics()
            _atomic_torch_save(self._checkpoint(), self.out / CHECKPOINT_FILE)
            self._settle_pending_best()
            self._tensorboard(row)
            shown = ", ".join(f"{k} {_shown(k, v)}" for k, v in row.items() if k not in ("round", "lr", "train_seconds"))
            tqdm.write(f"round {r + 1}/{self.rounds}: {shown} ({row['train_seconds']:.0f} s)")
