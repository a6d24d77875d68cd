"""Inference throughput of ``ecgtl evaluate`` / ``predict``: records/s of the model stage, old batching against new.

    python benchmarks/bench_inference.py [--device cpu|cuda] [--records N] [--data CINC_DIR]
        [--input paper|crop|both] [--arch resnet18_postact] [--width 1.0] [--fs 250]
        [--batch-sizes 256,1024] [--repeats R] [--out reports/bench_inference.json]

A model of ``--arch``/``--width`` with random weights (the speed of trained weights is the
same) classifies N CinC-like records at ``--fs`` Hz: real CinC 2017 records of ``--data`` (a
folder in the CinC layout; needs wfdb), else synthetic ECG-like signals in mV at 300 Hz whose
lengths follow CinC 2017's (70.5 % exactly 30 s, 9.9 % about 60 s, the rest spread over 9-61 s,
as the 7,248 records here). Inputs: ``paper`` (the last 65.5 s, 16,384 samples, zero-padded in
front: one input per record, the paper preset of this model) and ``crop`` (16.384 s windows,
hop 8.192 s, probabilities averaged: the default of ``ecgtl finetune``). Both kinds of input
have one length, so "padded to the longest" is what ``paper`` does already.

Model-stage variants, all on the same prepared (normalised, resampled) records, timed one
after the other in this run:

* ``per_record``: each record's inputs as their own batch (``ecgtl predict`` before: one file
  at a time);
* ``old_loader``: the previous ``predict_dataset``: a DataLoader collating item by item,
  ``no_grad``, float32, batches of 128, each batch's probabilities copied back at once;
* ``new_float32``: :class:`~ecgtl.evaluate.inference.BatchRunner`: inputs cut straight into
  batches, ``inference_mode``; on the CPU batches of at most 2**17 samples (8 paper inputs, 32
  windows), on CUDA pinned buffers, non-blocking copies, probabilities kept on the GPU to the
  end, cuDNN autotuning, batches of 512;
* ``new`` (CUDA only): the same with bf16 autocast (the default there), and ``new_2d`` with the
  models package's (1, k) 2-D convolution layout where it has one; ``new_bs<B>``: other batch sizes.

Each variant's probabilities are compared with ``old_loader``'s (max |difference|). Then the
end-to-end :class:`~ecgtl.evaluate.inference.Classifier` path (``predict_proba`` on the raw
300 Hz signals: preprocessing included, default settings for the device) and, with ``--data``,
``ecgtl evaluate``'s folder path (reading in worker processes, then the model) with 0 workers
and with the default, run as the command (``python -m ecgtl evaluate``, a fresh process). Needs only
torch, numpy and scipy (and wfdb for ``--data``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ecgtl.data.cinc_dataset import prepare_cinc
from ecgtl.data.transforms import PAPER_CINC
from ecgtl.evaluate.inference import BatchRunner, Classifier, inference_dataset, inference_plan
from ecgtl.evaluate.parallel import available_cores
from ecgtl.models import create_model
from ecgtl.models.card import save_weights, write_card

CINC_FS = 300.0
CLASSES = ["N", "A", "O", "~"]


# --------------------------------------------------------------------------- records
def cinc_like_seconds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Durations (s) distributed as CinC 2017's: 70.5 % exactly 30 s, 9.9 % about 60 s, the rest over 9-61 s."""
    u = rng.random(n)
    return np.where(u < 0.705, 30.0, np.where(u < 0.804, rng.uniform(59.5, 61.0, n), rng.uniform(9.0, 61.0, n)))


def synthetic_signals(n: int, seed: int = 0) -> list[np.ndarray]:
    """ECG-like signals in mV at 300 Hz: narrow 1 mV beats at 50-120 bpm, a baseline wander, noise."""
    rng = np.random.default_rng(seed)
    out = []
    for secs in cinc_like_seconds(n, rng):
        t = np.arange(int(round(secs * CINC_FS))) / CINC_FS
        phase = (t * rng.uniform(50, 120) / 60.0) % 1.0
        x = np.exp(-((phase - 0.5) ** 2) / 2e-4) + 0.1 * np.sin(2 * np.pi * 0.3 * t) + 0.03 * rng.standard_normal(t.shape)
        out.append(x.astype(np.float32))
    return out


def real_signals(folder: str, n: int) -> tuple[list[np.ndarray], list[float]]:
    from ecgtl.data.cinc2017 import Cinc2017

    cinc = Cinc2017(folder)
    records, _ = cinc.read_all(progress=False, names=cinc.names[:n])
    return [r.signal for r in records], [r.fs for r in records]


