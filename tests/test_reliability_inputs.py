"""Reliability of the inputs: plausible but wrong recordings, label files and config values are refused,
never silently classified or trained on. Every fault is injected into the real code path on real data
(CinC 2017, MIT-BIH, Icentia11k records of ../shared/data); each test fails if its promise breaks."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ecgtl.cli import main as cli
from ecgtl.config import FinetuneConfig, PretrainConfig, load_config
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import Cinc2017, read_record
from ecgtl.data.icentia11k import read_wfdb_segment
from ecgtl.data.transforms import resample
from ecgtl.data.wfdb_database import WfdbDatabaseRecord
from ecgtl.data.wfdb_io import MV_PEAK_MAX, MV_SPREAD_RANGE, amplitude_mv
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.commands import load_recording, run_evaluate
from ecgtl.evaluate.inference import check_recording
from ecgtl.models import create_model
from ecgtl.models.card import write_card


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def card(tmp_path_factory):
    """A tiny classifier card (random weights: these tests are about what reaches the model, not its skill)."""
    folder = tmp_path_factory.mktemp("card")
    torch.manual_seed(0)
    model = create_model("resnet18_preact", num_classes=4, width=0.0625)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best.safetensors"))
    write_card(folder / "model.json", folder / "best.safetensors", architecture="resnet18_preact", width=0.0625, num_classes=4,
               classes=list(CINC_CLASSES), fs=100, normalization={"mean": 0.0, "std": 0.24}, task="cinc2017", input="crop",
               window_samples=1024, hop_samples=512)
    return folder


@pytest.fixture(scope="module")
def a00001(cinc_folder):
    """A real CinC 2017 record in mV (300 Hz, 30 s)."""
    rec = read_record(cinc_folder, "A00001")
    return rec.signal.astype(np.float64)


def _predict(capsys, *args):
    """``ecgtl predict ... --json``: (exit code, {file name: result})."""
    capsys.readouterr()
    code = cli(["predict", *map(str, args), "--json"])
    out = capsys.readouterr().out
    return code, {os.path.basename(r["file"]): r for r in json.loads(out)}


def _cli_error(capsys, args):
    """argparse or EcgtlError refusal of the whole command: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = cli(args)
    except SystemExit as exc:  # argparse refuses an option value before any work
        code = exc.code
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- A. units and amplitude
@pytest.mark.parametrize("form, factor, dtype, message", [
    pytest.param("adc_counts_npy", 1000.0, np.float64, "look like raw ADC counts or uV, not mV", id="adc_counts_npy"),
    pytest.param("adc_counts_csv", 1000.0, np.float64, "look like raw ADC counts or uV, not mV", id="adc_counts_csv"),
    pytest.param("int16_counts_npy", 1000.0, np.int16, "integer values (int16) look like raw ADC counts", id="int16_counts_npy"),
    pytest.param("microvolts_npy", 1000.0, np.float32, "look like raw ADC counts or uV, not mV", id="microvolts_npy"),
    pytest.param("volts_csv", 0.001, np.float64, "look like volts, not mV", id="volts_csv"),
])
def test_recording_not_in_mv_is_refused_and_gain_fixes_it(card, a00001, tmp_path, capsys, form, factor, dtype, message):
    values = np.rint(a00001 * factor).astype(dtype) if dtype is np.int16 else (a00001 * factor).astype(dtype)
    name = f"rec.{form.rsplit('_', 1)[1]}"
    if name.endswith(".csv"):
        np.savetxt(tmp_path / name, values[:, None], delimiter=",", header="ecg", comments="")
    else:
        np.save(tmp_path / name, values)
    np.save(tmp_path / "mv.npy", a00001)
    code, res = _predict(capsys, tmp_path / name, tmp_path / "mv.npy", "--fs", "300", "--checkpoint", card)
    assert code == 1 and "label" not in res[name] and "label" in res["mv.npy"]
    assert res[name]["error"].startswith(str(tmp_path / name)) and message in res[name]["error"]
    assert "--gain" in res[name]["error"]
    # the fix the message names works: --gain ADU_PER_MV gives the mV recording's probabilities
    code, fixed = _predict(capsys, tmp_path / name, "--fs", "300", "--gain", str(factor), "--checkpoint", card)
    assert code == 0
    np.testing.assert_allclose(list(fixed[name]["probabilities"].values()), list(res["mv.npy"]["probabilities"].values()),
                               atol=2e-3)  # int16 rounding of the counts moves them slightly


