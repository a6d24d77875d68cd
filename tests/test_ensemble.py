"""Ensembles (issue 8): ``ecgtl evaluate`` and ``ecgtl predict`` take several checkpoints (``--checkpoint A B`` or
``--checkpoint A --checkpoint B``) and average the class probabilities of the models, each with its own preprocessing
and class_bias; ``ecgtl export`` stays one model. Tiny cards with random weights: arithmetic, not skill."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cinc_subset import ecg_like_signals, write_cinc_subset
from cinc_subset import tiny_card as _card
from ecgtl.cli import main as cli
from ecgtl.constants import CINC_CLASSES
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.commands import load_recording, run_evaluate, run_export
from ecgtl.evaluate.inference import Classifier, Ensemble

N_RECORDS = 6


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Runs of several kinds: ``a`` (100 Hz windows), ``b`` (125 Hz, the paper's input, other normalisation, a
    class_bias), ``c`` (as ``a``'s preprocessing, other weights), ``swapped`` (``a`` with N and A swapped)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "a": _card(root / "a", seed=0),
        "b": _card(root / "b", fs=125.0, input_mode="paper", seed=1, normalization={"mean": 0.0, "std": 0.3},
                   class_bias=[0.0, 0.4, -0.3, 0.2]),
        "c": _card(root / "c", seed=2),
        "swapped": _card(root / "swapped", seed=3, classes=("A", "N", "O", "~")),
    }


@pytest.fixture(scope="module")
def folder(shared_data, tmp_path_factory):
    """Six real CinC 2017 records in the CinC layout, with their labels."""
    out = tmp_path_factory.mktemp("cinc") / "test"
    out.mkdir()
    write_cinc_subset(shared_data, out, N_RECORDS)
    return out


def _signals(n: int = 5, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    return ecg_like_signals(n, seed)


def _read_predictions(path) -> dict[str, np.ndarray]:
    with open(path) as f:
        return {r["record"]: np.array([float(r[f"p_{c}"]) for c in CINC_CLASSES]) for r in csv.DictReader(f)}


# ----------------------------------------------------------------------------- A. the ensemble's arithmetic
@pytest.mark.parametrize("name", ["a", "b"])
def test_one_member_ensemble_is_the_classifier_bit_for_bit(cards, name):
    signals, rates = _signals()
    single = Classifier(cards[name], device="cpu").predict_proba(signals, rates)
    ens = Ensemble.load([cards[name]], device="cpu")
    got = ens.predict_proba(signals, rates)
    assert got.dtype == single.dtype
    np.testing.assert_array_equal(got, single)
    assert ens.last_timing.records == len(signals) and ens.source == str(cards[name].resolve() / "model.json")


def test_two_members_give_the_mean_of_their_probabilities(cards):
    """Members at other rates, inputs, normalisations and class_bias: each keeps its own; the mean is of their outputs."""
    signals, rates = _signals()
    a = Classifier(cards["a"], device="cpu").predict_proba(signals, rates)
    b = Classifier(cards["b"], device="cpu").predict_proba(signals, rates)  # its class_bias applied
    c = Classifier(cards["c"], device="cpu").predict_proba(signals, rates)
    assert not np.allclose(a, b, atol=1e-3)  # so that the mean is a real test
    ab = Ensemble.load([cards["a"], cards["b"]], device="cpu")
    assert len(ab.preparations) == 2 and ab.member_preparation == [0, 1]  # 100 Hz and 125 Hz: prepared twice
    got = ab.predict_proba(signals, rates)
    np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, atol=1e-12, rtol=0)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)
    assert ab.last_timing.inputs > len(signals) and ab.last_timing.records == len(signals)
    ac = Ensemble.load([cards["a"], cards["c"]], device="cpu")
    assert len(ac.preparations) == 1 and ac.member_preparation == [0, 0]  # same rate and normalisation: prepared once
    np.testing.assert_allclose(ac.predict_proba(signals, rates), (a.astype(np.float64) + c) / 2, atol=1e-12, rtol=0)
    abc = Ensemble.load([cards["a"], cards["b"], cards["c"]], device="cpu")
    np.testing.assert_allclose(abc.predict_proba(signals, rates), (a.astype(np.float64) + b + c) / 3, atol=1e-12, rtol=0)


def test_members_with_other_classes_or_given_twice_are_refused(cards):
    a, swapped = cards["a"] / "model.json", cards["swapped"] / "model.json"
    with pytest.raises(ConfigError) as info:
        Ensemble.load([cards["a"], cards["swapped"]], device="cpu")
    message = str(info.value)
    assert str(a.resolve()) in message and str(swapped.resolve()) in message and "same classes in the same order" in message
    with pytest.raises(ConfigError, match="give each checkpoint once"):
        Ensemble.load([cards["a"], cards["a"] / "model.json"], device="cpu")
    with pytest.raises(ConfigError, match="at least one model"):
        Ensemble([])


def test_non_finite_output_names_the_member_that_gave_it(cards):
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 4), float("nan"))

    ens = Ensemble.load([cards["a"], cards["c"]], device="cpu")
    ens.members[1].model = NaNModel()
    signals, rates = _signals(2)
    with pytest.raises(DataError, match=rf"^{cards['c'].resolve() / 'model.json'}: the model gave non-finite"):
        ens.predict_proba(signals, rates)
    probs = ens.predict_proba(signals, rates, check=False)  # then checked record by record, as predict does
    with pytest.raises(DataError, match=rf"^{cards['c'].resolve() / 'model.json'}: "):
        ens.check_probabilities(probs[1:2], rows=[1])


# ----------------------------------------------------------------------------- B. the commands
def test_evaluate_with_two_checkpoints_reports_both_in_its_own_folder(cards, folder, tmp_path, capsys):
    a_card, b_card = cards["a"] / "model.json", cards["b"] / "model.json"
    single = run_evaluate(str(cards["a"]), str(folder), n_boot=0, progress=False, device="cpu", workers=0)
    run_evaluate(str(cards["b"]), str(folder), n_boot=0, progress=False, device="cpu", workers=0)
    capsys.readouterr()
    both = run_evaluate([str(cards["a"]), str(cards["b"])], str(folder), n_boot=0, progress=False, device="cpu", workers=0)
    printed = capsys.readouterr().out
    assert "ensemble of 2 models" in printed
    singles = sorted(p for p in cards["a"].glob("evaluate-test-*"))
    ensembles = sorted(p for p in cards["a"].glob("evaluate-ensemble-*"))
    assert len(singles) == 1 and len(ensembles) == 1  # the ensemble's report never lands in the single model's folder
    assert ensembles[0].name.endswith(singles[0].name.removeprefix("evaluate-"))  # ...test-<hash of the data folder>
    saved = json.loads((ensembles[0] / "report.json").read_text())
    assert saved == json.loads(json.dumps(both))
    assert saved["checkpoints"] == [str(a_card), str(b_card)] and "checkpoint" not in saved and "ensemble" in saved
    for member, card in zip(saved["members"], (a_card, b_card)):
        meta = json.loads(card.read_text())
        assert member["card"] == str(card) and member["weights_sha256"] == meta["weights_sha256"]
        assert member["card_sha256"] == meta["card_sha256"]
        assert member["card"] in printed and member["weights_sha256"] in printed
    assert [m["fs"] for m in saved["members"]] == [100.0, 125.0] and saved["members"][1]["class_bias"] is True
    assert single["checkpoint"] == str(a_card) and single["checkpoints"] == [str(a_card)]  # the single form, as before
    # the probabilities: the mean of the two models' (predictions.csv has 6 decimals)
    pa = _read_predictions(singles[0] / "predictions.csv")
    pb = _read_predictions(next(cards["b"].glob("evaluate-test-*")) / "predictions.csv")
    pe = _read_predictions(ensembles[0] / "predictions.csv")
    assert set(pe) == set(pa) and len(pe) == N_RECORDS
    for n in pe:
        np.testing.assert_allclose(pe[n], (pa[n] + pb[n]) / 2, atol=2e-6, rtol=0)
    # the same ensemble again, by the command line (repeated flags): its report is refreshed in place
    assert cli(["evaluate", "--checkpoint", str(cards["a"]), "--checkpoint", str(cards["b"]), "--data", str(folder),
                "--bootstrap", "0", "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    assert sorted(cards["a"].glob("evaluate-*")) == sorted(singles + ensembles)
    # another ensemble (other members) gets its own folder
    assert cli(["evaluate", "--checkpoint", str(cards["a"]), str(cards["c"]), "--data", str(folder),
                "--bootstrap", "0", "--device", "cpu", "--workers", "0", "--no-progress"]) == 0
    assert len(list(cards["a"].glob("evaluate-ensemble-*"))) == 2
    # an --out folder of a single model's evaluation is not overwritten by an ensemble's, nor the other way round
    with pytest.raises(ConfigError, match=rf"already holds the report of another evaluation of .* with {a_card};"):
        run_evaluate([str(cards["a"]), str(cards["b"])], str(folder), out=str(singles[0]), n_boot=0, progress=False,
                     device="cpu", workers=0)
    with pytest.raises(ConfigError, match=rf"already holds the report of another evaluation of .* with {a_card}, {b_card};"):
        run_evaluate(str(cards["a"]), str(folder), out=str(ensembles[0]), n_boot=0, progress=False, device="cpu", workers=0)
    assert json.loads((ensembles[0] / "report.json").read_text())["checkpoints"] == [str(a_card), str(b_card)]


def test_predict_with_two_checkpoints_gives_the_averaged_probabilities(cards, folder, tmp_path, capsys):
    files = [str(folder / f"{n}.mat") for n in (folder / "RECORDS").read_text().split()[:3]]
    np.save(tmp_path / "short.npy", (0.2 * np.random.default_rng(0).standard_normal(300)).astype(np.float32))
    files.insert(1, str(tmp_path / "short.npy"))
    common = ["--json", "--fs", "300", "--device", "cpu", "--workers", "0"]
    capsys.readouterr()
    assert cli(["predict", *files, "--checkpoint", str(cards["a"]), str(cards["b"]), *common]) == 1  # the short file fails
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and [r["file"] for r in results] == files  # one entry per file, in order
    assert "recording too short" in results[1]["error"]
    a, b = Classifier(cards["a"], device="cpu"), Classifier(cards["b"], device="cpu")
    for r in (r for r in results if "label" in r):
        assert set(r) == {"file", "label", "probabilities", "fs", "seconds"}  # the format of one model's output
        sig, fs = load_recording(r["file"])
        x = [sig.astype(np.float32)]
        expected = (a.predict_proba(x, fs)[0].astype(np.float64) + b.predict_proba(x, fs)[0]) / 2
        got = np.array([r["probabilities"][c] for c in CINC_CLASSES])
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert r["label"] == CINC_CLASSES[int(expected.argmax())]
    # the other spellings: repeated flags, and the checkpoints before the files
    assert cli(["predict", *files, "--checkpoint", str(cards["a"]), "--checkpoint", str(cards["b"]), *common]) == 1
    assert json.loads(capsys.readouterr().out) == results
    assert cli(["predict", *common, "--checkpoint", str(cards["a"]), str(cards["b"]), *files]) == 1
    assert json.loads(capsys.readouterr().out) == results
    # one checkpoint before the files: as before
    assert cli(["predict", "--checkpoint", str(cards["a"]), files[0], "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")
    # mismatched classes: every file gets the error naming both cards, and the command fails
    code = cli(["predict", *files, "--checkpoint", str(cards["a"]), str(cards["swapped"]), *common])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and len(out) == len(files)
    assert all(str(cards["swapped"].resolve()) in r["error"] and str(cards["a"].resolve()) in r["error"] for r in out)


def test_export_refuses_several_checkpoints(cards, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    with pytest.raises(ConfigError, match="export writes one model, but 2 checkpoints were given"):
        run_export([str(cards["a"]), str(cards["c"])], str(out))
    capsys.readouterr()
    assert cli(["export", "--checkpoint", str(cards["a"]), str(cards["c"]), "--out", str(out)]) == 2
    assert "export each member on its own" in capsys.readouterr().err
    assert cli(["export", "--checkpoint", str(cards["a"]), "--checkpoint", str(cards["c"]), "--out", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())


def test_evaluate_counts_the_records_any_member_was_trained_or_selected_on(folder, tmp_path, capsys):
    from ecgtl.data.splits import save_splits

    names = (folder / "RECORDS").read_text().split()
    p, q = _card(tmp_path / "fold0", seed=4), _card(tmp_path / "fold1", seed=5)
    save_splits(p / "splits.json", {"train": names[:2], "val": names[2:3], "test": names[3:]})
    save_splits(q / "splits.json", {"train": names[1:2] + names[3:4], "val": [], "test": names[4:]})
    capsys.readouterr()
    report = run_evaluate([str(p), str(q)], str(folder), out=str(tmp_path / "eval"), n_boot=0, progress=False, device="cpu",
                          workers=0)
    printed = capsys.readouterr().out
    assert report["records_seen_in_training_or_validation"] == 4  # names[0..3]: the union of both members'
    assert [m["records_seen_in_training_or_validation"] for m in report["members"]] == [3, 2]
    assert f"({p / 'splits.json'})" in printed and f"({q / 'splits.json'})" in printed and "the score is optimistic" in printed