def write_model_card(folder: Path, arch: str, width: float, fs: float, input_mode: str) -> Path:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=len(CLASSES), width=width)
    save_weights(model.state_dict(), folder / "best.safetensors")
    window = int(round(16.384 * fs))
    write_card(folder / "model.json", folder / "best.safetensors", architecture=model.model_name, width=width,
               num_classes=len(CLASSES), classes=CLASSES, fs=fs, normalization={**PAPER_CINC.to_dict(), "units": "mV"},
               input=input_mode, window_samples=window, hop_samples=window // 2, paper_samples=16384, task="cinc2017")
    return folder


# --------------------------------------------------------------------------- the old batching
@torch.no_grad()
def old_predict_dataset(model, dataset, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``predict_dataset`` as it was: a DataLoader, no_grad, float32, each batch copied back at once."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    probs, index = [], []
    for x, idx in loader:
        probs.append(torch.softmax(model(x.to(device)).float(), dim=1).cpu().numpy())
        index.append(np.asarray(idx))
    return np.concatenate(probs), np.concatenate(index)


def _per_record_probs(clf: Classifier, probs: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    from ecgtl.data.cinc_dataset import aggregate_windows

    if clf.input == "paper":
        return probs[np.argsort(index, kind="stable")]
    return aggregate_windows(probs, index, n)


def run_old_loader(clf: Classifier, prepared: list[np.ndarray], batch_size: int = 128) -> np.ndarray:
    ds = inference_dataset(prepared, clf.input, clf.window, clf.hop, clf.paper_samples)
    probs, index = old_predict_dataset(clf.model, ds, batch_size, clf.device)
    return _per_record_probs(clf, probs, index if clf.input == "paper" else ds.record_index, len(prepared))


def run_per_record(clf: Classifier, prepared: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([run_old_loader(clf, [x]) for x in prepared])


def run_new(clf: Classifier, prepared: list[np.ndarray], precision: str, batch_size: int | None = None) -> np.ndarray:
    runner = BatchRunner(clf.model, clf.input_samples, inference_plan(clf.device, batch_size, precision,
                                                                       input_samples=clf.input_samples))
    for x in prepared:
        runner.add(x, clf.input_starts(x.shape[0]))
    return clf.probabilities(runner)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup, repeats: int) -> tuple[list[float], object]:
    """Seconds of ``repeats`` calls of ``fn()`` after one call of ``warmup()`` (untimed), and the last result."""
    warmup()
    _sync(device)
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times, out


def gflop_per_input(model: torch.nn.Module, length: int, device: torch.device) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - old torch
        return None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, length, device=device))
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------- one input mode
def bench_mode(args, input_mode: str, raw: list[np.ndarray], fs: list[float], tmp: Path) -> dict:
    device = torch.device(args.device)
    card = write_model_card(tmp / input_mode, args.arch, args.width, args.fs, input_mode)
    clf = Classifier(card, device=str(device), conv_layout="1d")
    n = len(raw)
    t = time.perf_counter()
    prepared = clf.preprocess(raw, fs)
    preprocess_s = time.perf_counter() - t
    t = time.perf_counter()
    old_prepared = [prepare_cinc([x], clf.fs, clf.normalization, fs_in=f)[0] for x, f in zip(raw, fs)]  # as before
    preprocess_old_s = time.perf_counter() - t
    assert all(np.array_equal(a, b) for a, b in zip(prepared, old_prepared))
    del old_prepared
    n_inputs = sum(len(clf.input_starts(x.shape[0])) for x in prepared)
    cuda = device.type == "cuda"
    k = min(n, args.per_record_records or n)
    k_inputs = sum(len(clf.input_starts(x.shape[0])) for x in prepared[:k])
    few = prepared[: min(n, 8 if not cuda else 2 * inference_plan(device).batch_size)]
    gflop = gflop_per_input(clf.model, clf.input_samples, device)
    print(f"\n[{input_mode}] {n} records -> {n_inputs} inputs of {clf.input_samples} samples "
          f"({gflop:.2f} GFLOP each); preprocessing {n / preprocess_s:,.0f} records/s in this process "
          f"({preprocess_old_s / preprocess_s:.2f}x prepare_cinc's {n / preprocess_old_s:,.0f}/s, same samples)")

    variants: dict[str, tuple] = {
        "per_record": (lambda: run_per_record(clf, prepared[:k]), lambda: run_per_record(clf, few[:2]), 1, "per record", "float32"),
        "old_loader": (lambda: run_old_loader(clf, prepared), lambda: run_old_loader(clf, few), args.repeats, 128, "float32"),
        "new_float32": (lambda: run_new(clf, prepared, "float32"), lambda: run_new(clf, few, "float32"), args.repeats,
                        clf.plan.batch_size, "float32"),
    }
    if cuda:
        plan = clf.plan
        variants["new"] = (lambda: run_new(clf, prepared, "auto"), lambda: run_new(clf, few, "auto"), args.repeats,
                           plan.batch_size, plan.precision)
        for b in args.batch_sizes:
            variants[f"new_bs{b}"] = (lambda b=b: run_new(clf, prepared, "auto", b), lambda b=b: run_new(clf, few, "auto", b),
                                      args.repeats, b, plan.precision)
    results: dict[str, dict] = {}
    reference = None
    for name, (fn, warm, repeats, batch, precision) in variants.items():
        times, probs = timed(fn, device, warm, repeats)
        best = min(times)
        if name == "old_loader":
            reference = probs
        m = k if name == "per_record" else n  # per_record runs the first k records only
        m_inputs = k_inputs if name == "per_record" else n_inputs
        results[name] = {"records": m, "seconds": times, "best_s": best, "records_per_s": m / best,
                         "inputs_per_s": m_inputs / best, "batch_size": batch, "precision": precision, "_probs": probs}
        print(f"  {name:14s} {m / best:10,.1f} records/s  ({best:.3f} s, {m} records, batch {batch}, {precision})")
    layout = _conv_layout_variant(args, clf, prepared, few, device)
    if layout:
        results["new_2d"] = layout
    for name, r in results.items():
        probs = r.pop("_probs")
        r["max_abs_diff_vs_old_loader"] = float(np.max(np.abs(probs - reference[: len(probs)])))
        r["ratio_to_old_loader"] = r["records_per_s"] / results["old_loader"]["records_per_s"]
        r["ratio_to_per_record"] = r["records_per_s"] / results["per_record"]["records_per_s"]
        if gflop:
            r["tflop_per_s"] = gflop * r["inputs_per_s"] / 1e3

    # end to end: Classifier.predict_proba on the raw signals, the device's defaults (precision, batch, layout)
    e2e = Classifier(card, device=str(device))
    timed(lambda: e2e.predict_proba(raw, fs), device, lambda: e2e.predict_proba(raw[: len(few)], fs[: len(few)]), 1)
    end_to_end = e2e.last_timing.as_dict() | {"conv_layout": e2e.conv_layout}
    print(f"  end to end (Classifier.predict_proba): {e2e.last_timing.summary()}")
    out = {"records": n, "inputs": n_inputs, "input_samples": clf.input_samples, "gflop_per_input": gflop,
           "preprocess_records_per_s": n / preprocess_s, "preprocess_old_records_per_s": n / preprocess_old_s, "variants": results, "classifier_end_to_end": end_to_end}
    if args.data:
        out["evaluate_command"] = _evaluate_command(args, card, device, n, tmp / f"{input_mode}-evaluate")
    return out


def _conv_layout_variant(args, clf: Classifier, prepared, few, device) -> dict | None:
    """``new`` with the (1, k) 2-D convolution layout (CUDA, where the models package has it)."""
    try:
        from ecgtl.models import apply_conv_layout
    except ImportError:
        return None
    if device.type != "cuda" and not args.layouts:
        return None
    apply_conv_layout(clf.model, "2d", device)
    try:
        times, probs = timed(lambda: run_new(clf, prepared, "auto"), device, lambda: run_new(clf, few, "auto"), args.repeats)
    finally:
        apply_conv_layout(clf.model, "1d", device)
    best = min(times)
    n, n_inputs = len(prepared), sum(len(clf.input_starts(x.shape[0])) for x in prepared)
    plan = clf.plan
    print(f"  {'new_2d':14s} {n / best:10,.1f} records/s  ({best:.3f} s, batch {plan.batch_size}, {plan.precision}, 2-D layout)")
    return {"records": n, "seconds": times, "best_s": best, "records_per_s": n / best, "inputs_per_s": n_inputs / best,
            "batch_size": plan.batch_size, "precision": plan.precision, "conv_layout": "2d", "_probs": probs}


def _evaluate_command(args, card: Path, device: torch.device, n: int, tmp: Path) -> dict:
    """``ecgtl evaluate`` (a fresh process, as a user runs it) on the first ``n`` records of ``--data``, the files read
    in this process (``--workers 0``) and in worker processes (``auto``); its report's ``timing`` and the command's wall time."""
    import subprocess

    from ecgtl.data.cinc2017 import Cinc2017

    cinc = Cinc2017(args.data)
    names = cinc.names[:n]
    subset = tmp / "data"
    subset.mkdir(parents=True)
    for name in names:
        for ext in (".hea", ".mat"):
            (subset / (name + ext)).symlink_to((cinc.folder / (name + ext)).resolve())
    (subset / "RECORDS").write_text("".join(f"{name}\n" for name in names))
    (subset / "REFERENCE.csv").write_text("".join(f"{name},{cinc.labels[name]}\n" for name in names))
    out = {}
    for workers in ("0", "auto"):
        cmd = [sys.executable, "-m", "ecgtl", "evaluate", "--checkpoint", str(card), "--data", str(subset), "--out",
               str(tmp / f"out-{workers}"), "--bootstrap", "0", "--no-progress", "--device", str(device), "--workers", workers]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-3000:]}")
        timing = json.loads((tmp / f"out-{workers}" / "report.json").read_text())["timing"]
        out[f"workers_{workers}"] = timing | {"command_wall_s": wall}
        print(f"  ecgtl evaluate --workers {workers} ({wall:.1f} s with start-up): "
              + next(line for line in proc.stdout.splitlines() if "records/s (read" in line))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--records", type=int, default=None, help="records (default 5,000 on CUDA, 48 on the CPU)")
    ap.add_argument("--data", help="a CinC-layout folder: its first records instead of synthetic ones (needs wfdb)")
    ap.add_argument("--input", choices=("paper", "crop", "both"), default="both")
    ap.add_argument("--arch", default="resnet18_postact")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--fs", type=float, default=250.0)
    ap.add_argument("--batch-sizes", default=None, help="more batch sizes for the new path on CUDA (default 256,1024)")
    ap.add_argument("--per-record-records", type=int, default=None,
                    help="records of the slow per_record variant (default 1,000 on CUDA, all on the CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each variant, best kept (default 3 on CUDA, 1 on CPU)")
    ap.add_argument("--layouts", action="store_true", help="also time the 2-D convolution layout on the CPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default="reports/bench_inference.json")
    args = ap.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.records = args.records or (5000 if cuda else 48)
    args.repeats = args.repeats or (3 if cuda else 1)
    args.per_record_records = args.per_record_records or (1000 if cuda else None)
    args.batch_sizes = [int(b) for b in (args.batch_sizes if args.batch_sizes is not None else ("256,1024" if cuda else "")).split(",") if b]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        raw, fs = real_signals(args.data, args.records)
        source = f"first {len(raw)} records of {args.data}"
    else:
        raw, fs = synthetic_signals(args.records), [CINC_FS] * args.records
        source = f"{args.records} synthetic CinC-like records (300 Hz, 9-61 s)"
    seconds = np.array([len(x) / f for x, f in zip(raw, fs)])
    print(f"{source}: mean {seconds.mean():.1f} s, {args.arch} width {args.width} at {args.fs:g} Hz on {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else f" ({torch.get_num_threads()} threads)"))
    modes = ("paper", "crop") if args.input == "both" else (args.input,)
    with tempfile.TemporaryDirectory() as tmp:
        for m in modes:
            (Path(tmp) / m).mkdir()
        results = {m: bench_mode(args, m, raw, fs, Path(tmp)) for m in modes}
    report = {
        "benchmark": "bench_inference",
        "command": " ".join(["python", "benchmarks/bench_inference.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": platform.platform(),
        "cpu_cores": available_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "model": {"arch": args.arch, "width": args.width, "fs": args.fs},
        "data": source,
        "record_seconds_mean": float(seconds.mean()),
        "repeats": args.repeats,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    for m, r in results.items():
        v = r["variants"]
        best = max((k for k in v if k.startswith("new")), key=lambda k: v[k]["records_per_s"])
        print(f"{m}: {best} {v[best]['records_per_s']:,.0f} records/s = {v[best]['ratio_to_old_loader']:.2f}x old_loader, "
              f"{v[best]['ratio_to_per_record']:.1f}x per_record; end to end {r['classifier_end_to_end']['records_per_s']:,.0f} records/s")
    return report


if __name__ == "__main__":
    main()
