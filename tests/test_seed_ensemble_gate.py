"""``scripts/seed_ensemble.py``: per-variant report files, and the rule for a further look at the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from script_loader import load_script


@pytest.fixture(scope="module")
def seed_ensemble():
    return load_script("seed_ensemble")


NAMES = [f"A{i:05d}" for i in range(1160)]


def _doc(f1: float, names=NAMES, cross: float | None = None, kept: bool = False, digest: bool = True) -> dict:
    cal = {"macro_f1_cross_fitted": cross if cross is not None else f1 - 0.002, "kept": kept}
    val = {"records": len(names), "macro_f1": f1, "calibration": cal}
    if digest:
        val["record_names_sha256"] = _digest(names)
    return {"validation": val}


def _digest(names) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def _scored_baseline(out: Path, f1: float = 0.81) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble-validation.json").write_text(json.dumps(_doc(f1)))
    (out / "test-score.json").write_text(json.dumps({"macro_f1": 0.787}))


def test_the_baseline_keeps_the_plain_names_and_other_variants_their_own(seed_ensemble, tmp_path):
    assert seed_ensemble.report_file(tmp_path, "ensemble", "full", ".md") == tmp_path / "ensemble.md"
    assert seed_ensemble.report_file(tmp_path, "ensemble", "epochs-60", "-validation.json") == tmp_path / "ensemble-epochs-60-validation.json"
    assert seed_ensemble.report_file(tmp_path, "test-score", "epochs-60", ".json") == tmp_path / "test-score-epochs-60.json"


def test_a_fresh_report_folder_takes_one_first_look_only_when_asked(seed_ensemble, tmp_path):
    with pytest.raises(SystemExit, match="needs --first-look"):  # a new --report folder does not open the gate
        seed_ensemble.check_test_look(tmp_path, "w05-125hz", _doc(0.70))
    got = seed_ensemble.check_test_look(tmp_path, "w05-125hz", _doc(0.70), first_look=True)
    assert got == tmp_path / "test-score-w05-125hz.json"
    got.write_text("{}")
    with pytest.raises(SystemExit, match="not a first look"):
        seed_ensemble.check_test_look(tmp_path, "w1-stem4-reg", _doc(0.70), first_look=True)
    _scored_baseline(tmp_path / "cpu")
    with pytest.raises(SystemExit, match="not a first look"):
        seed_ensemble.check_test_look(tmp_path / "cpu", "epochs-60", _doc(0.90), first_look=True)
    assert seed_ensemble.names_digest(reversed(NAMES)) == _digest(NAMES)  # order does not matter


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
    other = NAMES[1:] + ["B00001"]  # as many records, not the same ones
    for doc in (_doc(0.90, names=other), _doc(0.90, names=NAMES[:362]), _doc(0.90, digest=False)):
        with pytest.raises(SystemExit, match="validated on other records than the scored baseline"):
            seed_ensemble.check_test_look(tmp_path, "epochs-60", doc)


def test_a_scored_baseline_without_its_validation_file_is_refused(seed_ensemble, tmp_path):
    _scored_baseline(tmp_path)
    (tmp_path / "ensemble-validation.json").unlink()
    with pytest.raises(SystemExit, match="cannot be compared"):
        seed_ensemble.check_test_look(tmp_path, "epochs-60", _doc(0.90))


def test_a_scored_models_files_are_never_rebuilt(seed_ensemble, tmp_path, monkeypatch):
    runs, report = tmp_path / "runs", tmp_path / "report"
    for s in (0, 1):
        (runs / f"full-seed{s}").mkdir(parents=True)
        (runs / f"full-seed{s}" / "results.json").write_text("{}")
    _scored_baseline(report)
    before = (report / "ensemble-validation.json").read_text()
    monkeypatch.setattr("sys.argv", ["seed_ensemble.py", "--runs", str(runs), "--report", str(report), "--seeds", "0,1"])
    with pytest.raises(SystemExit, match="model full was scored on the test split already"):
        seed_ensemble.main()
    assert (report / "ensemble-validation.json").read_text() == before and not (report / "ensemble.md").exists()


def test_a_mixed_ensemble_takes_the_seeds_of_each_variant_in_order(seed_ensemble, tmp_path):
    got = seed_ensemble.member_runs(tmp_path, "full+fs-100", ["0", "1"])
    assert [p.name for p in got] == ["full-seed0", "full-seed1", "fs-100-seed0", "fs-100-seed1"]
    assert [p.name for p in seed_ensemble.member_runs(tmp_path, "full", ["3"])] == ["full-seed3"]
    for bad in ("full+full", "full+", "+fs-100"):
        with pytest.raises(SystemExit, match="distinct names"):
            seed_ensemble.member_runs(tmp_path, bad, ["0"])
    # A+B and B+A are one model (equal weights): scored under either name, it is not scored again under the other
    _scored_baseline(tmp_path, f1=0.81)
    target = seed_ensemble.check_test_look(tmp_path, "full+fs-100", _doc(0.8201, cross=0.8201))
    assert target == tmp_path / "test-score-full+fs-100.json"
    target.write_text("{}")
    for same in ("fs-100+full", "full+fs-100"):
        with pytest.raises(SystemExit, match="scored already"):
            seed_ensemble.check_test_look(tmp_path, same, _doc(0.90, cross=0.90))
        assert seed_ensemble.scored_file(tmp_path, same) == target
    assert seed_ensemble.scored_file(tmp_path, "fs-100+full-tta") is None  # with test-time shifts: another model
    assert seed_ensemble.scored_file(tmp_path, "full") == tmp_path / "test-score.json"


GPU_REPORT = Path(__file__).resolve().parents[1] / "reports" / "recipe-ablation-gpu"


def test_the_gpu_folders_second_look_passed_its_gate(seed_ensemble, tmp_path):
    """The committed GPU files: w1-stem4-lr's test look (session 10) met the rule against the scored w1-stem4 ensemble."""
    for name in ("test-score-w1-stem4.json", "ensemble-w1-stem4-validation.json"):
        (tmp_path / name).write_bytes((GPU_REPORT / name).read_bytes())
    doc = json.loads((GPU_REPORT / "ensemble-w1-stem4-lr-validation.json").read_text())
    assert seed_ensemble.check_test_look(tmp_path, "w1-stem4-lr", doc, baseline="w1-stem4") == \
        tmp_path / "test-score-w1-stem4-lr.json"
    with pytest.raises(SystemExit, match="no scored baseline"):  # the default baseline (full) is not in that folder
        seed_ensemble.check_test_look(tmp_path, "w1-stem4-lr", doc)
    short = json.loads(json.dumps(doc))
    short["validation"]["macro_f1"] = seed_ensemble.validation_score(
        json.loads((GPU_REPORT / "ensemble-w1-stem4-validation.json").read_text())) + 0.009
    with pytest.raises(SystemExit, match="not at least"):
        seed_ensemble.check_test_look(tmp_path, "w1-stem4-lr", short, baseline="w1-stem4")
    # and it was scored once: the committed folder refuses another look
    with pytest.raises(SystemExit, match="scored already"):
        seed_ensemble.check_test_look(GPU_REPORT, "w1-stem4-lr", doc, baseline="w1-stem4")