@pytest.mark.parametrize("fault", ["placeholder_values", "scaled_1e6", "lead_off_noise"])
def test_absurd_amplitude_is_refused(a00001, tmp_path, fault):
    sig = a00001.copy()
    if fault == "placeholder_values":  # missing samples written as -32768 into an mV file
        sig[[100, 2000, 5000]] = -32768.0
        expected = "3 sample(s) reach 3.277e+04 mV from the baseline, absurd for an ECG"
    elif fault == "scaled_1e6":
        sig = sig * 1e6
        expected = "far above an ECG's in mV"
    else:  # a lead off: 5 uV of noise
        sig = np.random.default_rng(0).normal(0, 0.005, sig.shape)
        expected = "far below an ECG's in mV"
    np.save(tmp_path / "x.npy", sig)
    with pytest.raises(DataError, match=re.escape(expected)) as err:
        load_recording(str(tmp_path / "x.npy"), fs=300)
    assert str(err.value).startswith(str(tmp_path / "x.npy"))
    with pytest.raises(DataError, match=re.escape(expected)):  # the model's own guard, whatever reader produced the array
        check_recording(sig, 300, "x")


def test_wrong_header_gain_is_refused_in_predict_and_evaluate(cinc_folder, tmp_path):
    for name in ("A00001", "A00002"):
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (name + ext), tmp_path / (name + ext))
    hea = tmp_path / "A00002.hea"
    hea.write_text(hea.read_text().replace(" 1000/mV ", " 1/mV "))  # a header written without the gain: counts read as mV
    (tmp_path / "REFERENCE.csv").write_text("A00001,N\nA00002,N\n")
    with pytest.raises(DataError, match=r"A00002\.mat: amplitude .* look like raw ADC counts .* check the gain and unit of A00002\.hea"):
        load_recording(str(tmp_path / "A00002.mat"))
    records, failures = Cinc2017(tmp_path).read_all(progress=False)  # evaluate skips and reports it, never scores it
    assert [r.name for r in records] == ["A00001"] and failures[0][0] == "A00002" and "raw ADC counts" in failures[0][1]


@pytest.mark.parametrize("unit, message", [pytest.param("mmHg", "unit 'mmHg', not a voltage", id="mmHg"),
                                           pytest.param("uV", "look like volts, not mV", id="uV")])
def test_wfdb_unit_that_is_not_mv(mirror, tmp_path, unit, message):
    for ext in ("hea", "dat"):
        shutil.copy(mirror / "mitdb" / "1.0.0" / f"100.{ext}", tmp_path)
    hea = tmp_path / "100.hea"
    hea.write_text(hea.read_text().replace("200 11", f"200/{unit} 11"))
    assert f"200/{unit}" in hea.read_text()
    with pytest.raises(DataError, match=message):
        load_recording(str(tmp_path / "100.hea"), lead="MLII")


