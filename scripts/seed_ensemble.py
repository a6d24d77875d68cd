"""A seed ensemble of one recipe (issue 8): chosen on the selection split, then the test split scored once.

    python scripts/recipe_ablation.py --only full --seeds 0,1,2,3,4     # the members: the cpu preset, 5 seeds
    python scripts/seed_ensemble.py                                      # validation table + ensemble.json
    python scripts/seed_ensemble.py --score-test                         # then, once: the standard test split

Protocol (fixed before any test record was scored): the members are one variant of
``scripts/recipe_ablation.py`` (default ``full``: the ``cpu`` fine-tuning preset as it is, 30
epochs) trained with seeds 0-4 on its selection split (4,638 training / 1,160 validation
records, none of the 1,450 test records of the standard split). On validation only, the table
gives the macro-F1 of the first k members averaged (k = 1..5), without and with class biases
fitted on the average (the honest figure: 2-fold cross-fitted, 20 repeats;
:mod:`ecgtl.evaluate.ensemble`). The model is the 5-member ensemble made by ``ecgtl ensemble
--calibrate`` (biases kept only if cross-fitting says they help). ``--score-test`` then scores
that model -- and, for reference only, each member -- on the standard split's test records
(``make_splits`` seed 0, as ``ecgtl finetune`` makes it). ``benchmarks/gpu_finetune.sh`` runs the
same on a GPU for the full-width variants.

``--variant A+B`` makes a mixed ensemble: the ``--seeds`` of A, then those of B, equal weights
(its table's first rows are A alone). ``A+B`` and ``B+A`` are one model: scored under either name,
it is not scored again under the other.

Each variant writes its own files in ``--report`` (``full``, the baseline, keeps the plain names
``ensemble.md``, ``ensemble-validation.json``, ``test-score.json``; variant ``X`` writes
``ensemble-X.md``, ``ensemble-X-validation.json``, ``test-score-X.json``). A model's test split is
scored once: ``--score-test`` is refused when its score file exists, and a scored model's
ensemble and report files are never rewritten. Once the baseline has been scored in a report
folder, another variant earns a look at the test split only if its validation macro-F1 (the
cross-fitted one when biases are kept) is at least ``MIN_VAL_GAIN`` above the baseline's on the
same validation records (by the SHA-256 of their names); otherwise the look is refused, and the
variant stays a validation result. A report folder with no scored baseline (a new preset's, e.g.
the GPU screening's) takes one first look, with ``--first-look``. This rule was committed before the members of any further variant existed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import find_label_file, read_labels
from ecgtl.data.splits import load_splits, make_splits, save_splits
from ecgtl.evaluate.calibration import fit_class_bias
from ecgtl.evaluate.ensemble import CROSS_FIT_REPEATS, cross_fitted_bias_f1, run_ensemble
from ecgtl.evaluate.metrics import macro_f1
from ecgtl.experiments.report import fmt
from ecgtl.fileio import atomic_write

HERE = Path(__file__).resolve().parents[1]


def cut4(x: float) -> str:
    """A score cut (never rounded up) to 4 decimals."""
    return fmt(x, digits=4)


BASELINE = "full"  # the variant whose ensemble was scored first (reports/recipe-ablation/test-score.json)
MIN_VAL_GAIN = 0.01  # validation macro-F1 a further variant must gain over the scored baseline to earn a test look


def report_file(out: Path, stem: str, variant: str, suffix: str) -> Path:
    """``out / stem+suffix`` for the baseline variant, ``out / stem-VARIANT+suffix`` for any other."""
    return out / (f"{stem}{suffix}" if variant == BASELINE else f"{stem}-{variant}{suffix}")


def model_key(name: str) -> tuple[frozenset, bool]:
    """What a model name stands for: its set of variants (``A+B`` = ``B+A``, the same equal-weight average) and its shifts."""
    tta = name.endswith("-tta")
    return frozenset((name[: -len("-tta")] if tta else name).split("+")), tta


def scored_file(out: Path, name: str) -> Path | None:
    """The score file in ``out`` of model ``name`` under any of its names (``A+B`` or ``B+A``), or None if not scored."""
    for f in [out / "test-score.json", *sorted(out.glob("test-score-*.json"))]:
        other = BASELINE if f.name == "test-score.json" else f.name[len("test-score-"):-len(".json")]
        if f.is_file() and model_key(other) == model_key(name):
            return f
    return None


def validation_score(doc: dict) -> float:
    """The validation macro-F1 an ensemble file stands for: cross-fitted when it keeps class biases, else plain."""
    val = doc["validation"]
    cal = val.get("calibration") or {}
    return cal["macro_f1_cross_fitted"] if cal.get("kept") else val["macro_f1"]


def names_digest(names) -> str:
    """SHA-256 of the sorted record names: which records a validation score is on, in 64 characters."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def check_test_look(out: Path, variant: str, doc: dict, first_look: bool = False, baseline: str = BASELINE) -> Path:
    """The score file for ``variant``'s test look, or SystemExit when the look is not allowed (see the module doc).

    ``first_look``: a report folder of a new preset (e.g. the GPU screening), where nothing was scored
    yet; otherwise the folder must hold the scored ``baseline`` (``full`` in reports/recipe-ablation;
    the model of a folder's first look elsewhere, e.g. ``w1-stem4`` in reports/recipe-ablation-gpu), and
    ``variant`` must beat it on the same validation records by ``MIN_VAL_GAIN``.
    """
    target = report_file(out, "test-score", variant, ".json")
    done = scored_file(out, variant)
    if done is not None:
        raise SystemExit(f"{done}: this model's test split was scored already; it is scored once")
    scored = report_file(out, "test-score", baseline, ".json")
    if first_look:
        if scored.is_file() or any(out.glob("test-score-*.json")):
            raise SystemExit(f"{out}: a model was scored on the test split here already, so this is not a first look")
        return target
    if not scored.is_file():
        raise SystemExit(f"{scored}: no scored baseline in {out} to compare {variant} with; the first look at the test "
                         "split in a new report folder needs --first-look (or name its scored model with --baseline)")
    base_file = report_file(out, "ensemble", baseline, "-validation.json")
    if not base_file.is_file():
        raise SystemExit(f"{base_file}: missing, so {variant} cannot be compared with the scored baseline")
    base = json.loads(base_file.read_text())
    mine_names, base_names = doc["validation"].get("record_names_sha256"), base["validation"].get("record_names_sha256")
    if not mine_names or mine_names != base_names:
        raise SystemExit(f"{variant} was validated on other records than the scored baseline ({base_file}: record_names_sha256 "
                         f"{str(base_names)[:12]}..., {variant}: {str(mine_names)[:12]}...): the scores are not comparable")
    mine, ref = validation_score(doc), validation_score(base)
    if mine < ref + MIN_VAL_GAIN:
        raise SystemExit(f"{variant}: validation macro-F1 {cut4(mine)} is not at least {MIN_VAL_GAIN} above the scored "
                         f"baseline's {cut4(ref)} ({base_file}): no further look at the test split")
    return target


