"""Ensemble files (issue 8): ``ecgtl ensemble`` saves several fine-tuned models as one, with per-class decision
biases fitted on the *ensemble's* validation probabilities (kept only if 2-fold cross-fitting says they help);
``evaluate`` / ``predict`` take the file alone; ``evaluate --records`` scores part of a folder. Tiny cards with
random weights on real CinC records: arithmetic and refusals, not skill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cinc_subset import tiny_card as _card
from cinc_subset import write_cinc_subset
from ecgtl.cli import main as cli
from ecgtl.data.splits import read_record_list, save_splits
from ecgtl.errors import ConfigError
from ecgtl.evaluate.calibration import biased_probabilities
from ecgtl.evaluate.commands import run_evaluate, run_export
from ecgtl.evaluate.ensemble import cross_fitted_bias_f1, read_ensemble, run_ensemble
from ecgtl.evaluate.inference import Ensemble
from test_ensemble import _read_predictions

N_RECORDS = 24


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    """24 real CinC records; three tiny runs trained (nominally) on the first 8 and validated on the other 16."""
    root = tmp_path_factory.mktemp("ensemble-file")
    data = root / "cinc"
    data.mkdir()
    names = write_cinc_subset(shared_data, data, N_RECORDS)
    splits = {"train": names[:8], "val": names[8:], "test": []}
    runs = []
    for i in range(3):
        run = _card(root / f"run{i}", seed=10 + i)
        save_splits(run / "splits.json", splits, seed=0)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": str(data)}))
        runs.append(run)
    return {"root": root, "data": data, "names": names, "runs": runs}


def test_record_lists_from_a_split_part_or_a_names_file(tmp_path):
    save_splits(tmp_path / "s.json", {"train": ["A2", "A1"], "val": ["A3"], "test": ["A4", "A5"]}, seed=0)
    assert read_record_list(f"{tmp_path / 's.json'}:test") == ["A4", "A5"]
    (tmp_path / "names.txt").write_text("# records to score\nA07\n\n  A03  # a note\n")
    assert read_record_list(tmp_path / "names.txt") == ["A07", "A03"]
    for spec, message in [(tmp_path / "s.json", r"s\.json: a split file needs its part: .*s\.json:test"),
                          (tmp_path / "missing.txt", r"missing\.txt: record list not found"),
                          (f"{tmp_path / 'missing.json'}:val", r"missing\.json: split file not found")]:
        with pytest.raises(ConfigError, match=message):
            read_record_list(spec)
    (tmp_path / "twice.txt").write_text("A1\nA2\nA1\n")
    with pytest.raises(ConfigError, match=r"twice\.txt: 1 record name\(s\) listed twice, e.g. \['A1'\]"):
        read_record_list(tmp_path / "twice.txt")
    (tmp_path / "test").write_text("A09\n")  # a names file called like a part, or ending in one, is a names file
    (tmp_path / "x:val").write_text("A10\n")
    assert read_record_list(tmp_path / "test") == ["A09"] and read_record_list(tmp_path / "x:val") == ["A10"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match=r"empty\.txt: lists no record name"):
        read_record_list(tmp_path / "empty.txt")


def test_cross_fitting_finds_a_bias_that_helps_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2, 3], [200, 40, 100, 20])
    logits = rng.normal(0, 1, (len(y), 4))
    logits[np.arange(len(y)), y] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    from ecgtl.evaluate.metrics import macro_f1

    plain = macro_f1(y, probs.argmax(1), 4)
    skewed = biased_probabilities(probs, [0.0, -2.0, 0.0, -2.0])  # the rare classes pushed down: a bias undoes it
    assert cross_fitted_bias_f1(skewed, y)[0] > macro_f1(y, skewed.argmax(1), 4) + 0.03
    assert cross_fitted_bias_f1(probs, y)[0] > plain  # argmax is not macro-F1's best decision for rare classes either
    sure = np.full((len(y), 4), 0.01)
    sure[np.arange(len(y)), y] = 0.97  # every decision right already: the fitted biases stay 0, nothing is lost
    assert cross_fitted_bias_f1(sure, y) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="too few"):
        cross_fitted_bias_f1(probs[:3], y[:3])


def test_ensemble_file_is_the_biased_mean_of_its_members(setup, tmp_path, capsys):
    runs, data = setup["runs"], setup["data"]
    out = tmp_path / "ens"
    assert cli(["ensemble", "--checkpoint", *map(str, runs), "--out", str(out), "--calibrate", "--no-progress"]) == 0
    doc = json.loads((out / "ensemble.json").read_text())
    val = doc["validation"]
    assert val["records"] == N_RECORDS - 8 and val["records_from"] == "the members' val split"
    assert len(val["member_macro_f1"]) == 3 and 0 <= val["macro_f1"] <= 1
    cal = val["calibration"]
    assert cal["kept"] == (cal["macro_f1_cross_fitted"] > val["macro_f1"])
    assert doc["class_bias"] == (cal["fitted_bias"] if cal["kept"] else None)
    assert [(out / m["card"]).resolve() for m in doc["members"]] == [(r / "model.json").resolve() for r in runs]
    assert not any(m["card"].startswith("/") for m in doc["members"])  # relative: the folders move together

    # the file forced to carry biases: evaluate's probabilities are softmax(log(mean of members) + bias)
    bias = [0.0, 0.7, -0.4, 0.3]
    doc["class_bias"] = bias
    (out / "ensemble.json").write_text(json.dumps(doc))
    assert read_ensemble(out).class_bias == bias
    ens_report = run_evaluate(str(out), str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "e1"))
    mean_report = run_evaluate([str(r) for r in runs], str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "e2"))
    got, mean = _read_predictions(tmp_path / "e1" / "predictions.csv"), _read_predictions(tmp_path / "e2" / "predictions.csv")
    assert got.keys() == mean.keys() and len(got) == N_RECORDS
    for name in got:
        np.testing.assert_allclose(got[name], biased_probabilities(mean[name][None], bias)[0], atol=2e-6)
    assert ens_report["ensemble_file"].endswith("ensemble.json") and ens_report["ensemble_class_bias"] == bias
    assert ens_report["records_seen_in_training_or_validation"] == N_RECORDS and mean_report.get("ensemble_file") is None
    assert read_ensemble(out).validation_records == sorted(setup["names"][8:])  # counted as seen when scored
    capsys.readouterr()
    run_evaluate(str(out), str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "e3"))
    assert "are the validation records of" in capsys.readouterr().out

    # predict takes it too, with the same probabilities
    record = data / f"{setup['names'][0]}.hea"
    capsys.readouterr()
    assert cli(["predict", str(record), "--checkpoint", str(out / "ensemble.json"), "--json", "--workers", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    probs = printed[0]["probabilities"] if isinstance(printed, list) else printed["probabilities"]
    np.testing.assert_allclose([probs[c] for c in ("N", "A", "O", "~")], got[setup["names"][0]], atol=2e-6)


def test_evaluate_records_scores_only_those_in_their_own_folder(setup, tmp_path):
    run, data, names = setup["runs"][0], setup["data"], setup["names"]
    save_splits(tmp_path / "s.json", {"train": names[:20], "val": [], "test": names[20:]}, seed=0)
    part = run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0, records=f"{tmp_path / 's.json'}:test")
    assert part["n"] == 4 and part["records"].endswith("s.json:test")
    assert set(_read_predictions(run / next(p.name for p in run.glob("evaluate-*")) / "predictions.csv")) == set(names[20:])
    whole = run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0)  # its own default folder, not the other's
    assert whole["n"] == N_RECORDS and len(list(run.glob("evaluate-*"))) == 2
    (tmp_path / "absent.txt").write_text(f"{names[0]}\nNOT_A_RECORD\n")
    with pytest.raises(ConfigError, match=r"--records .*absent\.txt: 1 of its 2 records are not in .*RECORDS, e.g. \['NOT_A_RECORD'\]"):
        run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0, records=str(tmp_path / "absent.txt"))
    run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "o"),
                 records=f"{tmp_path / 's.json'}:test")
    with pytest.raises(ConfigError, match="already holds the report of another evaluation"):  # same --out, other records
        run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "o"))
    # the same --records text naming other records (the split file made again): another evaluation, another folder
    save_splits(tmp_path / "s.json", {"train": names[:18], "val": [], "test": names[18:]}, seed=0)
    again = run_evaluate(str(run), str(data), n_boot=0, progress=False, workers=0, records=f"{tmp_path / 's.json'}:test")
    assert again["n"] == 6 and len(list(run.glob("evaluate-*"))) == 3


def test_what_an_ensemble_file_refuses(setup, tmp_path):
    runs, data, names = setup["runs"], setup["data"], setup["names"]
    out = tmp_path / "ens"
    run_ensemble([str(r) for r in runs[:2]], out, progress=False, workers=0)
    assert json.loads((out / "ensemble.json").read_text())["class_bias"] is None  # not calibrated: no biases
    with pytest.raises(ConfigError, match="an ensemble file is given alone"):
        Ensemble.load([str(out), str(runs[2])])
    with pytest.raises(ConfigError, match="cannot be a member of another ensemble"):
        run_ensemble([str(out), str(runs[2])], tmp_path / "nested", progress=False, workers=0)
    with pytest.raises(ConfigError, match=r"an ensemble \(ensemble\.json\), not one model"):
        run_export(str(out), str(tmp_path / "m.onnx"))

    # calibration records a member trained on, or members validated on other records
    (tmp_path / "some.txt").write_text("\n".join([names[0], names[1], names[10]]) + "\n")
    with pytest.raises(ConfigError, match=r"2 of the 3 calibration records were in a member's training split"):
        run_ensemble([str(r) for r in runs[:2]], tmp_path / "e2", records=str(tmp_path / "some.txt"), progress=False, workers=0)
    tested = _card(tmp_path / "tested", seed=21)  # calibrating on a member's test records is refused too
    save_splits(tested / "splits.json", {"train": names[:8], "val": names[8:20], "test": names[20:]}, seed=0)
    (tmp_path / "late.txt").write_text("\n".join(names[18:]) + "\n")
    with pytest.raises(ConfigError, match=r"4 of the 6 calibration records were in a member's test split"):
        run_ensemble([str(runs[0]), str(tested)], tmp_path / "e4", data=str(data), records=str(tmp_path / "late.txt"),
                     progress=False, workers=0)
    other = _card(tmp_path / "other", seed=20)
    save_splits(other / "splits.json", {"train": names[:10], "val": names[10:], "test": []}, seed=0)
    with pytest.raises(ConfigError, match=r"other/splits\.json: this member was validated on other records than"):
        run_ensemble([str(runs[0]), str(other)], tmp_path / "e3", data=str(data), progress=False, workers=0)

    # a member retrained since: its weights differ from the file's record, so the ensemble is refused
    doc = json.loads((out / "ensemble.json").read_text())
    doc["members"][1]["weights_sha256"] = "0" * 64
    (out / "ensemble.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"ensemble\.json: member #1 \(.*run1/model\.json\) has other weights than when "
                                          r"the ensemble was made"):
        Ensemble.load(str(out))
    card = json.loads((runs[1] / "model.json").read_text())  # a member's card edited (not retrained)
    doc["members"][1]["weights_sha256"] = card["weights_sha256"]
    (out / "ensemble.json").write_text(json.dumps(dict(doc, members=[doc["members"][0], dict(doc["members"][1], card_sha256="f" * 64)])))
    with pytest.raises(ConfigError, match=r"member #1's model card .*run1/model\.json changed since the ensemble was made"):
        read_ensemble(out)
    for bad, message in [({"format": "x"}, "not an ecgtl ensemble file"), (dict(doc, version=9), "unsupported ensemble file version 9"),
                         (dict(doc, members=[]), "lists no member"),
                         (dict(json.loads(json.dumps(doc)), class_bias=[0, 1]), "class_bias must be null or 4 finite numbers")]:
        if "members" in bad and bad["members"]:
            bad["members"][1]["weights_sha256"] = json.loads((runs[1] / "model.json").read_text())["weights_sha256"]
        (out / "ensemble.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            read_ensemble(out / "ensemble.json")


def test_members_of_a_final_fit_make_an_unvalidated_ensemble(setup, tmp_path):
    """Members trained without validation records (val_fraction=0): the file is written with no validation and no
    biases; --calibrate is refused (no records to fit on), and so are calibration records a member trained on."""
    names = setup["names"]
    runs = []
    for i in range(2):
        run = _card(tmp_path / f"final{i}", seed=20 + i)
        save_splits(run / "splits.json", {"train": names[:16], "val": [], "test": names[16:]}, seed=0)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": str(setup["data"])}))
        runs.append(run)
    with pytest.raises(ConfigError, match="list no validation records .* --calibrate needs labelled records"):
        run_ensemble([str(r) for r in runs], tmp_path / "ens-cal", calibrate=True, progress=False)
    assert not (tmp_path / "ens-cal").exists()
    with pytest.raises(ConfigError, match="in a member's training split"):
        run_ensemble([str(r) for r in runs], tmp_path / "ens-cal", records=f"{runs[0] / 'splits.json'}:train",
                     calibrate=True, progress=False)
    with pytest.raises(ConfigError, match=r"final0/splits\.json: this member has no validation records \(a final fit"):
        run_ensemble([str(setup["runs"][0]), str(runs[0])], tmp_path / "ens-mixed", progress=False)
    doc = run_ensemble([str(r) for r in runs], tmp_path / "ens", progress=False)
    assert doc["validation"] is None and doc["class_bias"] is None and len(doc["members"]) == 2
    assert not (tmp_path / "ens" / "predictions_val.csv").exists()
    read = read_ensemble(tmp_path / "ens")
    assert read.validation_records == [] and read.class_bias is None
    report = run_evaluate([str(tmp_path / "ens")], str(setup["data"]), out=str(tmp_path / "ev"), n_boot=0,
                          records=f"{runs[0] / 'splits.json'}:test", progress=False, workers=0)
    plain = run_evaluate([str(r) for r in runs], str(setup["data"]), out=str(tmp_path / "ev-plain"), n_boot=0,
                         records=f"{runs[0] / 'splits.json'}:test", progress=False, workers=0)
    assert report["n"] == 8 and report["macro_f1"] == plain["macro_f1"]
    got, want = _read_predictions(tmp_path / "ev" / "predictions.csv"), _read_predictions(tmp_path / "ev-plain" / "predictions.csv")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)  # the members' mean, no bias


def test_test_time_shifts_live_in_the_ensemble_file(setup, tmp_path, capsys):
    """``ecgtl ensemble --test-time-shifts``: the file keeps the shifts, validation gives the score without them
    too, and ``evaluate`` of the file averages every window at every shift (as the members loaded with them)."""
    runs, data = setup["runs"], setup["data"]
    out = tmp_path / "ens"
    assert cli(["ensemble", "--checkpoint", *map(str, runs[:2]), "--out", str(out), "--test-time-shifts", "0,8,16",
                "--no-progress"]) == 0
    assert "test-time shifts 0,8,16 samples" in capsys.readouterr().out
    doc = json.loads((out / "ensemble.json").read_text())
    assert doc["test_time_shifts"] == [0, 8, 16] and read_ensemble(out).test_time_shifts == [0, 8, 16]
    plain = run_ensemble([str(r) for r in runs[:2]], tmp_path / "plain", progress=False, workers=0)
    val = doc["validation"]
    assert val["test_time_shifts"] == [0, 8, 16] and val["macro_f1_without_shifts"] == plain["validation"]["macro_f1"]
    assert plain["test_time_shifts"] is None and "macro_f1_without_shifts" not in plain["validation"]

    run_evaluate(str(out), str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "e-file"))
    run_evaluate([str(r) for r in runs[:2]], str(data), n_boot=0, progress=False, workers=0, out=str(tmp_path / "e-plain"))
    got, unshifted = _read_predictions(tmp_path / "e-file" / "predictions.csv"), _read_predictions(tmp_path / "e-plain" / "predictions.csv")
    from ecgtl.data.cinc2017 import Cinc2017

    cinc = Cinc2017(data)
    recs = [cinc.read(n) for n in sorted(got)]
    want = Ensemble.load([str(r) for r in runs[:2]], shifts=[0, 8, 16]).predict_proba([r.signal for r in recs], [r.fs for r in recs])
    np.testing.assert_allclose(np.array([got[r.name] for r in recs]), want, atol=2e-6)
    assert max(np.abs(got[k] - unshifted[k]).max() for k in got) > 1e-4  # the shifts change the probabilities

    with pytest.raises(ConfigError, match="carries its own test_time_shifts"):
        Ensemble.load(str(out), shifts=[0, 4])
    with pytest.raises(ConfigError, match=r"distinct sample offsets in \[0, 1024\)"):
        run_ensemble([str(r) for r in runs[:2]], tmp_path / "bad", shifts=[0, 1024], progress=False, workers=0)
    assert not (tmp_path / "bad").exists()
    (out / "ensemble.json").write_text(json.dumps(dict(doc, test_time_shifts=[0, 0])))  # read, then refused naming the file
    with pytest.raises(ConfigError, match=r"ens/ensemble\.json: member .*distinct sample offsets"):
        Ensemble.load(str(out))
    for bad in ([], [-4], [0, 2.5], "0,8", [True]):
        (out / "ensemble.json").write_text(json.dumps(dict(doc, test_time_shifts=bad)))
        with pytest.raises(ConfigError, match="test_time_shifts must be null or a list of sample offsets"):
            read_ensemble(out)
    with pytest.raises(SystemExit):
        cli(["ensemble", "--checkpoint", str(runs[0]), "--out", str(tmp_path / "x"), "--test-time-shifts", "0,a"])
    assert "expected comma-separated whole numbers" in capsys.readouterr().err
