"""Batched inference (issue 10, "Inference"): ``ecgtl evaluate`` and ``ecgtl predict`` cut the inputs of many
records straight into batches, read files in worker processes and report where the time went. On the CPU the
probabilities are those of a plain record-by-record run; the GPU settings (bf16 autocast, pinned buffers in
rotation, results kept on the device) are checked on the CPU through the same code."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from cinc_subset import ecg_like_signals, tiny_card, write_cinc_subset
from ecgtl.cli import main as cli
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc_dataset import prepare_cinc
from ecgtl.data.transforms import paper_pad_or_crop, resample, sliding_windows
from ecgtl.evaluate.commands import run_evaluate
from ecgtl.evaluate.inference import (
    BatchRunner,
    Classifier,
    InferencePlan,
    inference_dataset,
    inference_plan,
    predict_dataset,
)
from ecgtl.evaluate.parallel import default_workers, prepare_signal, resample_fast

N_RECORDS = 12


# ----------------------------------------------------------------------------- fixtures
def _card(folder, input_mode: str):
    return tiny_card(folder, input_mode=input_mode)


@pytest.fixture(scope="module", params=["crop", "paper"])
def card(request, tmp_path_factory):
    """A tiny classifier card of each input kind (random weights: speed and arithmetic, not skill)."""
    return _card(tmp_path_factory.mktemp("card") / request.param, request.param)


@pytest.fixture(scope="module")
def crop_card(tmp_path_factory):
    return _card(tmp_path_factory.mktemp("card") / "crop", "crop")


@pytest.fixture(scope="module")
def folder(shared_data, tmp_path_factory):
    """Twelve real CinC 2017 records (9-60 s) in the CinC layout, with their labels."""
    out = tmp_path_factory.mktemp("cinc")
    write_cinc_subset(shared_data, out, N_RECORDS)
    return out


def _signals(n: int = 7, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    """ECG-like signals of varied lengths and rates (some shorter than a window, one of exactly one window)."""
    return ecg_like_signals(n, seed)


def _reference(clf: Classifier, signals, rates) -> np.ndarray:
    """Record by record, without any of the batching code: prepare, cut, model, softmax, average."""
    out = []
    for s, fs in zip(signals, rates):
        x = prepare_cinc([s], clf.fs, clf.normalization, fs_in=fs)[0]
        inputs = paper_pad_or_crop(x, clf.paper_samples)[None] if clf.input == "paper" else sliding_windows(x, clf.window, clf.hop)
        with torch.no_grad():
            p = torch.softmax(clf.model(torch.from_numpy(inputs)[:, None, :]), dim=1).numpy()
        out.append(p.astype(np.float64).mean(0))
    return np.stack(out)


# ----------------------------------------------------------------------------- A. same probabilities as before
@pytest.mark.parametrize("batch_size", [None, 3])
def test_batched_probabilities_equal_a_record_by_record_run(card, batch_size):
    clf = Classifier(card, device="cpu", batch_size=batch_size)
    signals, rates = _signals()
    got = clf.predict_proba(signals, rates)
    np.testing.assert_allclose(got, _reference(clf, signals, rates), atol=1e-6, rtol=0)
    t = clf.last_timing
    assert t.records == len(signals) and t.device == "cpu" and t.precision == "float32"
    default = 128 if clf.input == "crop" else 32  # inputs of 1,024 or 4,096 samples: at most 2**17 samples a batch
    assert t.batch_size == (batch_size or default)
    assert t.inputs >= len(signals)
    assert t.seconds >= t.model_s > 0 and t.read_s == 0 and t.preprocess_s > 0
    assert "records/s" in t.summary()


def test_predict_dataset_gives_the_dataloaders_batches_exactly(card):
    """The batches cut from the records are those a DataLoader collates: bit-identical probabilities."""
    clf = Classifier(card, device="cpu")
    prepared = clf.preprocess(*_signals())
    ds = inference_dataset(prepared, clf.input, clf.window, clf.hop, clf.paper_samples)

    class Opaque(torch.utils.data.Dataset):  # not recognised: goes through the DataLoader
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    fast = predict_dataset(clf.model, ds, 5, torch.device("cpu"))
    items = predict_dataset(clf.model, Opaque(), 5, torch.device("cpu"))  # one row per input, in record order
    if clf.input == "crop":
        from ecgtl.data.cinc_dataset import aggregate_windows

        items = aggregate_windows(items, ds.record_index, ds.n_records)
    assert fast.dtype == (np.float64 if clf.input == "crop" else np.float32)
    np.testing.assert_array_equal(fast, items)
    np.testing.assert_allclose(fast, _reference(clf, *_signals()), atol=1e-6, rtol=0)


def test_workers_prepare_records_as_the_classifier_did(crop_card):
    """The workers' preparation (the resampling filter designed once) is prepare_cinc's, bit for bit."""
    clf = Classifier(crop_card, device="cpu")
    for s, fs in zip(*_signals()):
        expected = prepare_cinc([s], clf.fs, clf.normalization, fs_in=fs)[0]
        np.testing.assert_array_equal(prepare_signal(s, fs, clf.fs, clf.normalization.mean, clf.normalization.std), expected)
        np.testing.assert_array_equal(clf.preprocess([s], fs)[0], expected)
    x = np.random.default_rng(0).standard_normal(7001).astype(np.float32)
    for fs_in, fs_out in [(300, 250), (300, 100), (500, 125), (360, 250), (1000, 250), (128, 250), (250, 250), (300, 50)]:
        np.testing.assert_array_equal(resample_fast(x, fs_in, fs_out), resample(x, fs_in, fs_out))
    assert default_workers(10_000, cores=2) == 0 and default_workers(10, cores=16) == 0
    assert default_workers(10_000, cores=16) == 15 and default_workers(200, cores=16) == 3


# ----------------------------------------------------------------------------- B. the GPU path, on the CPU
def test_gpu_settings_are_chosen_without_a_gpu():
    cuda = torch.device("cuda")
    plan = inference_plan(cuda, bf16_supported=True)
    assert (plan.amp_dtype, plan.precision, plan.batch_size, plan.pin_memory, plan.buffers, plan.cudnn_benchmark,
            plan.pad_last) == (torch.bfloat16, "bfloat16", 512, True, 2, True, True)
    assert inference_plan(cuda, bf16_supported=False).amp_dtype is None  # an older GPU: float32
    assert inference_plan(cuda, precision="float32", bf16_supported=True).amp_dtype is None
    assert inference_plan(cuda, batch_size=64, bf16_supported=True).batch_size == 64
    cpu = inference_plan("cpu")
    assert (cpu.amp_dtype, cpu.batch_size, cpu.pin_memory, cpu.buffers, cpu.cudnn_benchmark, cpu.pad_last) == \
        (None, 128, False, 1, False, False)
    assert inference_plan("cpu", precision="bfloat16").amp_dtype == torch.bfloat16
    # on the CPU, long inputs come in smaller batches (caches); a GPU takes 512 whatever their length
    assert [inference_plan("cpu", input_samples=n).batch_size for n in (16384, 4096, 1024, 100)] == [8, 32, 128, 128]
    assert inference_plan("cpu", batch_size=64, input_samples=16384).batch_size == 64
    assert inference_plan(cuda, bf16_supported=True, input_samples=16384).batch_size == 512
    from ecgtl.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        inference_plan("cpu", precision="fp8")
    with pytest.raises(ConfigError, match="batch size"):
        inference_plan("cpu", batch_size=0)


def test_cpu_inference_makes_no_cuda_call(card, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA call on the CPU path")

    for name in ("is_available", "is_bf16_supported", "Event", "synchronize", "current_device"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    clf = Classifier(card, device="cpu")
    probs = clf.predict_proba(*_signals(3))
    assert probs.shape == (3, 4) and np.all(np.isfinite(probs))


def test_gpu_batching_logic_runs_on_the_cpu(card):
    """Two host buffers in rotation, the last batch padded to full size, results kept until the end, bf16 autocast:
    float32 probabilities close to float32 arithmetic, in record order; in float32, those of a record-by-record run."""
    clf = Classifier(card, device="cpu")
    signals, rates = _signals(9, seed=1)
    prepared = clf.preprocess(signals, rates)
    reference = _reference(clf, signals, rates)

    def run(amp_dtype):
        plan = InferencePlan(device=torch.device("cpu"), batch_size=4, amp_dtype=amp_dtype, pin_memory=False, buffers=2,
                             cudnn_benchmark=False, pad_last=True)
        runner = BatchRunner(clf.model, clf.input_samples, plan)
        for x in prepared:
            runner.add(x, clf.input_starts(x.shape[0]))
        assert runner.batches >= 2 if runner.n_inputs > 4 else True
        return clf.probabilities(runner)

    exact = run(None)
    np.testing.assert_allclose(exact, reference, atol=1e-6, rtol=0)
    half = run(torch.bfloat16)
    assert half.dtype == exact.dtype and half.shape == exact.shape
    np.testing.assert_allclose(half.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(half, reference, atol=0.05, rtol=0)


# ----------------------------------------------------------------------------- C. the commands
def test_evaluate_reads_in_workers_reports_timing_and_skips_a_bad_file(crop_card, folder, tmp_path, capsys, monkeypatch):
    import shutil

    from ecgtl.evaluate import parallel

    monkeypatch.setattr(parallel, "available_cores", lambda: 4)  # so that the pool's server starts before the model loads

    folder = shutil.copytree(folder, tmp_path / "cinc")
    bad = (folder / "RECORDS").read_text().split()[-1]
    (folder / f"{bad}.mat").write_bytes(b"not a MAT file")  # one bad record: skipped and reported, naming its file
    reports = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        reports[workers] = run_evaluate(str(crop_card), str(folder), out=str(out), n_boot=0, progress=False, device="cpu",
                                        workers=workers)
        text = capsys.readouterr().out
        assert f"skipped {bad}: {folder / bad}.mat: unreadable MAT file" in text
        assert "11 records in" in text and "records/s (read" in text
        saved = json.loads((out / "report.json").read_text())
        assert saved["timing"] == reports[workers]["timing"]
    assert (tmp_path / "w0" / "predictions.csv").read_text() == (tmp_path / "w2" / "predictions.csv").read_text()
    t0, t2 = reports[0]["timing"], reports[2]["timing"]
    assert t0["workers"] == 0 and t2["workers"] == 2 and t0["records"] == t2["records"] == 11
    for t in (t0, t2):
        assert t["read_s"] > 0 and t["preprocess_s"] > 0 and t["model_s"] > 0 and t["records_per_s"] > 0
        assert 0 < t["first_record_s"] < t["seconds"]
        assert t["device"] == "cpu" and t["precision"] == "float32"
    assert reports[0]["skipped"][0]["record"] == bad
    assert reports[0]["inference_records_per_s"] == pytest.approx(t0["model_records_per_s"])


def test_predict_batches_files_keeps_their_order_and_logs_the_timing(crop_card, folder, tmp_path, capsys, caplog):
    files = [str(folder / f"{n}.mat") for n in (folder / "RECORDS").read_text().split()[:4]]
    np.save(tmp_path / "short.npy", (0.2 * np.random.default_rng(0).standard_normal(300)).astype(np.float32))
    files.insert(2, str(tmp_path / "short.npy"))
    caplog.set_level(logging.INFO, logger="ecgtl.evaluate.commands")
    capsys.readouterr()
    assert cli(["predict", *files, "--checkpoint", str(crop_card), "--json", "--fs", "300", "--device", "cpu",
                "--workers", "0"]) == 1
    results = json.loads(capsys.readouterr().out)  # still a list, one entry per file, in order
    assert [r["file"] for r in results] == files
    assert "recording too short" in results[2]["error"] and all("label" in r for i, r in enumerate(results) if i != 2)
    assert any("predict: 4 records in" in m and "records/s" in m for m in caplog.messages)
    clf = Classifier(crop_card, device="cpu")  # the same probabilities as files classified one at a time
    from ecgtl.evaluate.commands import load_recording

    for r in (r for r in results if "label" in r):
        sig, fs = load_recording(r["file"])
        one = clf.predict_proba([sig.astype(np.float32)], fs)[0]
        np.testing.assert_allclose([r["probabilities"][c] for c in CINC_CLASSES], one, atol=1e-6, rtol=0)
    # in worker processes: the same output
    assert cli(["predict", *files, "--checkpoint", str(crop_card), "--json", "--fs", "300", "--device", "cpu",
                "--workers", "2"]) == 1
    assert json.loads(capsys.readouterr().out) == results
    # the text output: one line per file, in order
    assert cli(["predict", *files[:2], "--checkpoint", str(crop_card), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == files[:2]


def test_bad_speed_options_are_refused_on_the_command_line(crop_card, folder, capsys):
    for option, value in (("--workers", "-1"), ("--batch-size", "0"), ("--precision", "fp8")):
        with pytest.raises(SystemExit) as info:
            cli(["predict", str(next(folder.glob("*.mat"))), "--checkpoint", str(crop_card), option, value])
        assert info.value.code == 2 and option in capsys.readouterr().err
