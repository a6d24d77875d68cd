"""Reading and preparing records in worker processes, for ``ecgtl evaluate`` and ``ecgtl predict``.

Reading a CinC record costs about 1.5 ms of Python (most of it parsing the WFDB header) and
preparing it (normalise, resample) about 0.5 ms, all under the GIL: threads barely help, so
many records are read by a pool of processes. The pool starts with ``forkserver`` (a clean
process that imports the worker's module once, then forks the workers), never by forking a
process that holds CUDA or PyTorch threads. Results come back in order, while the caller
runs the model on the records already prepared.

This module imports no PyTorch: a worker that runs :func:`read_prepared_cinc` loads only
numpy, scipy and the CinC reader.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecgtl.errors import DataError

#: Fewer records than this per worker are read in this process: a pool starts in about a second.
MIN_RECORDS_PER_WORKER = 64
#: At most this many worker processes (16 read about 10,000 CinC records/s).
MAX_WORKERS = 16


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_workers(n_items: int, cores: int | None = None) -> int:
    """Worker processes for ``n_items`` records: 0 (this process) for few records or 2 cores or fewer,
    else one per core but one (the model runs in this process), at most :data:`MAX_WORKERS`."""
    cores = available_cores() if cores is None else cores
    if cores <= 2:
        return 0
    return max(0, min(cores - 1, MAX_WORKERS, n_items // MIN_RECORDS_PER_WORKER))


def resolve_workers(workers: int | str | None, n_items: int) -> int:
    """``workers`` as a count: ``None``/``"auto"`` -> :func:`default_workers`; 0 or 1 -> 0 (this process)."""
    if workers is None or workers == "auto":
        return default_workers(n_items)
    n = int(workers)
    if n < 0:
        raise ValueError(f"workers must be >= 0, got {workers!r}")
    return 0 if n <= 1 else n


def _pool_context(preload: Sequence[str]):
    import multiprocessing as mp

    try:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
    except ValueError:  # pragma: no cover - a platform without forkserver (Windows)
        ctx = mp.get_context("spawn")
    return ctx


def start_pool_server(preload: Sequence[str]) -> None:
    """Start the process that forks the workers now (in the background), when this machine would use workers.

    It imports ``preload`` while the caller goes on (loading a model, starting CUDA), so that the
    first :func:`ordered_map` with workers does not wait for it. Does nothing on 2 cores or fewer.
    """
    if available_cores() <= 2:
        return
    ctx = _pool_context(preload)
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 0, preload: Sequence[str] = ()) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, computed by ``workers`` processes (0: here, one at a time).

    ``fn`` must be a module-level function and ``preload`` the modules the workers import
    before forking (``fn``'s own module, so that each worker does not import it again). The
    pool is shut down when the iterator is exhausted or closed (a KeyboardInterrupt cancels the
    records not yet started). An exception in ``fn`` is raised here, in order.
    """
    if workers <= 0 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import ProcessPoolExecutor

    ctx = _pool_context(preload)
    workers = min(workers, len(items))
    chunk = max(1, min(32, math.ceil(len(items) / (workers * 8))))  # small chunks: results stream back early
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        yield from pool.map(fn, items, chunksize=chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Prepared:
    """A record read and prepared for the model (``signal`` None and ``error`` set when it could not be read).

    ``read_s`` and ``preprocess_s`` are the seconds this record took in its worker. ``signals``:
    the record prepared for each of the job's preparations (an ensemble's models at several
    rates), ``signal`` being the first.
    """

    name: str
    label: str | None
    signal: np.ndarray | None
    error: str | None
    read_s: float
    preprocess_s: float
    fs: float = 0.0
    samples: int = 0
    signals: tuple[np.ndarray, ...] = ()


@functools.lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing filter :func:`scipy.signal.resample_poly` designs for ``up``/``down`` (its default window)."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    h = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    h.setflags(write=False)
    return h


def resample_fast(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """:func:`ecgtl.data.transforms.resample`, bit for bit, with the filter designed once per rate pair, not per call.

    Designing the filter is about 40 % of resampling a CinC record; ``resample_poly`` given the
    same filter as its ``window`` computes the same samples (a test compares the two).
    """
    from scipy.signal import resample_poly

    from ecgtl.data.transforms import resample, resample_factors

    x = np.asarray(signal)
    up, down = resample_factors(fs_in, fs_out)
    if up == down or x.ndim != 1 or x.shape[0] == 0:
        return resample(x, fs_in, fs_out)
    return resample_poly(x.astype(np.float64, copy=False), up, down, window=_lowpass(up, down)).astype(np.float32)


def prepare_signal(signal: np.ndarray, fs: float, fs_out: float, mean: float, std: float) -> np.ndarray:
    """What :meth:`~ecgtl.evaluate.inference.Classifier.preprocess` does to one recording: normalise, then resample.

    The same as :func:`ecgtl.data.cinc_dataset.prepare_cinc` (``Normalization`` then ``resample``),
    bit for bit (a test compares them), with the resampling filter designed once.
    """
    from ecgtl.data.transforms import Normalization

    return resample_fast(Normalization(mean=mean, std=std)(signal), fs, fs_out)


def read_prepared_cinc(job: tuple) -> Prepared:
    """Worker: read CinC record ``name`` of ``folder`` and prepare it; a bad record gives its error, naming the file.

    ``job``: ``(folder, name, label, fs_out, mean, std)`` (:func:`cinc_jobs`), or ``(folder, name,
    label, preparations)`` with a tuple of ``(fs_out, mean, std)`` (:func:`cinc_ensemble_jobs`):
    the record is read once and prepared for each, in order (``Prepared.signals``).
    """
    from ecgtl.data.cinc2017 import read_record

    folder, name, label, *rest = job
    preparations = tuple(rest[0]) if len(rest) == 1 else (tuple(rest),)
    t0 = time.perf_counter()
    try:
        rec = read_record(folder, name, label)
    except DataError as err:
        return Prepared(name, label, None, str(err), time.perf_counter() - t0, 0.0)
    t1 = time.perf_counter()
    xs = tuple(prepare_signal(rec.signal, rec.fs, fs_out, mean, std) for fs_out, mean, std in preparations)
    return Prepared(name, label, xs[0], None, t1 - t0, time.perf_counter() - t1, float(rec.fs), int(rec.signal.shape[0]),
                    signals=xs)


def cinc_jobs(folder: str | os.PathLike, names: Iterable[str], labels: dict[str, str], fs_out: float, mean: float,
              std: float) -> list[tuple[str, str, str | None, float, float, float]]:
    """The arguments of :func:`read_prepared_cinc` for each record name."""
    return [(os.fspath(folder), n, labels.get(n), float(fs_out), float(mean), float(std)) for n in names]


def cinc_ensemble_jobs(folder: str | os.PathLike, names: Iterable[str], labels: dict[str, str],
                       preparations: Sequence[tuple[float, float, float]]) -> list[tuple]:
    """The arguments of :func:`read_prepared_cinc` for each record name, prepared once per ``(fs_out, mean, std)``."""
    preps = tuple((float(f), float(m), float(s)) for f, m, s in preparations)
    return [(os.fspath(folder), n, labels.get(n), preps) for n in names]
