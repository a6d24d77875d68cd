"""Inference from a model card: the preprocessing the model was trained with, then windows averaged.

:class:`Classifier` is what ``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export`` share: it
resamples a recording (mV at any rate) to the card's rate, normalises it with the card's
mean/std, and either averages the class probabilities of sliding windows (``input: crop``,
the default) or runs the study's single padded input (``input: paper``).

Both kinds of input have one length per model (the window, or the padded record), so the
inputs of many records are cut straight into full batches (:class:`BatchRunner`): no item-by-item
collation, ``torch.inference_mode``, and on a GPU (:func:`inference_plan`) bf16 autocast,
pinned host buffers copied without blocking, results kept on the GPU until the end, cuDNN's
autotuner, and 512 inputs per batch. On the CPU the arithmetic is float32 as before, in batches
small enough for the caches (8 inputs of 16,384 samples, up to 128 short ones), and the
probabilities are those of a record-by-record run (within 1e-6).

A model whose card says ``pooling: masked`` (see :mod:`ecgtl.models.card`) pools only over the
feature steps of real signal: every path here gives it, per input, the sample range ``valid =
(start, end)`` that is the record's (the rest of a short record's window is zero padding), as
fine-tuning did.

:class:`Ensemble` is several fine-tuned models used as one (``--checkpoint A B ...``: k-fold
models, several seeds): each member keeps its own preprocessing, inputs and ``class_bias``,
and the class probabilities of the members are averaged per record; an ensemble file of ``ecgtl
ensemble`` (:mod:`ecgtl.evaluate.ensemble`) names the members and adds biases fitted on their average.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc_dataset import CincPaperDataset, CincWindowDataset, aggregate_windows
from ecgtl.data.transforms import Normalization, window_starts
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.calibration import biased_probabilities
from ecgtl.evaluate.parallel import prepare_signal
from ecgtl.fileio import atomic_write
from ecgtl.models.card import card_pooling, model_from_card, read_card
from ecgtl.runtime import resolve_device, unwrap

MIN_SECONDS = 5.0  # shorter recordings are refused: a few beats cannot tell AF from other rhythms
#: ``precision`` of inference: ``auto`` is bf16 autocast on a CUDA GPU that supports it, float32 elsewhere.
PRECISIONS = ("auto", "float32", "bfloat16")
#: Model inputs per batch unless given: on the CPU at most 128 and 2**17 samples (a batch whose activations
#: stay in the caches: 8 inputs of 16,384 samples run 2x faster per input than 128 there), 512 on a GPU.
CPU_BATCH = 128
CPU_BATCH_SAMPLES = 2**17
CUDA_BATCH = 512


def find_card(checkpoint: str | os.PathLike) -> Path:
    """A model card path from a card, a run folder (``model.json`` inside) or its weights file."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "model.json"
    elif p.suffix == ".safetensors":
        p = p.with_name("model.json")
    if not p.is_file():
        if (Path(checkpoint) / "ensemble.json").is_file():
            raise ConfigError(f"{checkpoint}: an ensemble (ensemble.json), not one model; this command takes a model card")
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


def model_pooling(model: torch.nn.Module) -> str:
    """The global pooling of a model (``"mean"`` or ``"masked"``), through compile/DDP/EMA wrappers; ``"mean"`` if it says none."""
    return getattr(unwrap(model), "pooling", "mean")


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class InferencePlan:
    """How inputs go through the model on one device (see :func:`inference_plan`)."""

    device: torch.device
    batch_size: int
    amp_dtype: torch.dtype | None  # autocast dtype, None = float32
    pin_memory: bool  # page-locked host buffers, copied with non_blocking=True
    buffers: int  # host buffers in rotation: the next batch is cut while the last one is copied
    cudnn_benchmark: bool  # cuDNN picks its fastest kernels for the (one) input shape
    pad_last: bool = False  # the last, partial batch runs at full size (rows discarded): one shape, one cuDNN tuning

    @property
    def precision(self) -> str:
        return "float32" if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch.")