@pytest.mark.parametrize("variant", ["w1-lr-b16", "w1-lr-half", "w1-r34-lr", "w1-lr-ema+w1-stem4-lr"])
def test_the_gpu_folders_later_ensembles_were_refused_their_look(seed_ensemble, tmp_path, variant):
    """Sessions 12-13's committed files: the ensembles of w1-lr-b16 (0.7950), w1-lr-half (0.7931, biases kept),
    w1-r34-lr (0.7654, biases kept) and the mixed w1-lr-ema+w1-stem4-lr (0.7932) are under the scored
    w1-stem4-lr's 0.7930 + 0.01 (all cut to 4 decimals)."""
    doc = json.loads((GPU_REPORT / f"ensemble-{variant}-validation.json").read_text())
    with pytest.raises(SystemExit, match="not at least 0.01 above"):
        seed_ensemble.check_test_look(GPU_REPORT, variant, doc, baseline="w1-stem4-lr")
    assert not (GPU_REPORT / f"test-score-{variant}.json").exists()
    # the same members with 0.01 more on validation would have had their look
    for name in ("test-score-w1-stem4-lr.json", "ensemble-w1-stem4-lr-validation.json"):
        (tmp_path / name).write_bytes((GPU_REPORT / name).read_bytes())
    better = json.loads(json.dumps(doc))  # the score the gate reads: cross-fitted where biases are kept (w1-lr-half)
    gain = seed_ensemble.validation_score(json.loads((GPU_REPORT / "ensemble-w1-stem4-lr-validation.json").read_text())) + 0.0101
    if better["validation"]["calibration"]["kept"]:
        better["validation"]["calibration"]["macro_f1_cross_fitted"] = gain
    else:
        better["validation"]["macro_f1"] = gain
    assert seed_ensemble.check_test_look(tmp_path, variant, better, baseline="w1-stem4-lr") == \
        tmp_path / f"test-score-{variant}.json"