def member_runs(runs_dir: Path, variant: str, seeds: list[str]) -> list[Path]:
    """The members' run folders: ``VARIANT-seedS`` for each seed; a mixed ensemble ``A+B`` takes each seed of A, then of B."""
    parts = variant.split("+")
    if not all(parts) or len(set(parts)) != len(parts):
        raise SystemExit(f"--variant {variant!r}: give a variant name, or distinct names joined by + for a mixed ensemble")
    return [runs_dir / f"{part}-seed{s}" for part in parts for s in seeds]


def write_markdown(path: Path, lines: list[str]) -> None:
    """Write a report's Markdown lines to ``path`` (its folder made, the file replaced atomically) and print them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def read_val_predictions(run: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A member's validation predictions (``predictions_val.csv`` of ``ecgtl finetune``): names, labels, probabilities."""
    with open(run / "predictions_val.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["record"])
    y = np.array([CINC_CLASSES.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in CINC_CLASSES] for r in rows])
    return [r["record"] for r in rows], y, probs


def validation_table(runs: list[Path], out: Path, variant: str = "full") -> list[dict]:
    members = [read_val_predictions(r) for r in runs]
    names, y, _ = members[0]
    if any(m[0] != names for m in members):
        raise SystemExit("the members were validated on different records: not one selection split")
    rows = []
    mixed = len({r.name.rsplit("-seed", 1)[0] for r in runs}) > 1  # a mixed ensemble: label members by run, not seed
    for k in range(1, len(runs) + 1):
        probs = np.mean([m[2] for m in members[:k]], axis=0)
        plain = macro_f1(y, probs.argmax(1), len(CINC_CLASSES))
        bias, fitted = fit_class_bias(probs, y)
        cross, cross_sd = cross_fitted_bias_f1(probs, y)
        rows.append({"members": k, "seeds": ",".join(r.name if mixed else r.name.rsplit("seed", 1)[-1] for r in runs[:k]),
                     "val_macro_f1": plain, "val_macro_f1_biases_cross_fitted": cross,
                     "cross_fitted_std": cross_sd, "val_macro_f1_biases_fitted_here": fitted,
                     "bias_N_A_O_noisy": " ".join(f"{b:+.1f}" for b in bias),
                     "member_val_macro_f1": macro_f1(y, members[k - 1][2].argmax(1), len(CINC_CLASSES))})
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(report_file(out, "ensemble", variant, ".csv"), text.getvalue())
    what = "the cpu preset as it is (30 epochs)" if variant == "full" else f"variant `{variant}`"
    lines = [f"Seed ensembles of {what} (members from `scripts/recipe_ablation.py`), validation records of the selection split (n = {len(y)}). "
             f"*Cross-fitted*: biases fitted on one stratified half, scored on the other ({CROSS_FIT_REPEATS} repeats, "
             "mean +- std); *fitted here*: fitted and scored on the same records (optimistic, shown for contrast).", "",
             "| members (seeds) | member k alone | ensemble val macro-F1 | + biases, cross-fitted | + biases, fitted here |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['members']} ({r['seeds']}) | {cut4(r['member_val_macro_f1'])} | {cut4(r['val_macro_f1'])} | "
                     f"{cut4(r['val_macro_f1_biases_cross_fitted'])} +- {cut4(r['cross_fitted_std'])} | "
                     f"{cut4(r['val_macro_f1_biases_fitted_here'])} |")
    write_markdown(report_file(out, "ensemble", variant, ".md"), lines)
    return rows


