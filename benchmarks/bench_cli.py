"""Command-line start-up: wall time of ``ecgtl --help``, ``download --help``, ``prepare --help`` and
``predict`` on one real CinC 2017 record, next to a bare interpreter and ``import torch``.

    python benchmarks/bench_cli.py [--shared-data ../shared/data] [--repeats 7] [--out benchmarks/results/bench_cli.json]

Each command runs in a fresh process (what a user waits for), the commands interleaved,
``--repeats`` times; the JSON holds the medians and their ratios to ``import torch`` measured
in the same run. ``predict`` uses a model card of the CPU preset's architecture (resnet18_preact,
width 0.25, 125 Hz, 65.5 s windows) with random weights: start-up and one record's inference
cost the same with trained weights. Targets (issue 11): ``--help`` < 0.5 s, ``predict`` < 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from ecgtl.models import create_model
from ecgtl.models.card import save_weights, write_card

HERE = Path(__file__).resolve().parent


def _card(folder: Path) -> Path:
    model = create_model("resnet18_preact", num_classes=4, width=0.25)
    save_weights(model.state_dict(), folder / "best.safetensors")
    write_card(folder / "model.json", folder / "best.safetensors", architecture=model.model_name, width=0.25, num_classes=4,
               classes=["N", "A", "O", "~"], fs=125.0, normalization={"mean": 0.0, "std": 0.15, "units": "mV"},
               input="crop", window_samples=8192, hop_samples=4096, task="cinc2017")
    return folder / "model.json"


def _record(shared: Path, folder: Path) -> Path:
    with zipfile.ZipFile(shared / "physionet-files" / "challenge-2017" / "1.0.0" / "training2017.zip") as zf:
        for name in ("training2017/A00001.mat", "training2017/A00001.hea"):
            zf.extract(name, folder)
    return folder / "training2017" / "A00001.mat"


def _seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_cli.json"))
    args = ap.parse_args(argv)
    ecgtl = [sys.executable, "-m", "ecgtl"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        card, record = _card(tmp), _record(Path(args.shared_data), tmp)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import torch": [sys.executable, "-c", "import torch"],
            "ecgtl --help": [*ecgtl, "--help"],
            "ecgtl download --help": [*ecgtl, "download", "--help"],
            "ecgtl prepare --help": [*ecgtl, "prepare", "--help"],
            "ecgtl predict (1 record)": [*ecgtl, "predict", str(record), "--checkpoint", str(card)],
        }
        for cmd in commands.values():  # warm the file cache once
            _seconds(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                times[name].append(_seconds(cmd))
    torch_s = statistics.median(times["import torch"])
    results = {name: {"median_s": statistics.median(t), "min_s": min(t), "ratio_to_import_torch": statistics.median(t) / torch_s}
               for name, t in times.items()}
    for name, r in results.items():
        print(f"{name:>26}: {r['median_s']:.3f} s median (min {r['min_s']:.3f}), {r['ratio_to_import_torch']:.2f}x import torch")
    doc = {"benchmark": "bench_cli", "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "repeats": args.repeats, "results": results,
           "targets": {"ecgtl --help": 0.5, "ecgtl predict (1 record)": 1.5}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