# ----------------------------------------------------------------------------- A. shape: columns, leads, orientation
def test_multi_column_csv_needs_an_explicit_lead(card, a00001, tmp_path, capsys):
    t = np.arange(len(a00001)) / 300
    np.savetxt(tmp_path / "two.csv", np.c_[t, a00001], delimiter=",", header="time_s,ecg_mV", comments="")
    np.savetxt(tmp_path / "one.csv", a00001[:, None], delimiter=",")
    code, res = _predict(capsys, tmp_path / "two.csv", tmp_path / "one.csv", "--fs", "300", "--checkpoint", card)
    assert code == 1 and "label" in res["one.csv"]
    assert "2 columns (0: time_s, 1: ecg_mV) and no --lead" in res["two.csv"]["error"]  # column 0 (time) is never taken
    code, by_name = _predict(capsys, tmp_path / "two.csv", "--fs", "300", "--lead", "ecg_mV", "--checkpoint", card)
    assert code == 0 and by_name["two.csv"]["probabilities"] == pytest.approx(res["one.csv"]["probabilities"], abs=1e-6)
    code, by_index = _predict(capsys, tmp_path / "two.csv", "--fs", "300", "--lead", "1", "--checkpoint", card)
    assert by_index["two.csv"]["probabilities"] == by_name["two.csv"]["probabilities"]
    code, time_col = _predict(capsys, tmp_path / "two.csv", "--fs", "300", "--lead", "time_s", "--checkpoint", card)
    assert code == 1 and "a time or sample-index column, not an ECG" in time_col["two.csv"]["error"]
    code, missing = _predict(capsys, tmp_path / "two.csv", "--fs", "300", "--lead", "II", "--checkpoint", card)
    assert code == 1 and "--lead 'II' is not one of the 2 column(s) (0: time_s, 1: ecg_mV)" in missing["two.csv"]["error"]


def test_semicolon_and_headerless_tables(a00001, tmp_path):
    np.savetxt(tmp_path / "semi.csv", np.c_[a00001, a00001 / 2], delimiter=";")
    with pytest.raises(DataError, match=r"semi\.csv: 2 columns \(0, 1\) and no --lead"):
        load_recording(str(tmp_path / "semi.csv"), fs=300)
    sig, _ = load_recording(str(tmp_path / "semi.csv"), fs=300, lead="1")
    np.testing.assert_allclose(sig, a00001 / 2, rtol=1e-6)


@pytest.mark.parametrize("layout", ["leads_by_samples", "samples_by_leads"])
def test_array_orientation_is_detected(a00001, tmp_path, caplog, layout):
    two = np.stack([a00001, -a00001])  # (2 leads, 9000 samples)
    np.save(tmp_path / "x.npy", two if layout == "leads_by_samples" else two.T)
    kind = "row" if layout == "leads_by_samples" else "column"
    with pytest.raises(DataError, match=rf"x\.npy: 2 {kind}s \(0, 1\) and no --lead"):
        load_recording(str(tmp_path / "x.npy"), fs=300)
    with caplog.at_level(logging.INFO):
        sig, fs = load_recording(str(tmp_path / "x.npy"), fs=300, lead="1")
    assert sig.shape == (9000,) and fs == 300  # time is the longer axis, whichever way the array was saved
    np.testing.assert_allclose(sig, -a00001)
    assert f"2 leads x 9000 samples ({kind}s = leads, the longer axis = time); took {kind} 1" in caplog.text


def test_not_one_recording_per_file_is_refused(a00001, tmp_path):
    np.save(tmp_path / "batch.npy", np.tile(a00001[:5000], (300, 1)))  # 300 recordings in one array
    with pytest.raises(DataError, match=r"batch\.npy: shape \(300, 5000\): neither axis looks like leads"):
        load_recording(str(tmp_path / "batch.npy"), fs=300)
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4000)))
    with pytest.raises(DataError, match=r"cube\.npy: expected a single-lead recording"):
        load_recording(str(tmp_path / "cube.npy"), fs=300)
    np.save(tmp_path / "complex.npy", a00001.astype(np.complex128))
    with pytest.raises(DataError, match="not real numbers"):
        load_recording(str(tmp_path / "complex.npy"), fs=300)


