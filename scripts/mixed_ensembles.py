"""Does a member of another recipe add to the cpu preset's seed ensemble? Validation only (issue 8).

    python scripts/mixed_ensembles.py [--runs runs/recipe-ablation] [--base full] [--report reports/recipe-ablation]

Reads the ``predictions_val.csv`` of every finished selection run of ``scripts/recipe_ablation.py``
(the best epoch's validation probabilities; nothing is re-run) and gives the validation macro-F1 of
the ``--base`` variant's members averaged, alone and with the finished members of each other
variant added (equal weights). Every member's best epoch was chosen on these same records, so each
figure is optimistic, the more so for variants with noisy validation curves. Writes
``mixed-ensembles.md`` in ``--report``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from seed_ensemble import read_val_predictions, write_markdown  # scripts/: shared with the seed ensemble

from ecgtl.constants import CINC_CLASSES
from ecgtl.evaluate.calibration import biased_scores
from ecgtl.evaluate.metrics import bootstrap_difference_ci, macro_f1
from ecgtl.experiments.report import fmt

HERE = Path(__file__).resolve().parents[1]
N_BOOT = 2000  # bootstrap replicates of each paired difference


def geometric_labels(probs: list[np.ndarray]) -> np.ndarray:
    """Decisions of the members' geometric mean: the argmax of their averaged log-probabilities."""
    return np.mean([biased_scores(p, None) for p in probs], axis=0).argmax(1)


def combination_table(members: dict[str, list[Path]], read: dict, y: np.ndarray) -> list[str]:
    """Each variant's own members (2 or more) combined two ways: mean probabilities (``ecgtl ensemble``) vs geometric mean."""
    lines = ["How the members are combined: each variant's own members (2 or more seeds) averaged as probabilities "
             "(what `ecgtl ensemble` does) or as log-probabilities (a geometric mean); the difference with its 95% paired "
             "bootstrap interval. One variant's gain is noise-level; the column over all variants says whether the rule matters.",
             "", "| variant | members | mean of probabilities | geometric mean | difference (95% CI) |", "|---|---|---|---|---|"]
    diffs = []
    for variant, runs in sorted(members.items()):
        if len(runs) < 2:
            continue
        probs = [read[r][2] for r in runs]
        arith, geo = np.mean(probs, axis=0).argmax(1), geometric_labels(probs)
        a, g = macro_f1(y, arith, len(CINC_CLASSES)), macro_f1(y, geo, len(CINC_CLASSES))
        lo, hi = bootstrap_difference_ci(macro_f1, y, geo, arith, n_boot=N_BOOT)
        diffs.append(g - a)
        lines.append(f"| {variant} | {len(runs)} | {fmt(a)} | {fmt(g)} | {fmt(g - a, signed=True)} "
                     f"({fmt(lo, signed=True)} to {fmt(hi, signed=True)}) |")
    if diffs:
        lines += ["", f"Over the {len(diffs)} variants: geometric minus arithmetic {fmt(float(np.mean(diffs)), signed=True)} on "
                  f"average (median {fmt(float(np.median(diffs)), signed=True)}), higher for {sum(d > 0 for d in diffs)}, "
                  f"lower for {sum(d < 0 for d in diffs)}."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/recipe-ablation")
    ap.add_argument("--base", default="full")
    ap.add_argument("--report", default=str(HERE / "reports" / "recipe-ablation"))
    args = ap.parse_args()
    members: dict[str, list[Path]] = defaultdict(list)
    for run in sorted(Path(args.runs).glob("*-seed*")):
        m = re.fullmatch(r"(.+)-seed(\d+)", run.name)
        if m and (run / "predictions_val.csv").is_file() and (run / "results.json").is_file():
            members[m.group(1)].append(run)
    if args.base not in members:
        raise SystemExit(f"no finished {args.base} members in {args.runs}")
    read = {run: read_val_predictions(run) for runs in members.values() for run in runs}
    names, y, _ = read[members[args.base][0]]
    for run, (n, y_run, _) in read.items():
        if n != names or not np.array_equal(y_run, y):
            raise SystemExit(f"{run}: validated on other records than {members[args.base][0]}: not one selection split")

    def labels(runs: list[Path]) -> np.ndarray:
        return np.mean([read[r][2] for r in runs], axis=0).argmax(1)

    def f1(runs: list[Path]) -> float:
        return macro_f1(y, labels(runs), len(CINC_CLASSES))

    base = members[args.base]
    lines = [f"Validation macro-F1 (selection split, n = {len(y)}) of the `{args.base}` members averaged, alone and with the "
             "finished members of another variant added, equal weights; each member's best epoch was chosen on these records "
             "(optimistic). *Difference*: to the base alone, with its 95% paired bootstrap interval (the same records "
             f"resampled {N_BOOT} times for both; `ecgtl.evaluate.metrics.bootstrap_difference_ci`): an interval holding 0 "
             "means these records cannot tell the two apart. Command: `python scripts/mixed_ensembles.py`.", "",
             "| ensemble | members | val macro-F1 | difference (95% CI) |", "|---|---|---|---|",
             f"| {args.base} alone | {len(base)} | {fmt(f1(base))} | |"]
    for variant, runs in sorted(members.items()):
        if variant != args.base:
            lo, hi = bootstrap_difference_ci(macro_f1, y, labels(base + runs), labels(base), n_boot=N_BOOT)
            diff = f1(base + runs) - f1(base)
            lines.append(f"| {args.base} + {variant} | {len(base)} + {len(runs)} | {fmt(f1(base + runs))} | "
                         f"{fmt(diff, signed=True)} ({fmt(lo, signed=True)} to {fmt(hi, signed=True)}) |")
    lines += ["", *combination_table(members, read, y)]
    write_markdown(Path(args.report) / "mixed-ensembles.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
