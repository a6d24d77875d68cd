"""``scripts/seed_ensemble.py``: per-variant report files, and the rule for a further look at the test split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "seed_ensemble.py"


@pytest.fixture(scope="module")
def seed_ensemble():
    spec = importlib.util.spec_from_file_location("seed_ensemble", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(f1: float, records: int = 1160, cross: float | None = None, kept: bool = False) -> dict:
    cal = {"macro_f1_cross_fitted": cross if cross is not None else f1 - 0.002, "kept": kept}
    return {"validation": {"records": records, "macro_f1": f1, "calibration": cal}}


def _scored_baseline(out: Path, f1: float = 0.81) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble-validation.json").write_text(json.dumps(_doc(f1)))
    (out / "test-score.json").write_text(json.dumps({"macro_f1": 0.787}))


def test_the_baseline_keeps_the_plain_names_and_other_variants_their_own(seed_ensemble, tmp_path):
    assert seed_ensemble.report_file(tmp_path, "ensemble", "full", ".md") == tmp_path / "ensemble.md"
    assert seed_ensemble.report_file(tmp_path, "ensemble", "epochs-60", "-validation.json") == tmp_path / "ensemble-epochs-60-validation.json"
    assert seed_ensemble.report_file(tmp_path, "test-score", "epochs-60", ".json") == tmp_path / "test-score-epochs-60.json"


def test_the_first_look_in_a_fresh_report_folder_is_allowed(seed_ensemble, tmp_path):
    assert seed_ensemble.check_test_look(tmp_path, "w05-125hz", _doc(0.70)) == tmp_path / "test-score-w05-125hz.json"
    assert seed_ensemble.check_test_look(tmp_path, "full", _doc(0.70)) == tmp_path / "test-score.json"


def test_a_model_is_scored_once(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path)
    with pytest.raises(SystemExit, match="scored already"):
        seed_ensemble.check_test_look(tmp_path, "full", _doc(0.81))
    (tmp_path / "test-score-epochs-60.json").write_text("{}")
    with pytest.raises(SystemExit, match="scored already"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.90))


def test_a_further_look_needs_the_validation_gain(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path, f1=0.81)
    with pytest.raises(SystemExit, match="not at least 0.01 above"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.8195))
    assert seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.8205)) == tmp_path / "test-score-epochs-60.json"


def test_kept_biases_are_judged_by_their_cross_fitted_score(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path, f1=0.81)
    # fitted on the same records it looks 0.83; cross-fitted only 0.815: no look
    with pytest.raises(SystemExit, match="0.8150"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.83, cross=0.815, kept=True))


def test_another_set_of_validation_records_is_refused(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path)
    with pytest.raises(SystemExit, match="not the same validation records"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.90, records=362))


def test_a_scored_baseline_without_its_validation_file_is_refused(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path)
    (tmp_path / "ensemble-validation.json").unlink()
    with pytest.raises(SystemExit, match="cannot be compared"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.90))