def test_multi_lead_wfdb_record_needs_an_explicit_lead(card, mirror, capsys):
    record = mirror / "mitdb" / "1.0.0" / "100.hea"
    code, res = _predict(capsys, record, "--checkpoint", card)
    assert code == 1 and "2 leads (0: MLII, 1: V5) and no --lead" in res["100.hea"]["error"]
    code, res = _predict(capsys, record, "--lead", "V5", "--checkpoint", card)
    assert code == 0 and res["100.hea"]["fs"] == 360
    sig, _ = load_recording(str(record), lead="V5")
    np.testing.assert_allclose(sig[:5], [-0.065, -0.065, -0.065, -0.065, -0.065])  # V5, not MLII (-0.145)
    code, res = _predict(capsys, record, "--lead", "7", "--checkpoint", card)
    assert code == 1 and "--lead '7' is not one of the 2 lead(s)" in res["100.hea"]["error"]


def test_wfdb_options_that_would_be_ignored_are_refused(cinc_folder, mirror):
    with pytest.raises(ConfigError, match=r"100\.hea: --gain is for CSV and NumPy values"):
        load_recording(str(mirror / "mitdb" / "1.0.0" / "100.hea"), lead="MLII", gain=1000)
    with pytest.raises(DataError, match=r"A00001\.hea: --fs 250 Hz contradicts the header's 300 Hz"):
        load_recording(str(cinc_folder / "A00001.mat"), fs=250)
    assert load_recording(str(cinc_folder / "A00001.mat"), fs=300)[1] == 300  # the same rate is fine


# ----------------------------------------------------------------------------- A / C. sampling rate
@pytest.mark.parametrize("value", ["1e-9", "0", "-300", "nan", "inf", "1e9"])
def test_absurd_fs_is_refused_on_the_command_line(card, tmp_path, capsys, value):
    np.save(tmp_path / "a.npy", np.zeros(10))
    code, err = _cli_error(capsys, ["predict", str(tmp_path / "a.npy"), "--fs", value, "--checkpoint", str(card)])
    assert code == 2 and "argument --fs" in err and "sampling rate of an ECG" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-1000", "nan"])
def test_absurd_gain_is_refused_on_the_command_line(card, tmp_path, capsys, value):
    code, err = _cli_error(capsys, ["predict", str(tmp_path / "a.npy"), "--fs", "300", "--gain", value, "--checkpoint", str(card)])
    assert code == 2 and "argument --gain" in err


def test_absurd_fs_is_refused_below_the_command_line(a00001, tmp_path):
    np.save(tmp_path / "a.npy", a00001)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"a\.npy: --fs 1e-09 Hz is outside 50-20000 Hz"):
        load_recording(str(tmp_path / "a.npy"), fs=1e-9)
    with pytest.raises(DataError, match=r"x: sampling frequency 1e-09 Hz is outside 50-20000 Hz"):
        check_recording(a00001, 1e-9, "x")
    with pytest.raises(ValueError, match="is a sampling rate wrong"):  # 1e-9 Hz would allocate terabytes; 0.1 Hz: 180 MB
        resample(a00001, 0.1, 250)
    assert time.perf_counter() - start < 2


# ----------------------------------------------------------------------------- A. label files
def _subset(cinc_folder, root, names=("A00001", "A00002", "A00003")):
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (n + ext), root / (n + ext))
    (root / "RECORDS").write_text("\n".join(names) + "\n")
    return root


def test_parent_label_file_never_relabels_another_folder(cinc_folder, tmp_path, caplog):
    folder = _subset(cinc_folder, tmp_path / "mine")
    (tmp_path / "REFERENCE-v3.csv").write_text("A00001,~\nA00002,~\nA00003,~\n")  # someone else's labels next door
    (folder / "REFERENCE.csv").write_text("A00001,N\nA00002,N\nA00003,A\n")
    data = Cinc2017(folder)
    assert data.label_file == folder / "REFERENCE.csv" and data.labels == {"A00001": "N", "A00002": "N", "A00003": "A"}
    os.remove(folder / "REFERENCE.csv")
    with caplog.at_level(logging.WARNING):
        data = Cinc2017(folder)
    assert data.label_file is None and not data.labels  # unlabelled: evaluate refuses, never uses the parent's
    assert f"{tmp_path / 'REFERENCE-v3.csv'} in its parent folder is not used" in caplog.text
    given = Cinc2017(folder, labels=str(tmp_path / "REFERENCE-v3.csv"))  # explicit: the user's choice
    assert given.label_file == tmp_path / "REFERENCE-v3.csv" and set(given.labels.values()) == {"~"}


