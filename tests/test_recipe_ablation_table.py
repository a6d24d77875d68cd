"""``scripts/recipe_ablation.py``: its table keeps every finished run, whatever ``--seeds`` a later call names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from script_loader import load_script


@pytest.fixture(scope="module")
def ablation():
    return load_script("recipe_ablation")


def _finished(runs: Path, name: str, seed: int, f1: float) -> None:
    out = runs / f"{name}-seed{seed}"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"val": {"macro_f1": f1, "challenge_f1": f1 + 0.03}, "best_round": 2}))
    (out / "metrics.csv").write_text("round,train_seconds\n1,60\n2,60\n")


def test_the_table_keeps_runs_of_seeds_a_later_call_does_not_name(ablation, tmp_path):
    runs, report = tmp_path / "runs", tmp_path / "report"
    variants = {"augment": {"set": ["epochs=15"]}, "augment-stretch-flip": {"set": ["epochs=15"]}, "full": {"set": []}}
    for seed, f1 in enumerate([0.76, 0.78, 0.77, 0.79, 0.75]):
        _finished(runs, "full", seed, f1)
    _finished(runs, "augment", 0, 0.70)
    _finished(runs, "augment-stretch-flip", 1, 0.60)
    (runs / "full-seed7").mkdir()  # started, not finished: no results.json
    (runs / "full-seedx").mkdir()
    assert ablation.finished_seeds("full", runs) == [0, 1, 2, 3, 4]
    assert ablation.finished_seeds("augment", runs) == [0]  # not augment-stretch-flip's run
    rows = ablation.finished_rows(variants, [], tmp_path / "data", tmp_path / "splits.json", runs)
    assert [(r["variant"], r["seed"]) for r in rows] == [("augment", 0), ("augment-stretch-flip", 1)] + [("full", s) for s in range(5)]
    ablation.write_table(rows, variants, report)
    table = (report / "ablation.md").read_text()
    assert "| full | `(none)` | 5 | 0.770 +- 0.015 | 0.800 |" in table  # std 0.0158: cut, not rounded up
    assert len((report / "ablation.csv").read_text().splitlines()) == 8


def test_a_fresh_checkout_adds_its_runs_to_the_committed_table(ablation, tmp_path):
    """Run folders are not committed: the rows already in the report's ablation.csv stay, a rerun replaces its own row."""
    variants = {"full": {"set": []}, "new": {"set": ["epochs=15"]}}
    old_runs, runs, report = tmp_path / "old", tmp_path / "runs", tmp_path / "report"
    for seed, f1 in enumerate([0.76, 0.78]):
        _finished(old_runs, "full", seed, f1)
    ablation.write_table(ablation.finished_rows(variants, [], tmp_path, tmp_path, old_runs), variants, report)
    _finished(runs, "new", 0, 0.70)
    _finished(runs, "full", 1, 0.80)  # a rerun of full seed 1 here: its new row replaces the old one
    ablation.write_table(ablation.finished_rows(variants, [], tmp_path, tmp_path, runs), variants, report)
    lines = (report / "ablation.csv").read_text().splitlines()
    assert [ln.split(",")[:3] for ln in lines[1:]] == [["full", "0", "0.76"], ["full", "1", "0.8"], ["new", "0", "0.7"]]
    table = (report / "ablation.md").read_text()
    assert "| full | `(none)` | 2 | 0.780 +- 0.028 |" in table and "| new | `epochs=15` | 1 | 0.700 +- n/a |" in table
    del variants["new"]  # a variant taken out of the file leaves the table
    ablation.write_table([], variants, report)
    assert "new" not in (report / "ablation.csv").read_text()


def test_rows_made_with_other_overrides_stop_the_call(ablation, tmp_path):
    """A smoke run's --set aimed at the committed table, or a variant edited since its rows, stops before any training."""
    variants = {"full": {"set": []}}
    runs, report = tmp_path / "runs", tmp_path / "report"
    _finished(runs, "full", 0, 0.76)
    ablation.write_table(ablation.finished_rows(variants, [], tmp_path, tmp_path, runs), variants, report)
    before = (report / "ablation.csv").read_text()
    with pytest.raises(SystemExit, match=r"1 row\(s\) were trained with other overrides .* full seed 0 \(''\, now 'epochs=1'\)"):
        ablation.reported_rows(report, variants, ["epochs=1"])
    with pytest.raises(SystemExit, match="other overrides"):
        ablation.write_table([], {"full": {"set": ["fs=250"]}}, report)
    assert (report / "ablation.csv").read_text() == before  # nothing dropped
    assert len(ablation.reported_rows(report, variants, [])) == 1
