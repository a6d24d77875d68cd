"""The chosen recipe refitted on every non-test record (issue 8): a final-fit seed ensemble, test split scored once.

    python scripts/final_fit.py --check-last-epoch   # validation only: the selection members' last epoch vs best epoch
    python scripts/final_fit.py                      # the members (resumable; ~13 min each on 2 cores) + ensemble.json
    python scripts/final_fit.py --score-test         # then, once: the standard split's 1,450 test records

Protocol (committed before any final-fit member was trained or scored):

* The recipe is the one chosen on the selection split, blind to the test records: the ``cpu``
  fine-tuning preset as it is, 30 epochs (``reports/recipe-ablation/ablation.md``, variant
  ``full``), averaged over 5 seeds (the seed-ensemble table, ``ensemble.md``: 5 members scored
  best on validation; class biases did not survive cross-fitting, so none are used).
* Members: ``ecgtl finetune --preset cpu --set splits=runs/recipe-ablation/final-fit-splits.json
  val_fraction=0 seed=S`` (S = 0..4). That split file lists the standard split's (``split_seed`` 0)
  5,798 non-test records as training records (the selection split's 4,638 training + 1,160
  validation records) and no validation or test records, so no member reads or scores a test
  record. With no validation records all 30 epochs run and the last epoch's weights are kept;
  the cosine schedule has brought the learning rate to 0 by then.
* What validation says about the last epoch: ``--check-last-epoch`` scores the selection
  members' last-epoch weights (their ``checkpoint.pt``) on the selection validation records,
  alone and averaged, beside their best-epoch weights (optimistic: chosen on the same records).
* The model is the plain mean of the 5 members' probabilities (``ecgtl ensemble``, unvalidated).
  ``--score-test`` scores it once on the standard test split. That is the second test scoring
  of issue 8 (the first: the selection-split seed ensemble, ``test-score.json``), reported as such
  beside the first.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ecgtl.config import FinetuneConfig, load_config, save_or_check_config
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.splits import load_splits, save_splits
from ecgtl.errors import ConfigError
from ecgtl.evaluate.commands import run_evaluate
from ecgtl.evaluate.ensemble import run_ensemble
from ecgtl.evaluate.metrics import macro_f1
from ecgtl.experiments.report import fmt
from ecgtl.fileio import atomic_write
from ecgtl.models.card import save_weights, write_card
from ecgtl.models.registry import with_current_model_name
from ecgtl.train.finetune import run_finetune

HERE = Path(__file__).resolve().parents[1]
CARD_OWN = {"card_version", "weights", "weights_sha256", "ecgtl_version", "torch_version", "git_commit", "card_sha256"}


def _probabilities(predictions: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(predictions, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["record"])
    y = np.array([CINC_CLASSES.index(r["label"]) for r in rows])
    return [r["record"] for r in rows], y, np.array([[float(r[f"p_{c}"]) for c in CINC_CLASSES] for r in rows])


def last_epoch_card(run: Path, out: Path) -> Path:
    """A model card for ``run``'s last-epoch weights (its ``checkpoint.pt`` model), everything else as its own card.

    Refused where the checkpoint's model is not what a final fit would keep: a weight average
    (``ema``), a run stopped early or mid-round, or a card with class biases (fitted for its best epoch).
    """
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    state = json.loads(ckpt["state"])
    card = json.loads((run / "model.json").read_text())
    problems = [why for bad, why in (("ema" in ckpt, "it keeps a weight average (ema_decay)"),
                                     (state["stopped_early"] or state["round"] != card["rounds_run"], "it stopped early"),
                                     (state["round_batches"] != 0, "its checkpoint is mid-round"),
                                     (card.get("class_bias") is not None, "its card has class biases"))
                if bad]
    if problems:
        raise SystemExit(f"{run}: its checkpoint's model is not a final fit's last epoch: {'; '.join(problems)}")
    if (out / "model.json").is_file() and json.loads((out / "model.json").read_text()).get("source_checkpoint_step") == state["step"]:
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_weights({k: v.contiguous() for k, v in ckpt["model"].items()}, out / "last.safetensors", {"round": str(state["round"])})
    card.update(best_round=state["round"], source_checkpoint_step=state["step"],
                note=f"the last epoch's weights of {run} (its checkpoint.pt), not its best epoch's")
    (out / "evaluate-val" / "predictions.csv").unlink(missing_ok=True)  # scores of other weights, if the run was retrained
    write_card(out / "model.json", out / "last.safetensors", **{k: v for k, v in card.items() if k not in CARD_OWN})
    return out


def check_last_epoch(runs: list[Path], data: Path, work: Path, report: Path) -> list[dict]:
    """Validation only: each selection member's best-epoch vs last-epoch weights on the selection validation records."""
    splits = runs[0] / "splits.json"
    best, last = [], []
    for run in runs:
        card = last_epoch_card(run, work / f"last-epoch-{run.name}")
        if not (card / "evaluate-val" / "predictions.csv").is_file():
            run_evaluate(str(card), str(data), out=str(card / "evaluate-val"), n_boot=0, progress=False, records=f"{splits}:val")
        names, y, p_last = _probabilities(card / "evaluate-val" / "predictions.csv")
        names_best, y_best, p_best = _probabilities(run / "predictions_val.csv")
        if names != names_best or not np.array_equal(y, y_best):
            raise SystemExit(f"{run}: its validation predictions and the last epoch's cover different records")
        best.append(p_best)
        last.append(p_last)
    rows = []
    for k in range(1, len(runs) + 1):
        rows.append({"members": k, "seeds": ",".join(r.name.rsplit("seed", 1)[-1] for r in runs[:k]),
                     "best_epoch_alone": macro_f1(y, best[k - 1].argmax(1), 4), "last_epoch_alone": macro_f1(y, last[k - 1].argmax(1), 4),
                     "best_epoch_ensemble": macro_f1(y, np.mean(best[:k], 0).argmax(1), 4),
                     "last_epoch_ensemble": macro_f1(y, np.mean(last[:k], 0).argmax(1), 4)})
    variant = runs[0].name.rsplit('-seed', 1)[0]
    command = "python scripts/final_fit.py --check-last-epoch" + ("" if variant == "full" else f" --variant {variant}")
    lines = [f"Selection members (`{variant}`, 30 epochs) on the selection split's validation records "
             f"(n = {len(y)}), macro-F1: the best epoch's weights (chosen on these records: optimistic) and the last epoch's "
             f"(what a final fit without validation keeps). Command: `{command}`.", "",
             "| members (seeds) | best epoch, member k alone | last epoch, member k alone | best epochs, averaged | last epochs, averaged |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['members']} ({r['seeds']}) | {fmt(r['best_epoch_alone'], digits=4)} | {fmt(r['last_epoch_alone'], digits=4)} | "
              f"{fmt(r['best_epoch_ensemble'], digits=4)} | {fmt(r['last_epoch_ensemble'], digits=4)} |" for r in rows]
    atomic_write(report / ("last-epoch.md" if variant == "full" else f"last-epoch-{variant}.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def final_fit_splits(data: Path, runs: Path) -> Path:
    """The members' split file (made once): the standard split's non-test records train; no validation, no test records."""
    from seed_ensemble import standard_splits

    path = runs / "final-fit-splits.json"
    if not path.is_file():
        standard = load_splits(standard_splits(data, runs))
        save_splits(path, {"train": sorted(standard["train"] + standard["val"]), "val": [], "test": []}, seed=0,
                    note="final fit: the non-test records of the standard split (split_seed 0); its test records are left out")
    return path


def train_members(seeds: list[int], data: Path, runs: Path, overrides: list[str] = ()) -> list[Path]:
    """Train (or resume, or keep) each member; a finished member is kept only if its config is the one asked for."""
    splits = final_fit_splits(data, runs)
    out = []
    for seed in seeds:
        run = runs / f"final-fit-seed{seed}"
        cfg = load_config(FinetuneConfig, "cpu", "finetune", [f"data={data}", f"out={run}", f"splits={splits}", "val_fraction=0",
                                                              f"seed={seed}", "bootstrap=0", *overrides])
        if (run / "results.json").is_file():  # finished: never retrained, but never another recipe's (e.g. a smoke test's)
            try:  # epochs included: a finished member is kept only as the protocol asks it
                save_or_check_config(cfg, run / "config.yaml", canonical=with_current_model_name, resumable=())
            except ConfigError as exc:
                raise SystemExit(f"{run}: a finished member trained with other settings: {exc}") from None
        else:  # a killed member resumes from its checkpoint
            run_finetune(cfg, progress=False)
        out.append(run)
    return out


def score_test(ensemble: Path, members: list[Path], data: Path, runs: Path, report: Path) -> dict:
    """The second test scoring of issue 8 (``final-fit-test-score.json``), with the first one's figures beside it."""
    from seed_ensemble import score_test as score
    from seed_ensemble import standard_splits

    split = standard_splits(data, runs)
    test = set(load_splits(split)["test"])
    for member in members:
        own = load_splits(member / "splits.json")
        if own["val"] or own["test"] or test & set(own["train"]):
            raise SystemExit(f"{member / 'splits.json'}: not a final fit beside the standard split's test records "
                             "(it lists validation or test records, or trained on a test record)")
    first = json.loads((report / "test-score.json").read_text()) if (report / "test-score.json").is_file() else None
    extra = {"first_test_scoring": {k: first[k] for k in ("model", "macro_f1", "macro_f1_ci", "challenge_f1")} if first else None}
    return score(ensemble, members, data, split, report, name="final-fit-test-score.json", extra=extra,
                 note="the second scoring of the test split in issue 8, fixed by the protocol in scripts/final_fit.py before "
                      "these members existed; members alone are for reference, not choice")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/recipe-ablation")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--report", default=str(HERE / "reports" / "recipe-ablation"))
    ap.add_argument("--check-last-epoch", action="store_true", help="only the validation check of the selection members")
    ap.add_argument("--variant", default="full", help="with --check-last-epoch: the selection members' variant "
                    "(scripts/recipe_ablation.py); its table is last-epoch-VARIANT.md (full: last-epoch.md)")
    ap.add_argument("--score-test", action="store_true", help="score the final-fit ensemble on the standard test split (once)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides on the cpu preset (smoke tests only: "
                    "the protocol is the preset as it is)")
    args = ap.parse_args()
    runs, report, data = Path(args.runs), Path(args.report), Path(args.data)
    seeds = [int(s) for s in args.seeds.split(",")]
    report.mkdir(parents=True, exist_ok=True)
    if args.check_last_epoch:
        selection = [runs / f"{args.variant}-seed{s}" for s in seeds]
        missing = [r for r in selection if not (r / "checkpoint.pt").is_file()]
        if missing:
            raise SystemExit(f"selection members not trained: {missing} (python scripts/recipe_ablation.py --only {args.variant})")
        check_last_epoch(selection, data, runs, report)
        return 0
    if args.score_test and (report / "final-fit-test-score.json").is_file():
        raise SystemExit(f"{report / 'final-fit-test-score.json'}: the final fit was scored already; the protocol scores it once")
    members = train_members(seeds, data, runs, args.set)
    ensemble = runs / "ensemble-final-fit"
    run_ensemble([str(m) for m in members], ensemble, data=str(data), progress=False)
    if args.score_test:
        score_test(ensemble, members, data, runs, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
