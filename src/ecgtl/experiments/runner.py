"""``ecgtl experiment PRESET|FILE.yaml``: run the study's grid, resumably, into one results table.

    ecgtl experiment quick                     # what `make pipeline` runs (minutes on 2 cores)
    ecgtl experiment cpu --dry-run             # the runs, their status and estimated CPU time
    ecgtl experiment cpu --out runs/experiments/cpu --extra-test /path/to/private/cinc-layout/folder

Layout of ``--out`` (default ``runs/experiments/<preset>``)::

    grid.yaml          the grid as run (a rerun with another recipe is refused; axes may grow)
    splits.json        one train/validation/test split for every fine-tune, made once
    cinc-store/        the CinC training split's own records as a store (in-domain pretexts only)
    pretrain/<id>/     one folder per pre-training run (shared by its fine-tunes)
    finetune/<id>/     one folder per fine-tune (``ecgtl finetune`` outputs)
    results.csv        one row per finished fine-tune (:mod:`ecgtl.experiments.results`)
    report/            ``ecgtl report results.csv`` (Markdown + PNG), rewritten at the end

Resuming: a finished run (its row in ``results.csv``, or its ``model.json`` for a pre-training)
is never recomputed; an interrupted one resumes from its checkpoint; ``results.csv`` is
rewritten atomically after each fine-tune, so a kill at any moment leaves every finished row
and no half-written one. ``--extra-test DIR`` scores every finished model on another
CinC-layout folder (e.g. withheld records) without retraining, adding its columns to the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from pathlib import Path

from ecgtl.config import RESUMABLE_CHANGES, FinetuneConfig, PretrainConfig, load_config, to_dict
from ecgtl.constants import CINC_CLASSES
from ecgtl.errors import ConfigError
from ecgtl.experiments.grid import (
    FinetuneRun,
    GridSpec,
    Plan,
    PretrainRun,
    estimate_finetune_seconds,
    estimate_pretrain_seconds,
    load_spec,
    plan,
    safe_column_name,
    spec_as_yaml,
)
from ecgtl.experiments.results import CLASS_COLUMN, extra_columns, read_results, write_results
from ecgtl.fileio import atomic_write

DEFAULT_DATA = "data/raw/challenge-2017/1.0.0/training2017"
DEFAULT_STORE = "data/store"
CINC_SPLIT_RECORDS = (5436, 362, 1450)  # the standard split (80/20, 5% validation), for estimates before a split exists


class Experiment:
    """One grid in one output folder: configs of its runs, their status, and running them."""

    def __init__(self, spec: GridSpec, out: str | os.PathLike, data: str = DEFAULT_DATA, store: str = DEFAULT_STORE,
                 overrides: list[str] = ()):
        self.spec, self.out, self.data, self.store = spec, Path(out), data, store
        self.overrides = list(overrides)  # e.g. device=cpu num_workers=2: hardware only
        self.plan: Plan = plan(spec)
        self.results_csv = self.out / "results.csv"

    # ------------------------------------------------------------------ configs
    def finetune_dir(self, run: FinetuneRun) -> Path:
        return self.out / "finetune" / run.run_id

    def pretrain_dir(self, run: PretrainRun) -> Path:
        return self.out / "pretrain" / run.run_id

    def finetune_config(self, run: FinetuneRun) -> FinetuneConfig:
        overrides = [f"data={self.data}", f"out={self.finetune_dir(run)}", f"splits={self.out / 'splits.json'}",
                     f"model.name={run.arch}", f"fs={run.fs:g}", f"label_fraction={run.label_fraction:g}", f"seed={run.seed}",
                     *self.spec.finetune_set, *self.overrides]
        if run.pretrain is not None:
            overrides.append(f"init={self.pretrain_dir(run.pretrain) / 'model.json'}")
        return load_config(FinetuneConfig, self.spec.finetune_preset, "finetune", overrides)

    def pretrain_config(self, run: PretrainRun) -> PretrainConfig:
        width = load_config(FinetuneConfig, self.spec.finetune_preset, "finetune", [f"model.name={run.arch}", *self.spec.finetune_set])
        overrides = [f"store={self.out / 'cinc-store' if run.in_domain else self.store}", f"out={self.pretrain_dir(run)}",
                     f"task={run.task}", f"fs={run.fs:g}", f"model.name={run.arch}", f"model.width={width.model.width}",
                     f"patient_fraction={run.patient_fraction:g}", *(["sources=null"] if run.in_domain else []),
                     *self.spec.pretrain_set, *(self.spec.in_domain_set if run.in_domain else []), *self.overrides]
        return load_config(PretrainConfig, self.spec.pretrain_preset, "pretrain", overrides)

    # ------------------------------------------------------------------ status and estimates
    def finished_rows(self) -> dict[str, dict]:
        return {r["run_id"]: r for r in read_results(self.results_csv)}

    def status(self) -> list[dict]:
        """Every run (pre-trainings first, then fine-tunes): kind, id, status and estimated CPU seconds."""
        done = self.finished_rows()
        n_train, n_val, n_test = self._split_sizes()
        rows = []
        for p in self.plan.pretrains:
            folder = self.pretrain_dir(p)
            state = "done" if (folder / "model.json").is_file() else "partial" if (folder / "checkpoint.pt").is_file() else "to do"
            cfg = self.pretrain_config(p)
            patients = n_train if p.in_domain else self._store_patients(cfg)
            rows.append({"kind": "pretrain", "id": p.run_id, "status": state,
                         "estimate_s": estimate_pretrain_seconds(cfg, round(patients * (1 - cfg.val_fraction)))})
        for r in self.plan.finetunes:
            folder = self.finetune_dir(r)
            state = "done" if r.run_id in done else "partial" if (folder / "checkpoint.pt").is_file() else "to do"
            rows.append({"kind": "finetune", "id": r.run_id, "status": state, "blocks": ",".join(self.plan.blocks[r.run_id]),
                         "estimate_s": estimate_finetune_seconds(self.finetune_config(r), n_train, n_val, n_test)})
        return rows

    def _split_sizes(self) -> tuple[int, int, int]:
        """Records in the train / validation / test splits (the standard split's sizes before one exists)."""
        split = self.out / "splits.json"
        if split.is_file():
            from ecgtl.data.splits import load_splits

            parts = load_splits(split)
            return len(parts["train"]), len(parts["val"]), len(parts["test"])
        return CINC_SPLIT_RECORDS

    def _store_patients(self, cfg: PretrainConfig) -> int:
        try:
            from ecgtl.data.store import Store

            patients = Store(cfg.store, keys=("source",)).patients
        except Exception:  # no store yet: estimate for the store the pipeline builds here
            return 200
        return sum(1 for p in patients if cfg.sources is None or p["source"] in cfg.sources)

    def dry_run(self) -> str:
        rows = self.status()
        todo = [r for r in rows if r["status"] != "done"]
        lines = [f"experiment {self.spec.name}: {len(self.plan.pretrains)} pre-training and {len(self.plan.finetunes)} fine-tuning "
                 f"runs in {self.out}; {len(todo)} to run (estimated {sum(r['estimate_s'] for r in todo) / 3600:.1f} h "
                 "on 2 CPU cores; a rough FLOP-based figure)", "",
                 f"{'kind':9s} {'status':8s} {'est. min':>8s}  run (blocks)"]
        for r in rows:
            blocks = f"  ({r['blocks']})" if r.get("blocks") else ""
            lines.append(f"{r['kind']:9s} {r['status']:8s} {r['estimate_s'] / 60:8.1f}  {r['id']}{blocks}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ running
    def check_validation(self) -> None:
        """Refuse fine-tunes without validation records (``val_fraction=0``): the table's best epoch, validation
        F1 and time to 95% of the best validation F1 are measured on them."""
        if self.plan.finetunes and self.finetune_config(self.plan.finetunes[0]).val_fraction == 0:
            raise ConfigError(f"grid {self.spec.name!r}: val_fraction=0 (a final fit without validation records) cannot run in "
                              "a grid: its table measures the best epoch and the convergence on validation records; leave "
                              "val_fraction > 0 (finetune_set or the finetune preset)")
        split = self.out / "splits.json"
        if split.is_file():
            from ecgtl.data.splits import load_splits

            if not load_splits(split)["val"]:
                raise ConfigError(f"{split}: this grid's split has no validation records; its table measures the best epoch "
                                  "and the convergence on them: use another --out")

    def check_recipe(self) -> None:
        """Refuse to extend a table made with another recipe (presets or overrides); axes and blocks may change."""
        path = self.out / "grid.yaml"
        if path.is_file():
            import yaml

            old = yaml.safe_load(path.read_text()) or {}
            old_recipe = {k: old.get(k) for k in self.spec.recipe()}
            if old_recipe != self.spec.recipe():
                changed = [k for k, v in self.spec.recipe().items() if old_recipe.get(k) != v]
                raise ConfigError(f"{path}: this folder's grid was run with another recipe ({', '.join(changed)} differ); "
                                  "use another --out, or the same presets and overrides")
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, spec_as_yaml(self.spec))

    def check_finished(self, rows: dict[str, dict]) -> None:
        """Refuse to extend a table whose finished rows were trained with another fine-tuning config.

        ``check_recipe`` compares preset *names*; this catches a preset whose *contents* changed
        since (e.g. an edited ``finetune-cpu.yaml``), which would otherwise mix two recipes in one table.
        """
        runs = {r.run_id: r for r in self.plan.finetunes}
        for run_id, row in rows.items():
            if run_id not in runs or not row.get("config_hash"):
                continue
            cfg = self.finetune_config(runs[run_id])
            if row["config_hash"] == config_hash(cfg):
                continue
            changed = ""
            saved = self.finetune_dir(runs[run_id]) / "config.yaml"
            if saved.is_file():
                import yaml

                def plain(c) -> dict:  # tuples as lists, as YAML has them
                    return _flatten(json.loads(json.dumps(to_dict(c), default=str)))

                old, new, default = _flatten(yaml.safe_load(saved.read_text()) or {}), plain(cfg), plain(FinetuneConfig())
                # a setting added to the config since the run (absent from its config.yaml) at its default changes nothing
                keys = sorted(k for k in old.keys() | new.keys()
                              if k.split(".")[0] not in RESUMABLE_CHANGES | PATH_FIELDS
                              and old.get(k, default.get(k)) != new.get(k))
                if not keys:
                    continue
                changed = f" ({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in keys[:5])})"
            raise ConfigError(f"{self.results_csv}: run {run_id} was trained with fine-tuning config {row['config_hash']}, "
                              f"but preset {self.spec.finetune_preset!r} now gives {config_hash(cfg)}{changed}; "
                              "use another --out for the new recipe, or restore the preset")

    def prepare_splits(self, progress: bool) -> None:
        if (self.out / "splits.json").is_file():
            return
        from ecgtl.train.finetune import read_labelled_records, resolve_splits

        cfg = load_config(FinetuneConfig, self.spec.finetune_preset, "finetune",
                          [f"data={self.data}", f"out={self.out}", *self.spec.finetune_set])
        resolve_splits(cfg, self.out, *read_labelled_records(cfg, progress))

    def prepare_cinc_store(self, progress: bool) -> None:
        if not any(p.in_domain for p in self.plan.pretrains):
            return
        from ecgtl.data.cinc_store import build_cinc_store
        from ecgtl.data.splits import load_splits

        train = load_splits(self.out / "splits.json")["train"]
        report = build_cinc_store(self.data, train, self.out / "cinc-store", progress=progress)
        print("  cinc-store: " + report.summary().replace("\n", "\n  "))

    def run(self, extra_tests: list[str] = (), progress: bool = True) -> list[dict]:
        from tqdm.auto import tqdm

        from ecgtl.train.finetune import run_finetune
        from ecgtl.train.pretrain import run_pretrain

        rows = self.finished_rows()
        self.check_finished(rows)  # first: a refused rerun writes nothing
        self.check_validation()
        self.check_recipe()
        self.prepare_splits(progress)
        self.prepare_cinc_store(progress)
        status = {r["id"]: r for r in self.status()}
        todo_s = sum(r["estimate_s"] for r in status.values() if r["status"] != "done")
        bar = tqdm(total=round(todo_s), desc=f"experiment {self.spec.name}", unit="est-s", disable=not progress,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} estimated CPU s [{elapsed}<{remaining}]{postfix}")
        n_done = sum(1 for r in self.plan.finetunes if r.run_id in rows)
        for run in self.plan.finetunes:
            if run.run_id in rows:
                row = rows[run.run_id]
                row["blocks"] = ";".join(self.plan.blocks[run.run_id])
                if self._add_extra_tests(run, row, extra_tests):
                    write_results(self.results_csv, self._ordered(rows))
                continue
            pre = run.pretrain
            if pre is not None and not (self.pretrain_dir(pre) / "model.json").is_file():
                bar.set_postfix_str(f"pretrain {pre.run_id}")
                run_pretrain(self.pretrain_config(pre), progress=False)
                bar.update(round(status[pre.run_id]["estimate_s"]))
            bar.set_postfix_str(f"finetune {n_done + 1}/{len(self.plan.finetunes)} {run.run_id}")
            cfg = self.finetune_config(run)
            run_finetune(cfg, progress=False)
            row = self.summarize(run, cfg)
            self._add_extra_tests(run, row, extra_tests)
            rows[run.run_id] = row
            write_results(self.results_csv, self._ordered(rows))
            n_done += 1
            bar.update(round(status[run.run_id]["estimate_s"]))
        bar.close()
        write_results(self.results_csv, self._ordered(rows))  # blocks may have changed
        return self._ordered(rows)

    def _ordered(self, rows: dict[str, dict]) -> list[dict]:
        order = {r.run_id: i for i, r in enumerate(self.plan.finetunes)}
        return sorted(rows.values(), key=lambda r: (order.get(r["run_id"], len(order)), r["run_id"]))

    def summarize(self, run: FinetuneRun, cfg: FinetuneConfig) -> dict:
        """The results row of a finished fine-tune, from its run folder."""
        folder = self.finetune_dir(run)
        test = json.loads((folder / "report_test.json").read_text())
        val = json.loads((folder / "report_val.json").read_text())
        results = json.loads((folder / "results.json").read_text())
        card = json.loads((folder / "model.json").read_text())
        with open(folder / "metrics.csv", newline="") as fh:
            metrics = list(csv.DictReader(fh))
        curve = [float(m["val_macro_f1"]) for m in metrics]
        seconds = [float(m["train_seconds"]) for m in metrics]
        best = max(curve) if curve else float("nan")
        reach = next((i for i, v in enumerate(curve) if v >= 0.95 * best), None)
        ci = test.get("macro_f1_ci") or [None, None]
        row = {
            "run_id": run.run_id, "blocks": ";".join(self.plan.blocks[run.run_id]), "arch": run.arch, "input": run.input,
            "pretext": run.pretext, "patient_fraction": run.patient_fraction, "fs": run.fs, "label_fraction": run.label_fraction,
            "seed": run.seed, "split_seed": cfg.split_seed, "config_hash": config_hash(cfg),
            "finetune_preset": self.spec.finetune_preset,
            "pretrain_run": run.pretrain.run_id if run.pretrain else "",
            "val_macro_f1": val["macro_f1"], "test_macro_f1": test["macro_f1"], "test_macro_f1_lo": ci[0], "test_macro_f1_hi": ci[1],
            "test_challenge_f1": test["challenge_f1"],
            "best_epoch": results["best_round"], "epochs_run": results["rounds_run"],
            "epochs_to_95": None if reach is None else reach + 1,
            "seconds_to_95": None if reach is None else round(sum(seconds[:reach + 1]), 2),
            "train_seconds": round(sum(seconds), 2), "train_records": card.get("train_records"),
            "val_macro_f1_curve": [round(v, 5) for v in curve], "train_seconds_curve": [round(s, 2) for s in seconds],
        }
        for c in CINC_CLASSES:
            row[f"test_f1_{CLASS_COLUMN[c]}"] = test["f1"][c]
            row[f"test_auroc_{CLASS_COLUMN[c]}"] = (test.get("auroc") or {}).get(c)
        return row

    def _add_extra_tests(self, run: FinetuneRun, row: dict, extra_tests) -> bool:
        """Score the run's model on each extra folder not yet in its row; True if the row changed."""
        changed = False
        for folder in extra_tests:
            name = safe_column_name(Path(folder).resolve().name)
            f1_col, challenge_col = extra_columns(name)
            if row.get(f1_col) not in (None, ""):
                continue
            from ecgtl.evaluate.commands import run_evaluate

            report = run_evaluate(os.fspath(self.finetune_dir(run)), folder, out=os.fspath(self.finetune_dir(run) / f"extra-{name}"),
                                  n_boot=0, progress=False)
            row[f1_col], row[challenge_col] = report["macro_f1"], report["challenge_f1"]
            changed = True
        return changed


#: fine-tuning settings that say where files are, not what was computed (the pre-training is named by pretrain_run)
PATH_FIELDS = {"data", "splits", "init", "out"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(cfg) -> str:
    """12 hex digits of the fine-tuning config, without where it ran, its folders and its hardware (what a resume may change)."""
    data = {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_CHANGES | PATH_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_experiment(preset: str, out: str | None = None, data: str = DEFAULT_DATA, store: str = DEFAULT_STORE,
                   extra_tests: list[str] = (), dry_run: bool = False, progress: bool = True, report: bool = True,
                   overrides: list[str] = ()) -> list[dict] | str:
    """Run (or with ``dry_run`` list) the grid ``preset``; write the report at the end. Returns the rows (or the listing)."""
    spec = load_spec(preset)
    exp = Experiment(spec, out or Path("runs") / "experiments" / spec.name, data=data, store=store, overrides=overrides)
    if dry_run:
        text = exp.dry_run()
        print(text)
        return text
    for folder in extra_tests:
        if not Path(folder).is_dir():
            raise ConfigError(f"--extra-test {folder}: not a folder (give a folder in the CinC 2017 layout, with labels)")
    t0 = time.perf_counter()
    rows = exp.run(extra_tests, progress)
    print(f"experiment {spec.name}: {len(rows)} fine-tunes in {exp.results_csv} ({(time.perf_counter() - t0) / 60:.1f} min this session)")
    if report:
        from ecgtl.experiments.report import write_report

        paths = write_report(exp.results_csv, exp.out / "report", title=f"Experiment `{spec.name}`", scale_note=spec.scale)
        print(f"report: {paths}")
    return rows


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("experiment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="grid preset (quick, cpu, paper) or a grid .yaml file")
    p.add_argument("--out", help="output folder (default: runs/experiments/<preset>)")
    p.add_argument("--data", default=DEFAULT_DATA, help="CinC 2017 folder (default: %(default)s)")
    p.add_argument("--store", default=DEFAULT_STORE, help="pre-training store (default: %(default)s)")
    p.add_argument("--extra-test", action="append", default=[], metavar="DIR",
                   help="also score every model on this CinC-layout folder (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hardware settings for every run, e.g. device=cpu or num_workers=4")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their status and estimated CPU time; run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_from_args)


HARDWARE_KEYS = {"device", "num_workers", "amp", "compile", "conv_layout"}


def _run_from_args(args) -> int:
    bad = [s for s in args.set if s.split("=", 1)[0] not in HARDWARE_KEYS]
    if bad:
        raise ConfigError(f"--set {bad[0]}: only hardware settings ({', '.join(sorted(HARDWARE_KEYS))}) may be set for a "
                          "whole grid; the recipe belongs in the grid file (finetune_set, pretrain_set)")
    run_experiment(args.grid, args.out, args.data, args.store, args.extra_test, args.dry_run, not args.no_progress,
                   not args.no_report, args.set)
    return 0
