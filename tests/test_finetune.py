"""Fine-tuning, evaluate, predict and export end to end on the real CinC 2017 data (tiny model, few steps)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ecgtl.cli import main as cli
from ecgtl.config import FinetuneConfig, load_config
from ecgtl.constants import CINC_CLASSES
from ecgtl.errors import ConfigError
from ecgtl.evaluate.commands import load_recording, run_evaluate, run_export
from ecgtl.evaluate.inference import Classifier
from ecgtl.models import create_model
from ecgtl.models.card import write_card
from ecgtl.train.finetune import run_finetune

TINY = ["fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125", "epochs=2", "label_fraction=0.1",
        "batch_size=32", "bootstrap=50", "optim.warmup_epochs=0"]


@pytest.fixture(scope="module")
def tiny_run(cinc_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    cfg = load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={out}"])
    results = run_finetune(cfg, progress=False)
    return out, results


def _read_predictions(path):
    with open(path) as fh:
        return {row["record"]: row for row in csv.DictReader(fh)}


def test_finetune_writes_a_complete_run(tiny_run):
    out, results = tiny_run
    for name in ("config.yaml", "splits.json", "metrics.csv", "curves.png", "best.safetensors", "model.json",
                 "predictions_val.csv", "predictions_test.csv", "report_val.json", "report_test.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["round"]) for r in rows] == [1, 2] and "val_macro_f1" in rows[0]
    card = json.loads((out / "model.json").read_text())
    # the card names the model by its registered name ("resnet18v2" may be an alias of it)
    assert card["fs"] == 100 and card["num_classes"] == 4
    assert card["architecture"] == create_model("resnet18v2", num_classes=4, width=0.125).model_name
    assert set(card["normalization"]) >= {"mean", "std"}
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert len(splits["test"]) == 1450 and len(splits["val"]) == 362
    assert results["test"]["n"] == 1450
    assert not set(splits["test"]) & set(splits["train"])


def _fingerprint(path):
    """What a rewrite would change: modification time and content."""
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _checkpoint_state(out):
    return json.loads(torch.load(out / "checkpoint.pt", weights_only=True)["state"])


def test_rerun_resumes_and_keeps_the_splits(tiny_run, cinc_folder, capsys):
    out, _ = tiny_run
    splits = (out / "splits.json").read_text()
    metrics = (out / "metrics.csv").read_text()
    weights = {name: _fingerprint(out / name) for name in ("best.safetensors", "checkpoint.pt")}
    steps = _checkpoint_state(out)["step"]
    capsys.readouterr()
    cfg = load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={out}", "bootstrap=0"])
    run_finetune(cfg, progress=False)  # both rounds done: resumed, nothing retrained, same split file
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoint.pt'} after round 2 (step {steps})" in printed
    assert "round 1/2:" not in printed and "round 2/2:" not in printed  # the engine logs each round it trains
    assert {name: _fingerprint(out / name) for name in weights} == weights  # weights neither rewritten nor changed
    assert (out / "metrics.csv").read_text() == metrics
    assert (out / "splits.json").read_text() == splits


def test_a_run_stopped_after_one_epoch_resumes_with_the_second(cinc_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = TINY + [f"data={cinc_folder}", f"out={out}", "bootstrap=0"]
    # a genuine round-1 checkpoint: the same run with epochs=1 (epochs may change on resume, see RESUMABLE_CHANGES)
    run_finetune(load_config(FinetuneConfig, "cpu", "finetune", args + ["epochs=1"]), progress=False)
    first = list(csv.DictReader(open(out / "metrics.csv")))
    state = _checkpoint_state(out)
    assert [r["round"] for r in first] == ["1"] and state["round"] == 1 and state["step"] > 0
    splits = (out / "splits.json").read_text()
    capsys.readouterr()
    run_finetune(load_config(FinetuneConfig, "cpu", "finetune", args), progress=False)  # epochs=2
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoint.pt'} after round 1 (step {state['step']})" in printed
    assert "round 1/2:" not in printed and "round 2/2:" in printed  # exactly one more round trained
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert rows[0] == first[0]  # round 1's row as logged before, its timing included: not retrained
    after = _checkpoint_state(out)
    assert after["round"] == 2 and after["step"] == 2 * state["step"]
    assert (out / "splits.json").read_text() == splits


def test_evaluate_on_a_folder_of_test_records_reproduces_finetune(tiny_run, cinc_folder, tmp_path):
    out, _ = tiny_run
    test_names = json.loads((out / "splits.json").read_text())["splits"]["test"][:60]
    folder = tmp_path / "subset"
    folder.mkdir()
    for n in test_names:
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (n + ext), folder / (n + ext))
    (folder / "RECORDS").write_text("\n".join(test_names) + "\n")
    labels = {r.split(",")[0]: r.split(",")[1] for r in (cinc_folder.parent / "REFERENCE-v3.csv").read_text().split()}
    (folder / "REFERENCE.csv").write_text("".join(f"{n},{labels[n]}\n" for n in test_names))
    report = run_evaluate(str(out), str(folder), labels="v3", out=str(tmp_path / "eval"), n_boot=0, progress=False)
    ours = _read_predictions(tmp_path / "eval" / "predictions.csv")
    theirs = _read_predictions(out / "predictions_test.csv")
    for n in test_names:
        assert ours[n]["prediction"] == theirs[n]["prediction"], n
        np.testing.assert_allclose([float(ours[n][f"p_{c}"]) for c in CINC_CLASSES],
                                   [float(theirs[n][f"p_{c}"]) for c in CINC_CLASSES], atol=1e-4)
    from ecgtl.evaluate.metrics import macro_f1

    y = [CINC_CLASSES.index(labels[n]) for n in test_names]
    p = [CINC_CLASSES.index(theirs[n]["prediction"]) for n in test_names]
    assert report["macro_f1"] == pytest.approx(macro_f1(y, p))


def test_predict_formats_and_rejections(tiny_run, cinc_folder, mirror, tmp_path, capsys):
    out, _ = tiny_run
    clf = Classifier(out)
    sig, fs = load_recording(str(cinc_folder / "A00001.mat"))
    assert fs == 300 and sig.shape == (9000,)
    np.save(tmp_path / "a.npy", sig)
    np.savetxt(tmp_path / "a.csv", sig[:, None], delimiter=",", header="ecg_mV", comments="")
    mat_probs = clf.predict_proba([sig], 300)[0]
    for f in ("a.npy", "a.csv"):
        s, r = load_recording(str(tmp_path / f), fs=300)
        np.testing.assert_allclose(clf.predict_proba([s], r)[0], mat_probs, atol=1e-5)
    # a multi-lead WFDB record at 360 Hz: the lead is named, never guessed (without --lead it is refused)
    assert cli(["predict", str(mirror / "mitdb" / "1.0.0" / "100.hea"), "--lead", "MLII", "--checkpoint", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["label"] in CINC_CLASSES and result["fs"] == 360
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # rejections, each naming the file and the problem
    np.save(tmp_path / "short.npy", sig[:600])
    bad = sig.copy()
    bad[100] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4000)))
    code = cli(["predict", str(tmp_path / "short.npy"), str(tmp_path / "nan.npy"), str(tmp_path / "cube.npy"),
                str(cinc_folder / "A00001.mat"), "--fs", "300", "--checkpoint", str(out)])
    text = capsys.readouterr().out
    assert code == 1
    assert "short.npy: recording too short: 2.00 s" in text
    assert "nan.npy: signal has 1 non-finite" in text
    assert "cube.npy: expected a single-lead recording" in text
    assert "A00001.mat: " in text and "error" not in text.split("A00001.mat: ")[1].splitlines()[0]
    with pytest.raises(Exception, match="pass --fs"):
        load_recording(str(tmp_path / "a.npy"))


def test_export_onnx_matches_pytorch_on_real_records(tiny_run, cinc_folder, tmp_path):
    out, _ = tiny_run
    result = run_export(str(out), str(tmp_path / "model.onnx"), verify_data=str(cinc_folder), verify_records=8)
    assert result["max_abs_logit_difference"] < 1e-3 and result["same_predictions"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["fs_hz"]) == 100 and meta["classes"] == "N,A,O,~"
    # dynamic length: a different number of samples runs too
    assert session.run(None, {"ecg": np.zeros((3, 1, 3000), np.float32)})[0].shape == (3, 4)


def test_finetune_from_a_pretrained_backbone_card(cinc_folder, tmp_path):
    backbone = create_model("resnet18v2", num_classes=5, width=0.125)  # e.g. a beat-task model
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp_path / "backbone.safetensors"))
    write_card(tmp_path / "backbone.json", tmp_path / "backbone.safetensors", architecture="resnet18v2", width=0.125,
               num_classes=5, fs=100, normalization={"mean": 0.0, "std": 0.2}, task="beat")
    cfg = load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={tmp_path / 'run'}",
                                                                   f"init={tmp_path / 'backbone.json'}", "epochs=1",
                                                                   "freeze_epochs=1", "bootstrap=0"])
    run_finetune(cfg, progress=False)
    tuned = torch.nn.Module()
    from safetensors.torch import load_file

    tuned_state = load_file(str(tmp_path / "run" / "best.safetensors"))
    # the backbone was frozen in epoch 1: conv weights are the pre-trained ones, the head is new
    for k, v in backbone.state_dict().items():
        if k.startswith("head."):
            continue
        if "running" in k or "num_batches" in k:
            continue  # BN statistics still update in train mode
        assert torch.equal(tuned_state[k], v), k
    assert tuned_state["head.weight"].shape[0] == 4
    del tuned


def test_kfold_option_runs_one_fold(cinc_folder, tmp_path):
    cfg = load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={tmp_path}", "folds=5", "fold=2",
                                                                   "epochs=1", "label_fraction=0.05", "bootstrap=0"])
    run_finetune(cfg, progress=False)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert abs(len(splits["splits"]["test"]) - 7248 / 5) <= 1 and splits["meta"]["fold"] == 2
    with pytest.raises(Exception, match="fold must be in 0..4"):
        run_finetune(load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={tmp_path / 'x'}",
                                                                          "folds=5", "fold=5"]), progress=False)


def test_resuming_with_other_settings_is_refused(tiny_run, cinc_folder):
    out, _ = tiny_run
    cfg = load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={out}", "model.width=0.25"])
    with pytest.raises(Exception, match="config.yaml: this run folder holds a run with other settings \\(model\\)"):
        run_finetune(cfg, progress=False)


def test_stft_model_card_classifies_raw_recordings(cinc_folder, tmp_path):
    """The spectrogram model goes through the same card -> Classifier path as the 1-D models."""
    model = create_model("resnet18v2_2d_stft", num_classes=4, width=0.125)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "best.safetensors"))
    write_card(tmp_path / "model.json", tmp_path / "best.safetensors", architecture="resnet18v2_2d_stft", width=0.125,
               num_classes=4, classes=list(CINC_CLASSES), fs=125, normalization={"mean": 0.0, "std": 0.24}, task="cinc2017",
               input="crop", window_samples=2048, hop_samples=1024)
    sig, fs = load_recording(str(cinc_folder / "A00002.mat"))
    probs = Classifier(tmp_path).predict_proba([sig], fs)
    assert probs.shape == (1, 4) and abs(probs.sum() - 1) < 1e-5


def test_final_fit_without_validation_trains_every_epoch_and_keeps_the_last(cinc_folder, tmp_path, capsys):
    """val_fraction=0: the standard split's test records stay out, every other record trains, nothing stops early
    (patience=1 would otherwise), and the card's weights are the last epoch's (the checkpoint's model)."""
    from ecgtl.data.cinc2017 import read_labels
    from ecgtl.data.splits import make_splits
    from ecgtl.models.card import load_weights

    out = tmp_path / "final"
    args = TINY + [f"data={cinc_folder}", f"out={out}", "val_fraction=0", "patience=1", "bootstrap=0"]
    results = run_finetune(load_config(FinetuneConfig, "cpu", "finetune", args), progress=False)
    assert "no validation records: a final fit, all 2 epochs trained and the last epoch's weights kept" in capsys.readouterr().out
    labels = read_labels(cinc_folder.parent / "REFERENCE-v3.csv")
    standard = make_splits(sorted(labels), [labels[n] for n in sorted(labels)], test_fraction=0.2, val_fraction=0.05, seed=0)
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert splits["val"] == [] and splits["test"] == standard["test"]
    assert sorted(splits["train"]) == sorted(standard["train"] + standard["val"])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["round"] for r in rows] == ["1", "2"] and not [k for k in rows[0] if k.startswith("val_")]
    card = json.loads((out / "model.json").read_text())
    assert card["best_round"] == card["rounds_run"] == 2 and card["selected_on"].startswith("none: a final fit")
    assert results["stopped_early"] is False and results["selected_on"] == card["selected_on"]
    assert _checkpoint_state(out)["stale_rounds"] == 0  # patience=1 is never reached: nothing is judged
    last = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    kept = load_weights(out / "best.safetensors")
    assert kept.keys() == last.keys() and all(torch.equal(kept[k], last[k]) for k in kept)
    assert "val" not in results and results["test"]["n"] == 1450
    assert not (out / "predictions_val.csv").exists() and (out / "curves.png").is_file()
    with pytest.raises(ConfigError, match="val_fraction=5e-05 of 7248 records rounds to 0 validation records"):
        run_finetune(load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={tmp_path / 'x'}",
                                                                          "val_fraction=0.00005"]), progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything is written: a corrected rerun is not blocked
    (tmp_path / "novalsplit.json").write_text((out / "splits.json").read_text())
    with pytest.raises(ConfigError, match="its val part is empty, and calibrate=true fits class biases"):
        run_finetune(load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={cinc_folder}", f"out={tmp_path / 'y'}",
                                                                          f"splits={tmp_path / 'novalsplit.json'}",
                                                                          "calibrate=true"]), progress=False)