def inference_plan(device: str | torch.device, batch_size: int | None = None, precision: str = "auto",
                   bf16_supported: bool | None = None, input_samples: int | None = None) -> InferencePlan:
    """The settings of inference on ``device``; only a CUDA device gets the GPU ones.

    ``precision``: ``auto`` (bf16 autocast on a CUDA GPU that supports it, else float32),
    ``float32`` or ``bfloat16`` (autocast on any device). ``batch_size`` None: :data:`CUDA_BATCH`
    on a GPU; on the CPU :data:`CPU_BATCH`, or fewer inputs of ``input_samples`` samples, so that
    a batch holds at most :data:`CPU_BATCH_SAMPLES` samples. ``bf16_supported`` overrides the
    GPU's answer (tests). No CUDA call is made for a CPU device.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0):
        raise ConfigError(f"batch size must be a positive whole number, got {batch_size!r}")
    cuda = device.type == "cuda"
    if precision == "bfloat16":
        amp = torch.bfloat16
    elif precision == "auto" and cuda:
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        amp = torch.bfloat16 if supported else None
    else:
        amp = None
    if batch_size is None:
        batch_size = CUDA_BATCH if cuda else CPU_BATCH
        if not cuda and input_samples:
            batch_size = max(1, min(CPU_BATCH, CPU_BATCH_SAMPLES // int(input_samples)))
    return InferencePlan(device=device, batch_size=int(batch_size), amp_dtype=amp,
                         pin_memory=cuda, buffers=2 if cuda else 1, cudnn_benchmark=cuda, pad_last=cuda)


def _autocast(plan: InferencePlan):
    """Autocast to ``plan.amp_dtype`` (outputs are made float32 after it), or nothing for float32."""
    return contextlib.nullcontext() if plan.amp_dtype is None else torch.autocast(plan.device.type, dtype=plan.amp_dtype)


def _cut(row: np.ndarray, x: np.ndarray, start: int) -> tuple[int, int]:
    """``row[:] = x[start:start + len(row)]``, zeros where the window leaves the record (as ``take_window``).

    Returns the samples ``[lo, hi)`` of ``row`` that are the record's (``window_valid_range``).
    """
    length = row.shape[0]
    lo, hi = max(start, 0), min(start + length, x.shape[0])
    if hi <= lo:
        row[:] = 0.0
        return 0, 0
    row[: lo - start] = 0.0
    row[lo - start : hi - start] = x[lo:hi]
    row[hi - start :] = 0.0
    return lo - start, hi - start


class BatchRunner:
    """Model inputs of one length cut from many records, run through ``model`` in full batches.

    :meth:`add` queues the inputs ``x[start:start + length]`` of one record (zero-padded where
    they leave it, as :func:`~ecgtl.data.transforms.take_window`) and runs every batch that is
    full; :meth:`finish` runs the rest and returns the softmax probabilities (float32) of every
    input in order, with the record of each. Batches hold ``plan.batch_size`` inputs in record
    order, the last one fewer, whatever the calls to :meth:`add`: the same batches as a
    DataLoader over the same inputs. The probabilities stay on the device until :meth:`finish`
    (no synchronisation per batch); with ``plan.buffers`` > 1 the next batch is cut into another
    host buffer while the last one is copied; with ``plan.pad_last`` the last batch runs at full
    size (its extra rows dropped), so that cuDNN tunes its kernels for one shape only. ``seconds``
    is the time spent here (cutting, copying, the model, and waiting for it). ``masked`` (None:
    the model's own pooling, :func:`model_pooling`): the model is called as ``model(x, valid)``
    with each input's record samples ``valid`` ``(B, 2)`` (masked pooling).
    """

    def __init__(self, model: torch.nn.Module, length: int, plan: InferencePlan, masked: bool | None = None):
        if int(length) != length or length <= 0:
            raise ConfigError(f"model input length must be a positive whole number of samples, got {length!r}")
        self.model, self.length, self.plan = model, int(length), plan
        self.masked = model_pooling(model) == "masked" if masked is None else bool(masked)
        self._valid_buffers: list[torch.Tensor] = []
        self._pending: list[tuple[np.ndarray, int]] = []
        self._record_index: list[int] = []
        self._outputs: list[torch.Tensor] = []
        self._buffers: list[torch.Tensor] = []
        self._events: list = [None] * max(1, plan.buffers)
        self._turn = 0
        self.n_records = 0
        self.batches = 0
        self.seconds = 0.0

    @property
    def n_inputs(self) -> int:
        return len(self._record_index)

    @torch.inference_mode()
    def add(self, signal: np.ndarray, starts: np.ndarray) -> int:
        """Queue the inputs of one record (1-D float32 signal, start samples); returns the record's index."""
        t = time.perf_counter()
        x = np.asarray(signal, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"signal must be 1-D (samples,), got shape {x.shape}")
        r = self.n_records
        self.n_records += 1
        for s in np.asarray(starts, dtype=np.int64).reshape(-1):
            self._pending.append((x, int(s)))
            self._record_index.append(r)
        while len(self._pending) >= self.plan.batch_size:
            self._run(self.plan.batch_size)
        self.seconds += time.perf_counter() - t
        return r

    def _buffer(self, turn: int) -> torch.Tensor:
        while len(self._buffers) <= turn:
            self._buffers.append(torch.zeros((self.plan.batch_size, 1, self.length), dtype=torch.float32,
                                             pin_memory=self.plan.pin_memory))
        return self._buffers[turn]

    def _valid_buffer(self, turn: int) -> torch.Tensor:
        while len(self._valid_buffers) <= turn:  # (0, length): rows past n (pad_last) pool over their whole stale input
            buf = torch.zeros((self.plan.batch_size, 2), dtype=torch.int64, pin_memory=self.plan.pin_memory)
            buf[:, 1] = self.length
            self._valid_buffers.append(buf)
        return self._valid_buffers[turn]

    def _run(self, n: int) -> None:
        items, self._pending = self._pending[:n], self._pending[n:]
        turn = self._turn
        self._turn = (turn + 1) % len(self._events)
        if self._events[turn] is not None:
            self._events[turn].synchronize()  # the copy out of this buffer, two batches ago, is done
        buf = self._buffer(turn)
        host = buf.numpy()
        valid = self._valid_buffer(turn).numpy() if self.masked else None
        for k, (x, start) in enumerate(items):
            lo_hi = _cut(host[k, 0], x, start)
            if valid is not None:
                valid[k] = lo_hi
        device = self.plan.device
        rows = self.plan.batch_size if self.plan.pad_last else n  # rows past n: stale inputs, outputs dropped
        xb = buf[:rows].to(device, non_blocking=self.plan.pin_memory)
        vb = self._valid_buffers[turn][:rows].to(device, non_blocking=self.plan.pin_memory) if self.masked else None
        if device.type == "cuda":
            self._events[turn] = torch.cuda.Event()
            self._events[turn].record()
        previous = torch.backends.cudnn.benchmark
        if self.plan.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        try:
            with _autocast(self.plan):
                out = self.model(xb) if vb is None else self.model(xb, vb)
        finally:
            torch.backends.cudnn.benchmark = previous
        self._outputs.append(torch.softmax(out[:n].float(), dim=1))
        self.batches += 1

    @torch.inference_mode()
    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Run what is left; ``(probabilities (n_inputs, n_classes) float32, record index (n_inputs,) int64)``."""
        t = time.perf_counter()
        if self._pending:
            self._run(len(self._pending))
        probs = torch.cat(self._outputs).cpu().numpy() if self._outputs else np.zeros((0, 0), dtype=np.float32)
        self._outputs, self._buffers, self._valid_buffers = [], [], []
        self.seconds += time.perf_counter() - t
        return probs, np.asarray(self._record_index, dtype=np.int64)


def _dataset_cuts(dataset) -> tuple[list[np.ndarray], list[np.ndarray], int] | None:
    """``(signals, input starts per record, input length)`` of the datasets of :func:`inference_dataset`, else None."""
    if isinstance(dataset, CincWindowDataset):
        counts = np.bincount(dataset.record_index, minlength=dataset.n_records)
        if dataset.record_index.size and np.any(np.diff(dataset.record_index) < 0):
            return None  # not in record order: the generic path keeps its order
        return dataset.signals, np.split(dataset.starts, np.cumsum(counts)[:-1]), dataset.window_samples
    if isinstance(dataset, RecordIndexDataset) and isinstance(dataset.base, CincPaperDataset):
        length = dataset.base.length
        return dataset.base.signals, [np.array([s.shape[0] - length]) for s in dataset.base.signals], length
    return None


def predict_dataset(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                    source: str | os.PathLike | None = None, precision: str = "float32",
                    pooling: str | None = None) -> np.ndarray:
    """Per-record class probabilities, shape (n_records, n_classes), float32 arithmetic unless ``precision`` says otherwise.

    ``dataset`` yields ``(x, record_index)``: sliding windows (:class:`CincWindowDataset`, whose
    window probabilities are averaged per record) or one input per record. The datasets of
    :func:`inference_dataset` are cut straight into batches (:class:`BatchRunner`); any other
    goes through a DataLoader. Non-finite probabilities raise a :class:`DataError` naming
    ``source`` (the model's card or run folder). ``pooling`` (None: the model's own,
    :func:`model_pooling`): with ``"masked"`` the model gets each input's ``valid`` sample
    range (any other dataset must then have ``valid_range(i)``).
    """
    plan = inference_plan(device, batch_size, precision)
    model.eval()
    masked = (model_pooling(model) if pooling is None else pooling) == "masked"
    cuts = _dataset_cuts(dataset)
    if cuts is None:
        probs, index = _predict_loader(model, _WithValid(dataset) if masked else dataset, plan, masked)
    else:
        signals, starts, length = cuts
        runner = BatchRunner(model, length, plan, masked=masked)
        for x, s in zip(signals, starts):
            runner.add(x, s)
        probs, index = runner.finish()
    if isinstance(dataset, CincWindowDataset):
        return check_probabilities(aggregate_windows(probs, index, dataset.n_records), source)
    order = np.argsort(index, kind="stable")
    return check_probabilities(probs[order], source)


@torch.inference_mode()
def _predict_loader(model: torch.nn.Module, dataset, plan: InferencePlan, masked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Any dataset of ``(x, index)`` items (``(x, index, valid)`` when ``masked``), through a DataLoader (one shape per batch)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=plan.batch_size, shuffle=False, pin_memory=plan.pin_memory)
    probs, index = [], []
    for x, idx, *valid in loader:
        with _autocast(plan):
            if masked:
                out = model(x.to(plan.device, non_blocking=plan.pin_memory), valid[0].to(plan.device))
            else:
                out = model(x.to(plan.device, non_blocking=plan.pin_memory))
        probs.append(torch.softmax(out.float(), dim=1))
        index.append(np.asarray(idx))
    return torch.cat(probs).cpu().numpy(), np.concatenate(index)


class _WithValid(torch.utils.data.Dataset):
    """``(x, index)`` items of a dataset with ``valid_range(i)``, as ``(x, index, valid)`` for masked pooling."""

    def __init__(self, base):
        if not callable(getattr(base, "valid_range", None)):
            raise ConfigError(f"a model with masked pooling needs to know where the real signal is in each input, "
                              f"but {type(base).__name__} has no valid_range(i)")
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, idx = self.base[i][:2]
        return x, idx, torch.tensor(self.base.valid_range(i), dtype=torch.int64)


class RecordIndexDataset(torch.utils.data.Dataset):
    """Wraps a one-input-per-record dataset so it yields ``(x, record_index)`` like the window dataset."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], i

    def valid_range(self, i: int) -> tuple[int, int]:
        """Samples of item ``i``'s input that are the record's (the base dataset's ``valid_range``)."""
        return self.base.valid_range(i)


def inference_dataset(signals: list[np.ndarray], input_mode: str, window: int, hop: int, paper_samples: int):
    """The evaluation dataset of a model: sliding windows (``crop``) or the paper's padded input."""
    if input_mode == "paper":
        return RecordIndexDataset(CincPaperDataset(signals, None, paper_samples))
    if window <= 0 or hop <= 0:
        raise ConfigError(f"window ({window}) and hop ({hop}) must be positive samples")
    return CincWindowDataset(signals, None, window, hop)


# --------------------------------------------------------------------------- timing
@dataclass
class InferenceTiming:
    """Where the time of classifying ``records`` recordings went.

    ``seconds`` is the wall time from the first file read to the last probability, of which
    ``first_record_s`` passed before the first record was ready (starting the workers). ``read_s``
    (files) and ``preprocess_s`` (normalise, resample) are summed over the records, so with
    ``workers`` processes they add up to more than their share of the wall time; ``model_s``
    is this process's time in the model stage (cutting batches, copying them, the model,
    waiting for the GPU), which overlaps the workers' reading.
    """

    records: int
    seconds: float
    first_record_s: float  # until the first record was prepared: the worker processes' start-up, one file read
    read_s: float
    preprocess_s: float
    model_s: float
    inputs: int
    batches: int
    workers: int
    device: str
    precision: str
    batch_size: int

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_records_per_s(self) -> float:
        return self.records / self.model_s if self.model_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["records_per_s"] = self.records_per_s
        d["model_records_per_s"] = self.model_records_per_s
        return d

    def summary(self) -> str:
        where = f"summed over {self.workers} worker processes" if self.workers else "in this process"
        return (f"{self.records} records in {self.seconds:.2f} s = {self.records_per_s:,.0f} records/s "
                f"(read {self.read_s:.2f} s, preprocess {self.preprocess_s:.2f} s, {where}, the first record ready "
                f"after {self.first_record_s:.2f} s; model {self.model_s:.2f} s "
                f"= {self.model_records_per_s:,.0f} records/s, {self.inputs} inputs in {self.batches} batches of up to "
                f"{self.batch_size} on {self.device}, {self.precision})")


# --------------------------------------------------------------------------- classifier
try:  # the (1, k) 2-D convolution layout of 1-D ResNets, where the models package has it
    from ecgtl.models import apply_conv_layout as _apply_conv_layout
except ImportError:  # pragma: no cover - older models package
    _apply_conv_layout = None


MAX_TEST_TIME_SHIFTS = 64


def check_test_time_shifts(shifts: Sequence[int] | None, window: int, source: str | os.PathLike) -> tuple[int, ...]:
    """``shifts`` checked for a model whose inputs are ``window`` samples long: distinct whole numbers in ``[0, window)``.

    None means no test-time shifts, ``(0,)``. Raises :class:`ConfigError` naming ``source``.
    """
    if shifts is None:
        return (0,)
    shifts = list(shifts)
    if not 1 <= len(shifts) <= MAX_TEST_TIME_SHIFTS:
        raise ConfigError(f"{source}: test_time_shifts needs 1 to {MAX_TEST_TIME_SHIFTS} sample offsets, got {len(shifts)}")
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in shifts):
        raise ConfigError(f"{source}: test_time_shifts must be whole numbers of samples, got {shifts!r}")
    if len(set(shifts)) != len(shifts) or not all(0 <= k < window for k in shifts):
        raise ConfigError(f"{source}: test_time_shifts must be distinct sample offsets in [0, {window}) (the model's "
                          f"input is {window} samples), got {shifts!r}")
    return tuple(int(k) for k in shifts)


