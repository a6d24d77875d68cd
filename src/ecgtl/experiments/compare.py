"""Compare fine-tuning runs (random init vs pre-trained, label fractions, seeds): a table and curves.

Reads each run folder's ``report_test.json``, ``report_val.json``, ``results.json`` and
``metrics.csv`` and writes ``comparison.json``, ``comparison.md`` and ``curves.png`` (validation
macro-F1 per epoch, the convergence the study's claim is also about).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ecgtl.constants import CINC_CLASSES


def _curve(run: Path) -> tuple[list[int], list[float], list[float]]:
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return ([int(r["round"]) for r in rows], [float(r["val_macro_f1"]) for r in rows], [float(r["train_loss"]) for r in rows])


def summarize_run(run: str | Path) -> dict:
    run = Path(run)
    test = json.loads((run / "report_test.json").read_text())
    val = json.loads((run / "report_val.json").read_text())
    results = json.loads((run / "results.json").read_text())
    card = json.loads((run / "model.json").read_text())
    epochs, f1, _ = _curve(run)
    best = max(f1) if f1 else float("nan")
    # convergence: first epoch whose validation macro-F1 reaches 95% of the run's best
    reach = next((e for e, v in zip(epochs, f1) if v >= 0.95 * best), None)
    with open(run / "metrics.csv") as fh:
        seconds = sum(float(r["train_seconds"]) for r in csv.DictReader(fh))
    return {
        "run": str(run), "init": card.get("init"), "train_records": card.get("train_records"), "seed": card.get("seed"),
        "test_macro_f1": test["macro_f1"], "test_macro_f1_ci": test.get("macro_f1_ci"),
        "test_challenge_f1": test["challenge_f1"], "test_f1": test["f1"], "test_n": test["n"],
        "val_macro_f1": val["macro_f1"], "best_epoch": results["best_round"], "epochs_run": results["rounds_run"],
        "epochs_to_95pct_of_best_val": reach, "train_minutes": round(seconds / 60, 2),
    }


def compare(runs: dict[str, str | Path], out: str | Path) -> dict:
    """``runs``: label -> run folder. Writes the comparison files into ``out`` and returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {name: summarize_run(path) for name, path in runs.items()}
    (out / "comparison.json").write_text(json.dumps(summary, indent=1))
    header = (["run", "train records", "test macro-F1 (95% CI)", "challenge F1"] + [f"F1 {c}" for c in CINC_CLASSES]
              + ["best epoch", "epochs to 95% of best val F1", "train min"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summary.items():
        ci = s["test_macro_f1_ci"]
        ci_text = f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        lines.append(f"| {name} | {s['train_records']} | {s['test_macro_f1']:.3f}{ci_text} | {s['test_challenge_f1']:.3f} | "
                     + " | ".join(f"{s['test_f1'][c]:.3f}" for c in CINC_CLASSES)
                     + f" | {s['best_epoch']} | {s['epochs_to_95pct_of_best_val']} | {s['train_minutes']} |")
    groups: dict[str, list[dict]] = {}
    for name, s in summary.items():  # runs named <setting>-seed<k>: mean +- sd over seeds
        groups.setdefault(name.rsplit("-seed", 1)[0], []).append(s)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", "| setting | seeds | test macro-F1 mean +- sd | challenge F1 mean +- sd | best epoch mean |", "|---|---|---|---|---|"]
        for setting, runs_ in groups.items():
            m, sd = mean_std([r["test_macro_f1"] for r in runs_])
            cm, csd = mean_std([r["test_challenge_f1"] for r in runs_])
            lines.append(f"| {setting} | {len(runs_)} | {m:.3f} +- {sd:.3f} | {cm:.3f} +- {csd:.3f} | "
                         f"{np.mean([r['best_epoch'] for r in runs_]):.1f} |")
    tests = {s["test_n"] for s in summary.values()}
    if len(tests) > 1:
        lines.append(f"\nwarning: the runs were scored on test sets of different sizes {sorted(tests)}")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    plot_comparison(runs, out / "curves.png")
    return summary


def plot_comparison(runs: dict[str, str | Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        epochs, f1, loss = _curve(Path(run))
        a.plot(epochs, f1, label=name)
        b.plot(epochs, loss, label=name)
    a.set_xlabel("epoch"), a.set_ylabel("validation macro-F1"), a.set_title("validation macro-F1 (4 classes)")
    b.set_xlabel("epoch"), b.set_ylabel("training loss"), b.set_title("training loss"), b.set_yscale("log")
    a.legend(fontsize=8), b.legend(fontsize=8)
    a.grid(alpha=0.3), b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