def test_physionet_layout_uses_the_parent_v3_labels_and_says_so(cinc_folder, caplog):
    with caplog.at_level(logging.INFO):
        data = Cinc2017(cinc_folder)
    assert data.label_file == cinc_folder.absolute().parent / "REFERENCE-v3.csv"
    assert f"labels from {data.label_file} (PhysioNet layout" in caplog.text
    assert Cinc2017(cinc_folder, labels="original").label_file == cinc_folder / "REFERENCE.csv"


def test_evaluate_report_names_its_label_file(card, cinc_folder, tmp_path):
    folder = _subset(cinc_folder, tmp_path / "eval")
    (tmp_path / "REFERENCE-v3.csv").write_text("A00001,~\nA00002,~\nA00003,~\n")
    (folder / "REFERENCE.csv").write_text("A00001,N\nA00002,N\nA00003,A\n")
    report = run_evaluate(str(card), str(folder), out=str(tmp_path / "out"), n_boot=0, progress=False)
    assert report["label_file"] == str(folder / "REFERENCE.csv")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["label_file"] == str(folder / "REFERENCE.csv")
    assert report["n"] == 3


# ----------------------------------------------------------------------------- thresholds vs every real record
def test_amplitude_bounds_pass_every_real_record_with_margin(cinc_folder, mirror):
    """All 7,248 CinC 2017 records pass (read_record applies the check), and the bounds sit >= 2x outside them;
    every record scaled to counts (x1000) or volts (/1000) would be refused."""
    records, failures = Cinc2017(cinc_folder).read_all(progress=False)
    assert not failures and len(records) == 7248
    stats = np.array([amplitude_mv(r.signal) for r in records])
    import wfdb

    for db, names in (("mitdb", ("100", "105", "203", "208")), ("svdb", ("800", "850"))):  # noisy and ectopic records
        for n in names:
            rec = wfdb.rdrecord(str(mirror / db / "1.0.0" / n), sampto=360 * 300)
            stats = np.vstack([stats, [amplitude_mv(rec.p_signal[:, c]) for c in range(rec.n_sig)]])
    spread, peak = stats[:, 0], stats[:, 1]
    lo, hi = MV_SPREAD_RANGE
    assert spread.min() / lo >= 3 and hi / spread.max() >= 2 and MV_PEAK_MAX / peak.max() >= 5
    assert spread.min() * 1000 > hi and spread.max() / 1000 < lo  # counts at 1000/mV and volts: all refused