class Classifier:
    """A fine-tuned model ready to classify recordings (signal in mV at any sampling rate).

    ``device``: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``...; ``batch_size`` None:
    512 on a GPU, on the CPU 128 or fewer for long inputs (:func:`inference_plan`); ``precision``: see :func:`inference_plan`; ``conv_layout``:
    ``auto`` (the models package's choice for the device), ``1d`` or ``2d``. After each
    :meth:`predict_proba`, ``last_timing`` tells where its time went. ``pooling`` is the card's
    (``"mean"`` for cards without the field): with ``"masked"`` each input's record samples
    are given to the model, as in fine-tuning.

    ``shifts`` (test-time augmentation; None: none): each window of a record is also taken
    ``k`` samples later for every ``k`` (samples at the model's rate; the part past the record's
    end is zeros, as its front padding is), and the record's probabilities average all of them.
    A strided network is not shift invariant: one period of its total stride (32 samples for the
    1-D ResNets here: ``0, 4, ..., 28``; 64 for ``resnet18_preact_stem4``: ``0, 8, ..., 56``)
    averages out the phase at which it sees the signal.
    Only the ``crop`` input (sliding windows) takes shifts.
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", batch_size: int | None = None,
                 precision: str = "auto", conv_layout: str = "auto", shifts: Sequence[int] | None = None):
        path = find_card(checkpoint)
        self.card = read_card(path)  # the weights are checked against the card by model_from_card
        if self.card.get("task") != "cinc2017" or int(self.card.get("num_classes", 0)) < 2:
            raise DataError(path, f"not a fine-tuned classifier (task {self.card.get('task')!r}); "
                                  "pre-trained backbones are used through `ecgtl finetune --init`")
        self.model, _ = model_from_card(self.card)  # its pooling set from the card
        self.pooling = card_pooling(self.card)
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.conv_layout = "1d"
        if _apply_conv_layout is not None and conv_layout != "1d":
            self.conv_layout = _apply_conv_layout(self.model, conv_layout, self.device)
        self.fs = float(self.card["fs"])
        self.normalization = Normalization.from_dict(self.card["normalization"])
        self.classes = tuple(self.card.get("classes", CINC_CLASSES))
        self.input = self.card.get("input", "crop")
        self.window = int(self.card.get("window_samples", 0))
        self.hop = int(self.card.get("hop_samples", 0))
        self.paper_samples = int(self.card.get("paper_samples", 16384))
        self.shifts = check_test_time_shifts(shifts, self.input_samples, path)
        if self.input == "paper" and self.shifts != (0,):
            raise ConfigError(f"{path}: test-time shifts apply to sliding windows (input: crop); this model reads the "
                              "study's padded input (input: paper), one input per record")
        self.plan = inference_plan(self.device, batch_size, precision, input_samples=self.input_samples)
        self.batch_size = self.plan.batch_size
        self.last_timing: InferenceTiming | None = None

    def preprocess(self, signals: list[np.ndarray], fs: float | list[float]) -> list[np.ndarray]:
        """Normalise and resample recordings (mV at ``fs`` Hz) to the model's input."""
        fss = fs if isinstance(fs, (list, tuple)) else [fs] * len(signals)
        mean, std = self.normalization.mean, self.normalization.std  # as prepare_cinc, bit for bit, the filter designed once
        return [prepare_signal(s, f, self.fs, mean, std) for s, f in zip(signals, fss)]

    @property
    def input_samples(self) -> int:
        """Samples of one model input (a window, or the paper's padded record)."""
        return self.paper_samples if self.input == "paper" else self.window

    def input_starts(self, n_samples: int) -> np.ndarray:
        """Start samples of the model inputs of a prepared record of ``n_samples`` samples."""
        if self.input == "paper":
            return np.array([int(n_samples) - self.paper_samples], dtype=np.int64)
        if self.window <= 0 or self.hop <= 0:
            raise ConfigError(f"window ({self.window}) and hop ({self.hop}) must be positive samples")
        starts = window_starts(int(n_samples), self.window, self.hop)
        if self.shifts == (0,):
            return starts
        return (starts[:, None] + np.asarray(self.shifts, dtype=np.int64)[None, :]).ravel()  # every window at every shift

    def runner(self) -> BatchRunner:
        """A :class:`BatchRunner` for this model: :meth:`BatchRunner.add` prepared records, then :meth:`probabilities`."""
        self.input_starts(self.input_samples)  # a card with a bad window is refused before any record is read
        return BatchRunner(self.model, self.input_samples, self.plan, masked=self.pooling == "masked")

    def probabilities(self, runner: BatchRunner, check: bool = True) -> np.ndarray:
        """Per-record class probabilities of the records added to ``runner`` (windows averaged, decision biases applied).

        ``check``: refuse non-finite probabilities with a :class:`DataError` naming the card (else
        they are returned, for the caller to refuse record by record).
        """
        probs, index = runner.finish()
        if runner.n_records == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.input == "paper":
            probs = probs[np.argsort(index, kind="stable")]
        else:
            probs = aggregate_windows(probs, index, runner.n_records)
        if check:
            check_probabilities(probs, self.card["_card_path"])
        with np.errstate(invalid="ignore", divide="ignore"):
            return biased_probabilities(probs, self.card.get("class_bias"))  # decision biases fitted on validation, if any

    def predict_proba(self, signals: list[np.ndarray], fs: float | list[float], check: bool = True) -> np.ndarray:
        """Class probabilities, shape (n_recordings, n_classes); all finite (else a :class:`DataError` naming the card).

        The timing of the call is left in ``last_timing``.
        """
        t0 = time.perf_counter()
        prepared = self.preprocess(signals, fs)
        t1 = time.perf_counter()
        runner = self.runner()
        for x in prepared:
            runner.add(x, self.input_starts(x.shape[0]))
        probs = self.probabilities(runner, check=check)
        self.last_timing = self.timing(runner, time.perf_counter() - t0, read_s=0.0, preprocess_s=t1 - t0, workers=0,
                                       first_record_s=(t1 - t0) / max(1, len(prepared)))
        return probs

    def timing(self, runner: BatchRunner, seconds: float, read_s: float, preprocess_s: float, workers: int,
               first_record_s: float = 0.0) -> InferenceTiming:
        """The :class:`InferenceTiming` of the records that went through ``runner``."""
        return InferenceTiming(records=runner.n_records, seconds=seconds, first_record_s=first_record_s, read_s=read_s,
                               preprocess_s=preprocess_s,
                               model_s=runner.seconds, inputs=runner.n_inputs, batches=runner.batches, workers=workers,
                               device=str(self.device), precision=self.plan.precision, batch_size=self.plan.batch_size)


