"""Fine-tuning recipe ablation on a selection split, blind to the test split.

    python scripts/recipe_ablation.py [--variants reports/recipe-ablation/variants.yaml] [--seeds 0,1]
        [--only NAME,NAME] [--data DIR] [--splits runs/pipeline/splits.json] [--runs runs/recipe-ablation]
        [--report reports/recipe-ablation] [--set KEY=VALUE ...] [--table-only] [--convergence A:B,...]

Protocol (fixed before running): the test records of ``--splits`` (the standard split, seed 0)
are kept out of everything; the other records are split 80/20 (stratified, seed 1) into a
selection train / validation split (4,638 / 1,160 records). Every variant is the CPU preset
plus the ``--set`` overrides listed in the variants file, trained on the selection train split
for each seed; its score is the validation macro-F1 of its best epoch. The selection split file
lists no test records, so no test record is read for training or scored here. Finished runs are kept (rerun the command to resume); the
table (``ablation.csv`` + ``ablation.md``, mean +- std over seeds) is rewritten from all
finished runs each time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from pathlib import Path

import yaml
from seed_ensemble import write_markdown  # scripts/: shared report writer
from sklearn.model_selection import train_test_split

from ecgtl.config import FinetuneConfig, load_config
from ecgtl.data.cinc2017 import find_label_file, read_labels
from ecgtl.data.splits import kfold_splits, load_splits, make_splits, save_splits
from ecgtl.experiments.report import fmt
from ecgtl.fileio import atomic_write
from ecgtl.train.finetune import run_finetune

HERE = Path(__file__).resolve().parents[1]


def selection_splits(base_splits: Path, data: Path, out: Path) -> Path:
    """The selection split file (made once): 80/20 of the non-test records, stratified, seed 1; test kept aside."""
    path = out / "selection-splits.json"
    if not path.is_file():
        labels = read_labels(find_label_file(data))
        if base_splits.is_file():
            base = load_splits(base_splits)
        else:  # the standard split, as `ecgtl finetune` makes it by default (split_seed 0, 20% test, 5% val)
            names = sorted(labels)
            base = make_splits(names, [labels[n] for n in names], test_fraction=0.2, val_fraction=0.05, seed=0)
        pool = sorted(base["train"] + base["val"])
        train, val = train_test_split(pool, test_size=0.2, stratify=[labels[n] for n in pool], random_state=1)
        out.mkdir(parents=True, exist_ok=True)
        save_splits(path, {"train": sorted(train), "val": sorted(val), "test": []}, seed=1,
                    note="selection split: 80/20 of the non-test records of the standard split; its test records are left out")
    return path


def subset_splits(selection: Path, k: int, data: Path, out: Path) -> list[Path]:
    """``k`` split files (made once) for a k-fold-subset ensemble: member i trains on the selection training records
    minus their stratified fold i (:func:`kfold_splits`, seed 1) and is validated on the selection validation records,
    as every other run."""
    sel, labels = load_splits(selection), read_labels(find_label_file(data))
    train = sorted(sel["train"])
    paths = []
    for i, fold in enumerate(kfold_splits(train, [labels[n] for n in train], k=k, val_fraction=0.0, seed=1)):
        path = out / f"selection-kfold{k}-{i}.json"
        if not path.is_file():
            save_splits(path, {"train": fold["train"], "val": sel["val"], "test": []}, seed=1, folds=k, fold=i,
                        note=f"the selection split's training records minus their stratified fold {i} of {k}; its validation records")
        paths.append(path)
    return paths


def run_variant(name: str, overrides: list[str], seed: int, data: Path, splits: Path, runs: Path) -> dict:
    out = runs / f"{name}-seed{seed}"
    done = out / "results.json"
    if not done.is_file():
        cfg = load_config(FinetuneConfig, "cpu", "finetune", [f"data={data}", f"out={out}", f"splits={splits}", f"seed={seed}",
                                                              "bootstrap=0", *overrides])
        t0 = time.perf_counter()
        run_finetune(cfg, progress=False)
        print(f"{name} seed {seed}: {(time.perf_counter() - t0) / 60:.1f} min")
    res = json.loads(done.read_text())
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return {"variant": name, "seed": seed, "val_macro_f1": res["val"]["macro_f1"],
            "val_challenge_f1": res["val"].get("challenge_f1"), "best_epoch": res["best_round"], "epochs": len(rows),
            "train_minutes": sum(float(r["train_seconds"]) for r in rows) / 60, "overrides": " ".join(overrides)}


def finished_seeds(name: str, runs: Path) -> list[int]:
    """Seeds of the finished runs of variant ``name`` in ``runs`` (folders ``NAME-seedS`` with a results.json), whatever --seeds says."""
    prefix = f"{name}-seed"
    return sorted(int(d.name[len(prefix):]) for d in runs.glob(f"{prefix}*")
                  if d.name[len(prefix):].isdigit() and (d / "results.json").is_file())


def finished_rows(variants: dict, extra: list[str], data: Path, splits: Path, runs: Path) -> list[dict]:
    """One row per finished run of every variant, all seeds: the table never loses a run that --seeds leaves out."""
    return [run_variant(n, list(variants[n]["set"]) + extra, s, data, splits, runs)
            for n in variants for s in finished_seeds(n, runs)]


_CSV_TYPES = {"seed": int, "val_macro_f1": float, "val_challenge_f1": float, "best_epoch": int, "epochs": int, "train_minutes": float}


def reported_rows(out: Path, variants: dict, extra: list[str]) -> list[dict]:
    """The rows of ``out/ablation.csv`` (committed) whose variant is still in ``variants``, typed as :func:`run_variant`
    gives them.

    SystemExit when a row was trained with other overrides than its variant's ``set`` plus ``extra`` (this call's
    --set): a smoke run's ``--set epochs=1`` aimed at the committed table, or a variant edited since its rows were
    made. Nothing is dropped or mixed silently: use another --report, or remove the stale rows by hand.
    """
    path = out / "ablation.csv"
    if not path.is_file():
        return []
    kept, stale = [], []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            if r["variant"] not in variants:
                print(f"{path}: rows of {r['variant']} (seed {r['seed']}) left out: the variant is not in the variants file")
                continue
            want = " ".join(list(variants[r["variant"]]["set"]) + list(extra))
            if r["overrides"] != want:
                stale.append(f"{r['variant']} seed {r['seed']} ({r['overrides']!r}, now {want!r})")
            kept.append({k: _CSV_TYPES[k](v) if k in _CSV_TYPES else v for k, v in r.items()})
    if stale:
        raise SystemExit(f"{path}: {len(stale)} row(s) were trained with other overrides than this call's, e.g. {stale[0]}: "
                         "write to another --report (e.g. for a smoke run), or remove the stale rows from the file")
    return kept


def write_table(rows: list[dict], variants: dict, out: Path, extra: list[str] = ()) -> None:
    """``ablation.csv`` (a row per run) and ``ablation.md`` (a row per variant, scores cut to 3 decimals, never rounded up).

    Rows already in ``out/ablation.csv`` for runs that ``rows`` lacks are kept: run folders are not committed, so a
    fresh checkout that trains one new variant adds its rows to the committed table instead of replacing it. A run
    in ``rows`` replaces its old row; an old row with other overrides than the variant's now (``extra``: this
    call's --set) stops the call (:func:`reported_rows`). Rows go in the variants' file order, then by seed.
    """
    out.mkdir(parents=True, exist_ok=True)
    have = {(r["variant"], r["seed"]) for r in rows}
    order = {name: i for i, name in enumerate(variants)}
    rows = sorted(rows + [r for r in reported_rows(out, variants, list(extra)) if (r["variant"], r["seed"]) not in have],
                  key=lambda r: (order[r["variant"]], r["seed"]))
    if not rows:
        return
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "ablation.csv", text.getvalue())
    lines = ["| variant | overrides on the cpu preset | seeds | val macro-F1 mean +- std | val challenge F1 | best epochs | train min/run |",
             "|---|---|---|---|---|---|---|"]
    for name, spec in variants.items():
        got = [r for r in rows if r["variant"] == name]
        if not got:
            continue
        f1 = [r["val_macro_f1"] for r in got]
        sd = statistics.stdev(f1) if len(f1) > 1 else float("nan")
        lines.append(f"| {name} | `{' '.join(spec['set']) or '(none)'}` | {len(got)} | {fmt(statistics.mean(f1))} +- {fmt(sd)} | "
                     f"{fmt(statistics.mean(r['val_challenge_f1'] for r in got))} | {', '.join(str(r['best_epoch']) for r in got)} | "
                     f"{fmt(statistics.mean(r['train_minutes'] for r in got), digits=1)} |")
    atomic_write(out / "ablation.md", "\n".join(lines) + "\n")


CONVERGENCE_LEVEL = 0.70  # a fixed validation macro-F1 both runs of a pair must reach (not a share of each run's own best)
EPOCH_SPANS = ((1, 5), (6, 15), (16, 30))


def val_curve(run: Path) -> list[float]:
    """Validation macro-F1 per epoch of a finished run (its ``metrics.csv``)."""
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["val_macro_f1"]) for r in csv.DictReader(fh)]


def convergence_lines(pairs: list[tuple[str, str]], runs: Path) -> list[str]:
    """Per seed both variants of a pair finished: mean validation macro-F1 over spans of epochs, and the first epoch at the level."""
    spans = " | ".join(f"epochs {a}-{b}" for a, b in EPOCH_SPANS)
    lines = [f"Training speed on validation (selection split), paired by seed: the mean validation macro-F1 over spans of "
             f"epochs, the first epoch at {CONVERGENCE_LEVEL} or more (a fixed level, so that a run with a lower best does not "
             "look faster), and the best. Command: `python scripts/recipe_ablation.py --convergence "
             f"{','.join(f'{a}:{b}' for a, b in pairs)}`.", "",
             f"| variant | seed | {spans} | first epoch >= {CONVERGENCE_LEVEL} | best | best minus the pair's |",
             "|---|---|" + "---|" * len(EPOCH_SPANS) + "---|---|---|"]
    summary = []
    for variant, base in pairs:
        diffs = []
        for seed in sorted(set(finished_seeds(variant, runs)) & set(finished_seeds(base, runs))):
            curves = {name: val_curve(runs / f"{name}-seed{seed}") for name in (variant, base)}
            diffs.append(max(curves[variant]) - max(curves[base]))
            for name, curve in curves.items():
                means = [fmt(statistics.mean(curve[a - 1:b])) if len(curve) >= b else "n/a" for a, b in EPOCH_SPANS]
                first = next((i + 1 for i, v in enumerate(curve) if v >= CONVERGENCE_LEVEL), None)
                diff = fmt(diffs[-1], signed=True) if name == variant else ""
                lines.append(f"| {name} | {seed} | {' | '.join(means)} | {first or 'never'} | {fmt(max(curve))} | {diff} |")
        if diffs:
            summary.append(f"- {variant} minus {base}, best epoch, {len(diffs)} seed pairs: {fmt(statistics.mean(diffs), signed=True)} "
                           f"on average (higher in {sum(d > 0 for d in diffs)}, lower in {sum(d < 0 for d in diffs)}).")
    return lines + ([""] + summary if summary else [])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=str(HERE / "reports" / "recipe-ablation" / "variants.yaml"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--only", help="comma-separated variant names (default: all, in file order)")
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--splits", default="runs/pipeline/splits.json", help="the standard split whose test records are kept out")
    ap.add_argument("--runs", default="runs/recipe-ablation")
    ap.add_argument("--report", default=str(HERE / "reports" / "recipe-ablation"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override added to every variant (after its own), e.g. epochs=1 for a smoke run")
    ap.add_argument("--table-only", action="store_true",
                    help="make the selection split if missing, tabulate the finished runs, train nothing "
                         "(e.g. before and after runs started side by side with --only)")
    ap.add_argument("--make-subsets", type=int, metavar="K",
                    help="write the K split files of a k-fold-subset ensemble (selection-kfoldK-I.json in --runs), train nothing")
    ap.add_argument("--convergence", metavar="A:B,...",
                    help="write convergence.md comparing variant A with B per seed (e.g. beat-init:full), train nothing")
    args = ap.parse_args()
    if args.convergence:
        pairs = [tuple(p.split(":", 1)) for p in args.convergence.split(",")]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise SystemExit(f"--convergence takes A:B pairs of variant names, got {args.convergence!r}")
        write_markdown(Path(args.report) / "convergence.md", convergence_lines(pairs, Path(args.runs)))
        return 0
    variants = yaml.safe_load(Path(args.variants).read_text())
    names = args.only.split(",") if args.only else list(variants)
    runs, report = Path(args.runs), Path(args.report)
    reported_rows(report, variants, args.set)  # before any training: a table this call could not add to stops it here
    splits = selection_splits(Path(args.splits), Path(args.data), runs)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.make_subsets:
        for path in subset_splits(splits, args.make_subsets, Path(args.data), runs):
            print(path)
        return 0
    if args.table_only:
        names = []
        rows = finished_rows(variants, args.set, Path(args.data), splits, runs)
        if rows:
            write_table(rows, variants, report, args.set)
        else:
            print(f"no finished runs in {runs}")
            return 0
    for name in names:
        for seed in seeds:
            run_variant(name, list(variants[name]["set"]) + args.set, seed, Path(args.data), splits, runs)
            write_table(finished_rows(variants, args.set, Path(args.data), splits, runs), variants, report, args.set)
    print((report / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