# ----------------------------------------------------------------------------- B. config values
FINETUNE_BAD = {
    "batch_size=0": "batch_size must be between 1 and 65536, got 0",
    "eval_batch_size=-4": "eval_batch_size must be between 1 and 65536",
    "epochs=0": "epochs must be between 1 and 100000, got 0",
    "val_fraction=-0.1": "val_fraction must be in [0, 1)",
    "val_fraction=0 calibrate=true": "calibrate=true fits class biases on validation records, and val_fraction=0 leaves none",
    "test_fraction=1.5": "test_fraction must be in (0, 1)",
    "test_fraction=0.7 val_fraction=0.4": "test_fraction + val_fraction must be below 1",
    "label_fraction=0": "label_fraction must be in (0, 1]",
    "fs=0": "fs must be between 50 and 1000 Hz (the model's input rate), got 0",
    "fs=1e-9": "fs must be between 50 and 1000 Hz (the model's input rate), got 1e-09",
    "fs=nan": "fs must be between 50 and 1000 Hz",
    "crop_seconds=-5": "crop_seconds must be in (0, 300] s",
    "crop_seconds=1e9": "crop_seconds must be in (0, 300] s",
    "crop_seconds=1": "crop_seconds=1 s is 125 samples at fs=125 Hz; the model needs at least 256 samples",
    "hop_seconds=0": "hop_seconds must be in (0, 65.536] s",
    "hop_seconds=100": "hop_seconds must be in (0, 65.536] s",
    "paper_samples=10": "paper_samples must be between 256 and 1048576 samples",
    "optim.lr=0": "optim.lr must be in (0, 10] (learning rate), got 0",
    "optim.lr=-0.001": "optim.lr must be in (0, 10]",
    "optim.betas=[0.9,1.5]": "optim.betas[1] must be in [0, 1)",
    "optim.eps=0": "optim.eps must be in (0, 1)",
    "optim.weight_decay=-1": "optim.weight_decay must be between 0 and 1",
    "optim.warmup_epochs=500": "optim.warmup_epochs (500) exceeds epochs (30)",
    "model.width=0": "model.width must be in (0, 16]",
    "model.width=-1": "model.width must be in (0, 16]",
    "model.drop_rate=1": "model.drop_rate must be in [0, 1)",
    "num_workers=-1": "num_workers must be between 0 and 256",
    "patience=0": "patience must be at least 1",
    "freeze_epochs=-1": "freeze_epochs must be between 0 and 100000",
    "folds=1": "folds must be 0 (off) or at least 2",
    "folds=5 fold=5": "fold must be in 0..4, got 5",
    "fold=2": "fold=2 needs folds",
    "seed=-1": "seed must be between 0 and 4294967295",
    "bootstrap=-5": "bootstrap must be between 0 and 1000000",
    "device=gpu": "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'",
    "out=": "out must be a run folder",
    # type coercion: a ConfigError naming the key, no traceback
    "epochs=abc": "epochs: expected a whole number, got 'abc'",
    "epochs=2.5": "epochs: expected a whole number, got 2.5",
    "epochs=true": "epochs: expected a whole number, got True",
    "optim.lr=fast": "optim.lr: expected a number, got 'fast'",
    "optim.betas=abc": "optim.betas: expected 2 numbers",
    "amp=5": "amp: expected true/false, got 5",
    "model=3": "model: expected a mapping, got 3",
}

PRETRAIN_BAD = {
    "frames_per_patient=0": "frames_per_patient must be between 1 and 1000000 frames",
    "val_frames_per_patient=0": "val_frames_per_patient must be between 1 and 1000000 frames",
    "rounds=0": "rounds must be between 1 and 100000, got 0",
    "frame_samples=16": "frame_samples must be between 256 and 1048576 samples",
    "frame_samples=100000000": "frame_samples must be between 256 and 1048576 samples",
    "task=future context_frames=0": "context_frames must be between 1 and 64 frames",
    "task=future frame_samples=262144": "frame_samples x (context_frames + 1) must be at most 1048576",
    "checkpoint_every=0": "checkpoint_every must be at least 1",
    "patience=0": "patience must be at least 1",
    "val_fraction=0": "val_fraction must be in (0, 1)",
    "patient_fraction=0": "patient_fraction must be in (0, 1]",
    "fs=1e-9": "fs must be between 50 and 1000 Hz",
    "sources=[]": "sources must list store sources",
    "batch_size=0": "batch_size must be between 1 and 65536",
    "rounds=abc": "rounds: expected a whole number, got 'abc'",
}


@pytest.mark.parametrize("overrides", list(FINETUNE_BAD), ids=lambda s: s.replace(" ", "+"))
def test_bad_finetune_value_is_a_config_error(overrides):
    with pytest.raises(ConfigError) as err:
        load_config(FinetuneConfig, "cpu", "finetune", overrides.split())
    assert FINETUNE_BAD[overrides] in str(err.value)