#: How a record is prepared for a model: ``(fs in Hz, normalisation mean, normalisation std)``.
Preparation = tuple[float, float, float]


class Ensemble:
    """Several fine-tuned classifiers as one model: the mean of their class probabilities, per record.

    Each member keeps its own preprocessing (rate, normalisation), input (``crop`` windows or
    the ``paper`` input), pooling and decision biases (``class_bias``), so models trained at
    different rates can be mixed; the members' final probabilities (each after its own
    ``class_bias``) are averaged with equal weights. All members must have the same classes in
    the same order, and a model cannot be a member twice. A record is read once and prepared
    once per distinct :data:`Preparation` (:attr:`preparations`; member ``i`` uses
    ``preparations[member_preparation[i]]``). A one-member ensemble gives its model's
    probabilities bit for bit. After :meth:`probabilities`, ``last_member_probabilities`` holds
    each member's, so that non-finite output is blamed on the member that gave it
    (:meth:`check_probabilities`).
    """

    def __init__(self, members: Sequence[Classifier], class_bias: Sequence[float] | None = None, source_file: Path | None = None):
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one model: give one or more --checkpoint")
        first = members[0]
        seen: dict[str, Classifier] = {}
        for m in members:
            path = str(Path(m.card["_card_path"]).resolve())
            if path in seen:
                raise ConfigError(f"{m.card['_card_path']}: the same model is given twice as an ensemble member; "
                                  "give each checkpoint once")
            seen[path] = m
            if m.classes != first.classes:
                raise ConfigError(f"{m.card['_card_path']} has the classes {list(m.classes)} but "
                                  f"{first.card['_card_path']} has {list(first.classes)}: the probabilities of an ensemble's "
                                  "members are averaged class by class, so all need the same classes in the same order")
        if class_bias is not None and len(class_bias) != len(first.classes):
            raise ConfigError(f"{source_file or 'ensemble'}: class_bias has {len(class_bias)} values for {len(first.classes)} classes")
        self.members = members
        self.class_bias = None if class_bias is None else [float(b) for b in class_bias]
        self.source_file = source_file  # the ensemble file (ecgtl.evaluate.ensemble) it was loaded from, if any
        self.classes = first.classes
        self.device = first.device
        self.preparations: list[Preparation] = []
        self.member_preparation: list[int] = []
        for m in members:
            key = (float(m.fs), float(m.normalization.mean), float(m.normalization.std))
            if key not in self.preparations:
                self.preparations.append(key)
            self.member_preparation.append(self.preparations.index(key))
        self.last_member_probabilities: list[np.ndarray] | None = None
        self.last_timing: InferenceTiming | None = None

    @classmethod
    def load(cls, checkpoints: Sequence[str | os.PathLike] | str | os.PathLike, device: str = "auto",
             batch_size: int | None = None, precision: str = "auto", conv_layout: str = "auto",
             shifts: Sequence[int] | None = None) -> Ensemble:
        """The ensemble of ``checkpoints`` (cards, run folders or weights files; one path: a one-member ensemble).

        An ensemble file (``ensemble.json`` of ``ecgtl ensemble``, or its folder) given alone stands for
        its members, with its ``class_bias`` applied to their average and its ``test_time_shifts``
        given to every member. ``shifts`` (:class:`Classifier`) is for plain checkpoints, and is
        refused with an ensemble file, which carries its own. Duplicates are refused before any
        weights are read.
        """
        from ecgtl.evaluate.ensemble import expand_checkpoints

        paths = [checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else list(checkpoints)
        if not paths:
            raise ConfigError("an ensemble needs at least one model: give one or more --checkpoint")
        paths, ens_file = expand_checkpoints([os.fspath(p) for p in paths])
        if ens_file is not None:
            if shifts is not None:
                raise ConfigError(f"{ens_file.path}: an ensemble file carries its own test_time_shifts "
                                  f"({list(ens_file.test_time_shifts or [0])}); give no other shifts with it")
            shifts = ens_file.test_time_shifts
        cards: dict[str, str | os.PathLike] = {}
        for c in paths:
            key = str(find_card(c).resolve())
            if key in cards:
                raise ConfigError(f"{c}: the same model as {cards[key]} (card {key}); give each checkpoint once")
            cards[key] = c
        members = []
        for c in paths:
            try:
                members.append(Classifier(c, device=device, batch_size=batch_size, precision=precision,
                                          conv_layout=conv_layout, shifts=shifts))
            except ConfigError as exc:  # from an ensemble file: say which (its test_time_shifts may be what does not fit)
                if ens_file is None:
                    raise
                raise ConfigError(f"{ens_file.path}: member {c}: {exc}") from None
        return cls(members, class_bias=ens_file.class_bias if ens_file else None,
                   source_file=ens_file.path if ens_file else None)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def cards(self) -> list[Path]:
        """The members' model cards (resolved paths), in order."""
        return [Path(m.card["_card_path"]) for m in self.members]

    @property
    def source(self) -> str:
        """What errors name: the card of a one-member ensemble, else the ensemble (its file) and its members' cards."""
        if self.source_file is not None:
            return f"ensemble {self.source_file} of {len(self.members)} models ({', '.join(map(str, self.cards))})"
        if len(self.members) == 1:
            return self.members[0].card["_card_path"]
        return f"ensemble of {len(self.members)} models ({', '.join(map(str, self.cards))})"

    def preprocess(self, signals: list[np.ndarray], fs: float | list[float]) -> list[list[np.ndarray]]:
        """The recordings prepared once per :attr:`preparations` entry: ``[preparation][record]``."""
        fss = fs if isinstance(fs, (list, tuple)) else [fs] * len(signals)
        return [[prepare_signal(s, f, fs_out, mean, std) for s, f in zip(signals, fss)]
                for fs_out, mean, std in self.preparations]

    def runners(self) -> list[BatchRunner]:
        """One :class:`BatchRunner` per member; :meth:`add` records to them, then :meth:`probabilities`."""
        return [m.runner() for m in self.members]

    def add(self, runners: list[BatchRunner], prepared: Sequence[np.ndarray]) -> None:
        """Queue one record, given prepared once per :attr:`preparations` entry, to every member's runner."""
        for m, k, runner in zip(self.members, self.member_preparation, runners):
            x = prepared[k]
            runner.add(x, m.input_starts(x.shape[0]))

    def probabilities(self, runners: list[BatchRunner], check: bool = True) -> np.ndarray:
        """Per-record class probabilities: the mean of the members' (:meth:`Classifier.probabilities`, biases applied).

        ``check``: refuse non-finite probabilities, naming the member's card (else they are
        returned, for :meth:`check_probabilities` record by record).
        """
        per = [m.probabilities(r, check=check) for m, r in zip(self.members, runners)]
        self.last_member_probabilities = per
        return biased_probabilities(self.combine(per), self.class_bias)  # the ensemble file's biases, if any

    @staticmethod
    def combine(per_member: Sequence[np.ndarray]) -> np.ndarray:
        """The mean of the members' probabilities (float64 sums, the members' dtype); one member: its own, unchanged."""
        if len(per_member) == 1:
            return per_member[0]
        dtype = np.result_type(*per_member)
        total = np.zeros(np.shape(per_member[0]), dtype=np.float64)
        for p in per_member:
            total += p
        return (total / len(per_member)).astype(dtype)

    def check_probabilities(self, probs: np.ndarray, rows=None) -> np.ndarray:
        """:func:`check_probabilities` of ``probs`` (the last :meth:`probabilities`, or its ``rows``), naming the member at fault."""
        if np.all(np.isfinite(probs)):
            return probs
        for m, p in zip(self.members, self.last_member_probabilities or []):
            check_probabilities(p if rows is None else p[rows], m.card["_card_path"])
        return check_probabilities(probs, self.source)

    def predict_proba(self, signals: list[np.ndarray], fs: float | list[float], check: bool = True) -> np.ndarray:
        """Class probabilities, shape (n_recordings, n_classes), the members' averaged; timing in ``last_timing``."""
        t0 = time.perf_counter()
        prepared = self.preprocess(signals, fs)
        t1 = time.perf_counter()
        runners = self.runners()
        for i in range(len(signals)):
            self.add(runners, [xs[i] for xs in prepared])
        probs = self.probabilities(runners, check=check)
        self.last_timing = self.timing(runners, time.perf_counter() - t0, read_s=0.0, preprocess_s=t1 - t0, workers=0,
                                       first_record_s=(t1 - t0) / max(1, len(signals)))
        return probs

    def timing(self, runners: list[BatchRunner], seconds: float, read_s: float, preprocess_s: float, workers: int,
               first_record_s: float = 0.0) -> InferenceTiming:
        """The :class:`InferenceTiming` of the records that went through ``runners`` (model time, inputs and batches summed)."""
        if len(self.members) == 1:
            return self.members[0].timing(runners[0], seconds, read_s, preprocess_s, workers, first_record_s)
        return InferenceTiming(records=runners[0].n_records, seconds=seconds, first_record_s=first_record_s, read_s=read_s,
                               preprocess_s=preprocess_s, model_s=sum(r.seconds for r in runners),
                               inputs=sum(r.n_inputs for r in runners), batches=sum(r.batches for r in runners),
                               workers=workers, device=str(self.device), precision=self.members[0].plan.precision,
                               batch_size=max(m.plan.batch_size for m in self.members))


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


PROB_COLUMNS = tuple(f"p_{c}" for c in CINC_CLASSES)  # the class probability columns of a predictions CSV


def write_predictions(path: str | os.PathLike, names, labels, probs: np.ndarray) -> None:
    """Per-record predictions as CSV (record, label or empty when ``label < 0``, prediction, one probability per class), atomically."""
    check_probabilities(np.asarray(probs), path)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["record", "label", "prediction", *PROB_COLUMNS])
    for n, y, p in zip(names, labels, probs):
        w.writerow([n, CINC_CLASSES[int(y)] if y >= 0 else "", CINC_CLASSES[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    atomic_write(path, text.getvalue())