def standard_splits(data: Path, runs: Path) -> Path:
    """The standard split (``ecgtl finetune``'s default: stratified 80/20 + 5% validation, seed 0), saved once."""
    path = runs / "standard-splits.json"
    if not path.is_file():
        labels = read_labels(find_label_file(data))
        names = sorted(labels)
        save_splits(path, make_splits(names, [labels[n] for n in names], test_fraction=0.2, val_fraction=0.05, seed=0),
                    seed=0, test_fraction=0.2, val_fraction=0.05, note="the standard split, as ecgtl finetune makes it")
    return path


def score_test(ensemble: Path, runs: list[Path], data: Path, splits: Path, out: Path, name: str = "test-score.json",
               note: str = "scored once, after the model was fixed on validation; members alone are for reference, not choice",
               extra: dict | None = None) -> dict:
    """Score ``ensemble`` (and, for reference, each member) on the test records of ``splits``; write ``out / name``."""
    from ecgtl.evaluate.commands import run_evaluate

    selection = load_splits(runs[0] / "splits.json")
    test = set(load_splits(splits)["test"])
    if test & (set(selection["train"]) | set(selection["val"])):
        raise SystemExit(f"{splits}: its test records overlap the selection split: not the standard split")
    report = run_evaluate(str(ensemble), str(data), out=str(ensemble / "evaluate-test"), n_boot=1000, progress=False,
                          records=f"{splits}:test")
    members = []
    for run in runs:  # for reference: each member alone on the same records (its own run folder's evaluation)
        rep = run_evaluate(str(run), str(data), out=str(run / "evaluate-test"), n_boot=1000, progress=False,
                           records=f"{splits}:test")
        members.append({"run": run.name, "macro_f1": rep["macro_f1"], "macro_f1_ci": rep["macro_f1_ci"],
                        "challenge_f1": rep["challenge_f1"]})
    summary = {"model": f"{ensemble}/ensemble.json", "test_records": report["n"], "split": str(splits),
               "macro_f1": report["macro_f1"], "macro_f1_ci": report["macro_f1_ci"], "challenge_f1": report["challenge_f1"],
               "challenge_f1_ci": report["challenge_f1_ci"], "f1": report["f1"], "auroc": report["auroc"],
               "ensemble_class_bias": report.get("ensemble_class_bias"), "members_alone": members, **(extra or {}),
               "note": note}
    atomic_write(out / name, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/recipe-ablation")
    ap.add_argument("--variant", default="full",
                    help="the members' variant name in the ablation's run folder; A+B: a mixed ensemble, --seeds of each")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--report", default=str(HERE / "reports" / "recipe-ablation"))
    ap.add_argument("--score-test", action="store_true", help="score the ensemble on the standard test split (do it once)")
    ap.add_argument("--first-look", action="store_true",
                    help="with --score-test: the first test look in a report folder of a new preset (no scored baseline)")
    ap.add_argument("--baseline", default=BASELINE,
                    help="with --score-test: the scored model of --report that a further variant must beat on validation "
                         "(default full; w1-stem4 in reports/recipe-ablation-gpu)")
    ap.add_argument("--test-time-shifts", metavar="K,K,...",
                    help="test-time shifts kept in the ensemble file (ecgtl ensemble --test-time-shifts); the ensemble "
                         "folder and report files then carry the suffix -tta")
    args = ap.parse_args()
    shifts = [int(k) for k in args.test_time_shifts.split(",")] if args.test_time_shifts else None
    runs_dir, out = Path(args.runs), Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    runs = member_runs(runs_dir, args.variant, args.seeds.split(","))
    missing = [r for r in runs if not (r / "results.json").is_file()]
    if missing:
        raise SystemExit(f"members not trained yet: {', '.join(map(str, missing))} (python scripts/recipe_ablation.py "
                         f"--only {args.variant.replace('+', ',')} --seeds {args.seeds})")
    name = args.variant + ("-tta" if shifts else "")  # the model: its members, and its test-time shifts if any
    scored = scored_file(out, name)
    if scored is not None:  # its ensemble and validation files are the record of what was scored: never rewritten
        raise SystemExit(f"{scored}: model {name} was scored on the test split already; its ensemble and validation "
                         "files stay as they were when it was scored (train other seeds as another variant)")
    validation_table(runs, out, name)
    ensemble = runs_dir / f"ensemble-{name}"
    run_ensemble([str(r) for r in runs], ensemble, data=args.data, calibrate=True, progress=False, shifts=shifts)
    doc = json.loads((ensemble / "ensemble.json").read_text())  # the record (the model itself stays in its run folder)
    names = doc["validation"].pop("record_names", None) or []  # 1,160 names: the selection split file lists them
    doc["validation"]["record_names_sha256"] = names_digest(names)
    atomic_write(report_file(out, "ensemble", name, "-validation.json"),
                 json.dumps({k: doc[k] for k in ("class_bias", "members", "validation")}
                            | {"ensemble_file": str(ensemble / "ensemble.json")}, indent=1) + "\n")
    print(f"model {name}: ensemble validation macro-F1 {cut4(validation_score(doc))}")
    if args.score_test:
        target = check_test_look(out, name, doc, first_look=args.first_look, baseline=args.baseline)
        score_test(ensemble, runs, Path(args.data), standard_splits(Path(args.data), runs_dir), out, name=target.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