@pytest.mark.parametrize("overrides", list(PRETRAIN_BAD), ids=lambda s: s.replace(" ", "+"))
def test_bad_pretrain_value_is_a_config_error(overrides):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, "cpu", "pretrain", overrides.split())
    assert PRETRAIN_BAD[overrides] in str(err.value)


def test_presets_and_edge_values_stay_valid():
    for cls, kind in ((FinetuneConfig, "finetune"), (PretrainConfig, "pretrain")):
        for preset in ("cpu", "paper"):
            load_config(cls, preset, kind)
    gpu = load_config(FinetuneConfig, "gpu", "finetune")  # the full-width candidate of issue 8
    assert gpu.model.width == 1.0 and gpu.fs == 250 and round(gpu.crop_seconds * gpu.fs) == 16384
    assert create_model(gpu.model.name, num_classes=4, width=0.25).feature_stride == 64  # the stride-4 stem at 250 Hz
    cfg = load_config(FinetuneConfig, "cpu", "finetune", ["epochs=1e3", "fs=50", "crop_seconds=5.12", "hop_seconds=5.12", "batch_size=1",
                                                          "val_fraction=0.01", "label_fraction=1", "device=cuda:1", "folds=5", "fold=4"])
    assert cfg.epochs == 1000 and cfg.fs == 50
    assert load_config(PretrainConfig, "cpu", "pretrain", ["task=future", "frame_samples=256", "context_frames=4"]).frame_samples == 256


@pytest.mark.parametrize("command, override, message", [
    pytest.param("finetune", "batch_size=0", "batch_size must be between 1 and 65536, got 0", id="finetune-batch_size=0"),
    pytest.param("finetune", "epochs=abc", "epochs: expected a whole number, got 'abc'", id="finetune-epochs=abc"),
    pytest.param("pretrain", "rounds=0", "rounds must be between 1 and 100000, got 0", id="pretrain-rounds=0"),
])
def test_bad_value_on_the_command_line_exits_2_without_traceback(capsys, tmp_path, command, override, message):
    code, err = _cli_error(capsys, [command, "--set", override, "--set", f"out={tmp_path / 'run'}", "--no-progress"])
    assert code == 2 and err.strip() == f"ecgtl {command}: error: {message}"
    assert not (tmp_path / "run").exists()  # refused before any work


# ----------------------------------------------------------------------------- C. annotation files


@pytest.mark.parametrize("fault", ["empty_0_bytes", "truncated_even", "truncated_odd"])
def test_broken_annotation_file_is_refused(icentia_copy, mirror, tmp_path, fault):
    def cut(data: bytes) -> bytes:
        return data[:{"empty_0_bytes": 0, "truncated_even": len(data) // 2 & ~1, "truncated_odd": len(data) // 2 | 1}[fault]]

    atr = icentia_copy / "p00" / "p00000" / "p00000_s00.atr"
    atr.write_bytes(cut(atr.read_bytes()))
    expected = "empty annotation file (0 bytes)" if fault.startswith("empty") else "truncated annotation file"
    with pytest.raises(DataError, match=r"p00000_s00\.atr: " + re.escape(expected)):
        read_wfdb_segment(icentia_copy, 0, 0)
    mit = tmp_path / "mit"
    mit.mkdir()
    for ext in ("hea", "dat"):
        shutil.copy(mirror / "mitdb" / "1.0.0" / f"100.{ext}", mit)
    (mit / "100.atr").write_bytes(cut((mirror / "mitdb" / "1.0.0" / "100.atr").read_bytes()))
    with pytest.raises(DataError, match=r"100\.atr: " + re.escape(expected)):
        list(WfdbDatabaseRecord(mit, "100", "mitdb").segments())


def test_intact_annotation_files_still_read(icentia_copy):
    assert len(read_wfdb_segment(icentia_copy, 0, 0)[2]) > 1000
