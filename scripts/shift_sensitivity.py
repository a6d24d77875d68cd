"""How much a fine-tuned model's validation macro-F1 depends on the phase at which it reads a record (issue 8).

    python scripts/shift_sensitivity.py [--runs runs/recipe-ablation] [--variant full] [--seeds 0,1,2,3,4]
        [--shifts 0,4,8,12,16,20,24,28] [--data DIR] [--report reports/recipe-ablation]

Validation records of the selection split only (``scripts/recipe_ablation.py``). Every member
reads each record once per shift ``k`` (its window ``k`` samples later, at the model's rate:
:class:`ecgtl.evaluate.inference.Classifier` with ``shifts=(k,)``); the table gives each
member's macro-F1 at each shift alone, with all shifts averaged (test-time shifts), and the same
for the members' mean. The members' best epochs were chosen at shift 0 on these very records,
which favours shift 0. Writes ``shift-sensitivity-VARIANT.md`` in ``--report``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from seed_ensemble import write_markdown  # scripts/: shared with the seed ensemble

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.splits import load_splits
from ecgtl.evaluate.inference import Classifier
from ecgtl.evaluate.metrics import macro_f1
from ecgtl.experiments.report import fmt

HERE = Path(__file__).resolve().parents[1]


def member_probabilities(run: Path, signals: list[np.ndarray], fs: list[float], shifts: list[int]) -> np.ndarray:
    """``(len(shifts), n_records, n_classes)``: the member's probabilities with its windows read at each shift alone."""
    out = []
    for k in shifts:
        clf = Classifier(run, device="cpu", shifts=(k,))
        out.append(clf.predict_proba(signals, fs))
    return np.stack(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/recipe-ablation")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--shifts", default="0,4,8,12,16,20,24,28",
                    help="samples at the members' rate: one period of a total stride of 32 (0,8,...,56 for stride 64)")
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--report", default=str(HERE / "reports" / "recipe-ablation"))
    args = ap.parse_args()
    runs = [Path(args.runs) / f"{args.variant}-seed{s}" for s in args.seeds.split(",")]
    shifts = [int(k) for k in args.shifts.split(",")]
    val = load_splits(runs[0] / "splits.json")["val"]
    if not val:
        raise SystemExit(f"{runs[0] / 'splits.json'}: no validation records")
    for run in runs[1:]:
        if sorted(load_splits(run / "splits.json")["val"]) != sorted(val):
            raise SystemExit(f"{run / 'splits.json'}: other validation records than {runs[0] / 'splits.json'}")
    cinc = Cinc2017(args.data)
    records = [cinc.read(n) for n in val]
    y = np.array([CINC_CLASSES.index(r.label) for r in records])
    signals, fs = [r.signal for r in records], [r.fs for r in records]
    per = []
    for run in runs:
        per.append(member_probabilities(run, signals, fs, shifts))
        print(f"{run.name}: done", flush=True)

    def f1(p: np.ndarray) -> float:
        return macro_f1(y, p.argmax(1), len(CINC_CLASSES))

    head = " | ".join(f"shift {k}" for k in shifts)
    lines = [f"Validation macro-F1 of `{args.variant}` members (selection split, n = {len(y)}) with each window read "
             f"k samples later (k at the model's rate; at 125 Hz 4 samples are 32 ms), and with all shifts averaged "
             f"(`ecgtl ensemble --test-time-shifts {args.shifts}`). The best epochs were chosen at shift 0 on these "
             f"records. Command: `python scripts/shift_sensitivity.py --variant {args.variant} --seeds {args.seeds} "
             f"--shifts {args.shifts}`.", "",
             f"| model | {head} | range over shifts | all shifts averaged |", "|---|" + "---|" * (len(shifts) + 2)]
    rows = [(run.name, p) for run, p in zip(runs, per)] + [(f"mean of the {len(runs)} members", np.mean(per, axis=0))]
    for name, p in rows:
        scores = [f1(p[i]) for i in range(len(shifts))]
        lines.append(f"| {name} | " + " | ".join(fmt(s) for s in scores)
                     + f" | {fmt(min(scores))}-{fmt(max(scores))} | {fmt(f1(p.mean(axis=0)))} |")
    write_markdown(Path(args.report) / f"shift-sensitivity-{args.variant}.md", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
