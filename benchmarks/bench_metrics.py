"""Evaluation-metrics benchmark: the bootstrap confidence intervals of a report, next to scikit-learn.

    python benchmarks/bench_metrics.py [--records 1500] [--boot 1000] [--sklearn-boot 100]
        [--out benchmarks/results/bench_metrics.json]

``bootstrap_ci(macro_f1, ...)`` computes all replicates at once from confusion matrices; the
reference is ``sklearn.metrics.f1_score(average="macro")`` called once per replicate on
resamples of the same size, measured in the same run (this machine is shared and noisy:
compare ratios, not absolute numbers across runs). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from ecgtl.evaluate.metrics import bootstrap_ci, classification_report, macro_f1

K = 4  # the CinC 2017 classes


def cinc_like_case(n: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Labels with the CinC class mix and informative but imperfect probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=[0.59, 0.09, 0.28, 0.04])
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return y, probs / probs.sum(axis=1, keepdims=True)


def _best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls after one warm-up call (the least disturbed by other processes)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_bootstrap(records: int = 1500, boot: int = 1000, sklearn_boot: int = 100, repeats: int = 3) -> dict:
    y, probs = cinc_like_case(records)
    pred = probs.argmax(axis=1)
    ours = _best_seconds(lambda: bootstrap_ci(macro_f1, y, pred, n_boot=boot, seed=0), repeats)
    per_replicate = _best_seconds(lambda: bootstrap_ci(lambda t, p: macro_f1(t, p), y, pred, n_boot=sklearn_boot, seed=0), 1)
    report = _best_seconds(lambda: classification_report(y, probs, n_boot=boot, seed=0), repeats)
    rows = np.random.default_rng(0).integers(0, records, size=(sklearn_boot, records))
    labels = list(range(K))
    sk = _best_seconds(lambda: [f1_score(y[r], pred[r], labels=labels, average="macro", zero_division=0) for r in rows], 1)
    sk_full = sk / sklearn_boot * boot  # per-replicate cost, scaled to the same number of replicates
    res = {"records": records, "n_boot": boot,
           "bootstrap_ci_macro_f1_seconds": ours,
           "per_replicate_path_seconds": per_replicate / sklearn_boot * boot,
           "classification_report_seconds": report,
           "sklearn_f1_score_per_replicate_seconds": sk_full,
           "sklearn_replicates_timed": sklearn_boot}
    res["speedup_vs_sklearn"] = sk_full / ours
    res["speedup_vs_per_replicate_path"] = res["per_replicate_path_seconds"] / ours
    res["report_speedup_vs_sklearn"] = sk_full / report
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1500, help="records of the evaluated split (CinC test split: ~1,450)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--sklearn-boot", type=int, default=100, help="replicates timed for the per-replicate references")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/bench_metrics.json")
    args = ap.parse_args()
    res = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
           "bootstrap": bench_bootstrap(args.records, args.boot, args.sklearn_boot, args.repeats)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    b = res["bootstrap"]
    print(f"bootstrap CI of macro-F1, {b['n_boot']} replicates of {b['records']} records: "
          f"{b['bootstrap_ci_macro_f1_seconds'] * 1e3:.1f} ms ({b['speedup_vs_sklearn']:.0f}x scikit-learn f1_score per replicate, "
          f"{b['speedup_vs_per_replicate_path']:.0f}x the per-replicate path)")
    print(f"classification_report with {b['n_boot']} replicates: {b['classification_report_seconds'] * 1e3:.1f} ms "
          f"({b['report_speedup_vs_sklearn']:.0f}x scikit-learn f1_score per replicate for one CI)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
