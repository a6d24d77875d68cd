"""Fine-tuning data: transforms (resample, normalise, pad/crop, windows), splits, torch datasets.

Small hand-built arrays check the exact behaviour; the real CinC 2017 records
and v3 labels of ../shared/data (7,248 records) check the splits and datasets
(those tests skip when the data is absent).
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from ecgtl.constants import CINC_CLASSES, PAPER_FINETUNE_FS_HZ, PAPER_FINETUNE_SAMPLES
from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.cinc_dataset import (
    CincCropDataset,
    CincPaperDataset,
    CincWindowDataset,
    aggregate_windows,
    encode_labels,
    prepare_cinc,
)
from ecgtl.data.splits import kfold_splits, load_splits, make_splits, save_splits, subset_labels
from ecgtl.data.transforms import (
    PAPER_CINC,
    Normalization,
    normalize,
    paper_pad_or_crop,
    random_crop,
    resample,
    resampled_length,
    sliding_windows,
    window_starts,
)
from ecgtl.errors import ConfigError


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("fs_out", [50, 100, 125, 250, 300, 360, 500])
def test_resample_lengths(fs_out):
    for n in (1, 2700, 9000, 18286):  # 9000 = 30 s at 300 Hz; 18286 is not a multiple of 6
        y = resample(np.ones(n, np.float32), 300, fs_out)
        assert y.dtype == np.float32 and y.ndim == 1
        assert y.shape[0] == resampled_length(n, 300, fs_out) == int(np.ceil(n * fs_out / 300))


def test_resample_identity_is_a_float32_copy():
    x = np.arange(10, dtype=np.int16)
    y = resample(x, 300, 300.0)
    assert y.dtype == np.float32 and np.array_equal(y, x) and not np.shares_memory(y, x)
    assert resample(np.zeros(0), 300, 125).shape == (0,)
    with pytest.raises(ValueError):
        resample(np.zeros(5), 0, 125)


def _peak_hz(x, fs):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / fs)[np.argmax(spec)]


@pytest.mark.parametrize("fs_out", [125, 250, 100, 50])
def test_resample_keeps_the_frequency_of_a_sine(fs_out):
    t = np.arange(30 * 300) / 300  # 30 s at 300 Hz
    x = (0.8 * np.sin(2 * np.pi * 10 * t)).astype(np.float32)  # 10 Hz, 0.8 mV
    y = resample(x, 300, fs_out)
    assert y.shape[0] == 30 * fs_out
    assert _peak_hz(y, fs_out) == pytest.approx(10.0, abs=1 / 30)  # within one FFT bin
    # amplitude preserved away from the edges (the FIR filter has edge effects only)
    mid = y[fs_out : -fs_out]
    assert np.sqrt(np.mean(mid.astype(np.float64) ** 2)) == pytest.approx(0.8 / np.sqrt(2), rel=0.02)  # RMS
    t_out = np.arange(y.shape[0]) / fs_out
    assert np.allclose(mid, 0.8 * np.sin(2 * np.pi * 10 * t_out[fs_out:-fs_out]), atol=0.02)


def test_resample_removes_content_above_the_new_nyquist():
    t = np.arange(20 * 300) / 300
    y = resample(np.sin(2 * np.pi * 40 * t), 300, 50)  # 40 Hz > 25 Hz Nyquist of 50 Hz
    assert np.abs(y[50:-50]).max() < 0.05


def test_normalize_and_normalization_from_records():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    assert np.allclose(normalize(x, 2.0, 0.5), [-2, 0, 2]) and normalize(x, 2.0, 0.5).dtype == np.float32
    with pytest.raises(ValueError):
        normalize(x, 0.0, 0.0)
    rng = np.random.default_rng(0)
    records = [rng.normal(0.1, 0.3, size=n).astype(np.float32) for n in (2700, 9000, 18000, 1)] + [np.zeros(0, np.float32)]
    norm = Normalization.from_records(records)
    allx = np.concatenate(records).astype(np.float64)
    assert norm.mean == pytest.approx(allx.mean(), abs=1e-12) and norm.std == pytest.approx(allx.std(), rel=1e-10)
    z = np.concatenate([norm(r) for r in records])
    assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1.0, abs=1e-5)
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    assert PAPER_CINC == Normalization(0.0075, 0.2373)
    assert np.allclose(PAPER_CINC(np.array([0.0075, 0.2448])), [0.0, 1.0])
    with pytest.raises(ConfigError):
        Normalization.from_dict({"mean": 0.0})
    with pytest.raises(ConfigError):
        Normalization.from_dict({"mean": 0.0, "std": -1})
    with pytest.raises(ValueError):
        Normalization.from_records([np.ones(10)])  # constant: std 0


def test_paper_pad_or_crop_exact():
    x = np.array([1, 2, 3], np.float32)
    assert paper_pad_or_crop(x, 5).tolist() == [0, 0, 1, 2, 3]  # zero padding at the FRONT
    assert paper_pad_or_crop(x, 3).tolist() == [1, 2, 3]
    assert paper_pad_or_crop(np.arange(1, 8), 4).tolist() == [4, 5, 6, 7]  # the LAST samples are kept
    assert paper_pad_or_crop(np.zeros(0), 2).tolist() == [0, 0]
    y = paper_pad_or_crop(np.arange(20000, dtype=np.float64), PAPER_FINETUNE_SAMPLES)
    assert y.dtype == np.float32 and y.shape == (16384,) and y[0] == 20000 - 16384 and y[-1] == 19999
    assert paper_pad_or_crop(x, 5) is not x and x.tolist() == [1, 2, 3]


def test_random_crop_windows_padding_and_determinism():
    x = np.arange(100, dtype=np.float32)
    crops = [random_crop(x, 10, np.random.default_rng(s)) for s in range(50)]
    for c in crops:
        assert c.shape == (10,) and c.dtype == np.float32
        assert np.array_equal(c, np.arange(c[0], c[0] + 10))  # a contiguous window of x
    assert len({int(c[0]) for c in crops}) > 20  # starts vary across seeds
    starts = {int(random_crop(x, 10, np.random.default_rng(s))[0]) for s in range(2000)}
    assert min(starts) == 0 and max(starts) == 90  # first and last windows reachable
    # same seed -> same crop; a generator's successive draws differ
    assert np.array_equal(random_crop(x, 10, np.random.default_rng(7)), random_crop(x, 10, np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    assert not all(np.array_equal(random_crop(x, 10, rng), random_crop(x, 10, rng)) for _ in range(5))
    # shorter than the crop: padded at the front, like the paper's input
    assert random_crop(np.array([5.0, 6.0]), 4, np.random.default_rng(0)).tolist() == [0, 0, 5, 6]
    assert random_crop(x, 100, np.random.default_rng(0)).tolist() == x.tolist()


@pytest.mark.parametrize("n,length,hop", [(100, 10, 10), (100, 10, 3), (105, 10, 10), (99, 30, 15), (31, 30, 30), (30, 30, 5), (7, 30, 5), (0, 4, 2), (2701, 1250, 625)])
def test_sliding_windows_cover_every_sample(n, length, hop):
    x = np.arange(1, n + 1, dtype=np.float32)  # sample value = its position + 1, 0 only in padding
    w = sliding_windows(x, length, hop)
    starts = window_starts(n, length, hop)
    assert w.dtype == np.float32 and w.shape == (len(starts), length)
    covered = set(w[w > 0].astype(int).tolist())
    assert covered == set(range(1, n + 1))  # no sample missed
    if n >= length:
        assert w[-1, -1] == n and w[-1].tolist() == x[-length:].tolist()  # the last window ends at the end
        gaps = np.diff(starts)
        assert np.all(gaps[:-1] == hop) and np.all((gaps > 0) & (gaps <= hop))
        for s, row in zip(starts, w):
            assert row.tolist() == x[s : s + length].tolist()
        assert len(starts) == (n - length) // hop + 1 + int((n - length) % hop != 0)
    else:  # short record: one window, zero-padded at the front
        assert w.shape[0] == 1 and w[0].tolist() == paper_pad_or_crop(x, length).tolist()


def test_sliding_windows_rejects_bad_sizes():
    with pytest.raises(ValueError):
        sliding_windows(np.zeros(10), 0, 1)
    with pytest.raises(ValueError):
        sliding_windows(np.zeros(10), 5, 0)
    with pytest.raises(ValueError):
        sliding_windows(np.zeros((2, 10)), 5, 1)


# ----------------------------------------------------------------------------- splits on the real labels
@pytest.fixture(scope="module")
def cinc(cinc_folder):
    data = Cinc2017(cinc_folder)
    names = list(data.names)
    return data, names, [data.labels[n] for n in names]


def _proportions(names, label_of):
    counts = collections.Counter(label_of[n] for n in names)
    return np.array([counts[c] / len(names) for c in CINC_CLASSES])


def test_make_splits_on_real_v3_labels(cinc):
    data, names, labels = cinc
    assert len(names) == 7248 and data.label_file.name == "REFERENCE-v3.csv"
    splits = make_splits(names, labels, seed=0)
    tr, va, te = splits["train"], splits["val"], splits["test"]
    # 80 / 15 / 5 %: test 20% of all, validation 5% of ALL (6.25% of the 80%)
    assert (len(tr), len(va), len(te)) == (7248 - 1450 - 362, 362, 1450)
    assert len(va) / (len(tr) + len(va)) == pytest.approx(0.0625, abs=0.001)
    assert set(tr).isdisjoint(va) and set(tr).isdisjoint(te) and set(va).isdisjoint(te)
    assert sorted(tr + va + te) == sorted(names)
    assert all(part == sorted(part) for part in splits.values())
    whole = _proportions(names, data.labels)
    for key, part in splits.items():
        assert np.abs(_proportions(part, data.labels) - whole).max() < 0.01, key  # within 1 percentage point
        assert all(c in {data.labels[n] for n in part} for c in CINC_CLASSES)
    # deterministic for a seed, independent of the input order; another seed differs
    order = np.random.default_rng(1).permutation(len(names))
    assert make_splits([names[i] for i in order], [labels[i] for i in order], seed=0) == splits
    assert make_splits(names, labels, seed=1)["test"] != te
    # other fractions
    other = make_splits(names, labels, test_fraction=0.3, val_fraction=0.0, seed=3)
    assert len(other["test"]) == round(0.3 * 7248) and other["val"] == []


def test_save_load_round_trip_and_tampering(cinc, tmp_path):
    data, names, labels = cinc
    splits = make_splits(names, labels, seed=0)
    path = save_splits(tmp_path / "sub" / "splits.json", splits, labels=data.labels, seed=0, test_fraction=0.2, val_fraction=0.05, label_file=data.label_file)
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left behind
    assert load_splits(path) == splits
    assert load_splits(path, names=names) == splits
    loaded, meta = load_splits(path, return_meta=True)
    assert meta["seed"] == 0 and meta["val_fraction"] == 0.05 and meta["label_file"].endswith("REFERENCE-v3.csv")
    doc = json.loads(path.read_text())
    assert doc["counts"]["test"]["total"] == 1450
    assert sum(doc["counts"][k]["A"] for k in ("train", "val", "test")) == 627
    assert sum(doc["counts"][k][c] for k in ("train", "val", "test") for c in CINC_CLASSES) == 7248

    # a tampered file: a test record also listed in train (counts adjusted so only the overlap is wrong)
    doc["splits"]["train"].append(doc["splits"]["test"][0])
    doc["counts"]["train"]["total"] += 1
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="tampered.json.*overlap"):
        load_splits(bad)
    # other problems, each naming the file
    doc["splits"]["train"].pop()
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="tampered.json.*counts"):
        load_splits(bad)
    del doc["splits"]["val"]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="tampered.json.*'val'"):
        load_splits(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="tampered.json"):
        load_splits(bad)
    with pytest.raises(ConfigError, match="missing.json"):
        load_splits(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="not in the data"):
        load_splits(path, names=names[:-100])
    with pytest.raises(ConfigError, match="overlap"):
        save_splits(tmp_path / "x.json", {"train": ["a", "b"], "val": [], "test": ["b"]})


def test_kfold_covers_every_record_once(cinc):
    data, names, labels = cinc
    folds = kfold_splits(names, labels, k=5, seed=0)
    assert len(folds) == 5
    tests = [n for f in folds for n in f["test"]]
    assert len(tests) == len(names) and set(tests) == set(names)  # each record is a test record exactly once
    whole = _proportions(names, data.labels)
    for f in folds:
        assert sorted(f["train"] + f["val"] + f["test"]) == sorted(names)
        assert set(f["train"]).isdisjoint(f["val"]) and set(f["train"]).isdisjoint(f["test"]) and set(f["val"]).isdisjoint(f["test"])
        assert len(f["val"]) == 362 and abs(len(f["test"]) - 7248 / 5) <= 1
        for key in ("train", "test"):
            assert np.abs(_proportions(f[key], data.labels) - whole).max() < 0.01
    assert kfold_splits(names, labels, k=5, seed=0) == folds


def test_subset_labels_stratified_nested_and_keeps_every_class(cinc):
    data, names, labels = cinc
    train = make_splits(names, labels, seed=0)["train"]
    train_labels = [data.labels[n] for n in train]
    per_class = collections.Counter(train_labels)
    small = subset_labels(train, train_labels, 0.01, seed=0)
    assert set(small) <= set(train) and small == sorted(small)
    assert collections.Counter(data.labels[n] for n in small) == {c: max(1, round(0.01 * per_class[c])) for c in CINC_CLASSES}
    tiny = subset_labels(train, train_labels, 0.0001, seed=0)
    assert collections.Counter(data.labels[n] for n in tiny) == {c: 1 for c in CINC_CLASSES}  # at least one per class
    tenth = subset_labels(train, train_labels, 0.1, seed=0)
    assert set(small) <= set(tenth) <= set(subset_labels(train, train_labels, 0.2, seed=0))  # nested for a seed
    assert subset_labels(train, train_labels, 0.1, seed=0) == tenth != subset_labels(train, train_labels, 0.1, seed=1)
    assert subset_labels(train, train_labels, 1.0) == sorted(train)


def test_splits_reject_bad_input():
    with pytest.raises(ValueError):
        make_splits(["a", "a", "b"], ["N", "N", "A"])
    with pytest.raises(ValueError):
        make_splits(["a", "b"], ["N"])
    with pytest.raises(ValueError):
        make_splits([f"r{i}" for i in range(10)], ["N"] * 10, test_fraction=0.6, val_fraction=0.5)
    with pytest.raises(ValueError):
        subset_labels(["a"], ["N"], 0.0)


# ----------------------------------------------------------------------------- datasets
def test_encode_labels():
    assert encode_labels(["N", "A", "O", "~", None, 2], 6).tolist() == [0, 1, 2, 3, -1, 2]
    assert encode_labels(None, 3).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError):
        encode_labels(["X"], 1)
    with pytest.raises(ValueError):
        encode_labels([4], 1)


def test_datasets_on_hand_built_signals():
    signals = [np.arange(1, n + 1, dtype=np.float32) for n in (5, 12, 30)]
    labels = ["N", "~", None]
    crop = CincCropDataset(signals, labels, crop_samples=8, seed=3)
    x, y = crop[0]
    assert x.shape == (1, 8) and x.dtype == torch.float32 and y == 0
    assert x[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    assert crop[1][1] == 3 and crop[2][1] == -1
    # deterministic per (seed, epoch, index), new crops in a new epoch
    first = [crop[2][0] for _ in range(2)]
    assert torch.equal(first[0], first[1])
    assert torch.equal(CincCropDataset(signals, labels, 8, seed=3)[2][0], first[0])
    epochs = []
    for e in range(10):
        crop.set_epoch(e)
        epochs.append(int(crop[2][0][0, 0]))
    assert len(set(epochs)) > 1
    crop.set_epoch(0)
    assert torch.equal(crop[2][0], first[0])

    paper = CincPaperDataset(signals, labels, length=10)
    assert [paper[i][0].shape for i in range(3)] == [(1, 10)] * 3
    assert paper[0][0][0].tolist() == [0] * 5 + [1, 2, 3, 4, 5] and paper[2][0][0].tolist() == list(range(21, 31))
    assert CincPaperDataset(signals, None).length == PAPER_FINETUNE_SAMPLES and CincPaperDataset(signals, None)[0][1] == -1

    win = CincWindowDataset(signals, labels, window_samples=10, hop_samples=5)
    # record 0 (5 samples): 1 padded window; record 1 (12): starts 0, 2; record 2 (30): 0, 5, ..., 20
    assert len(win) == 1 + 2 + 5 and win.record_index.tolist() == [0, 1, 1, 2, 2, 2, 2, 2]
    items = [win[j] for j in range(len(win))]
    assert all(x.shape == (1, 10) and x.dtype == torch.float32 for x, _ in items)
    assert [r for _, r in items] == win.record_index.tolist()
    for r, sig in enumerate(signals):
        rows = np.stack([x[0].numpy() for x, rr in items if rr == r])
        assert np.array_equal(rows, sliding_windows(sig, 10, 5))
    loader = torch.utils.data.DataLoader(win, batch_size=3)
    batches = list(loader)
    assert batches[0][0].shape == (3, 1, 10) and torch.cat([b[1] for b in batches]).tolist() == win.record_index.tolist()


def test_aggregate_windows_averages_per_record():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5], [0.0, 1.0]])
    rec = np.array([0, 1, 1, 2, 1])
    out = aggregate_windows(probs, rec)
    assert out.shape == (3, 2)
    assert np.allclose(out, [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert np.allclose(aggregate_windows(torch.tensor(probs), torch.tensor(rec), n_records=3), out)
    with pytest.raises(ValueError, match="without any window"):
        aggregate_windows(probs, rec, n_records=4)
    with pytest.raises(ValueError):
        aggregate_windows(probs, rec[:-1])


def test_datasets_on_real_cinc_records(cinc):
    data, names, labels = cinc
    subset = names[:: len(names) // 40][:40]
    records, failures = data.read_all(progress=False, names=subset)
    assert not failures and len(records) == 40
    norm = Normalization.from_records([r.signal for r in records])
    assert -0.1 < norm.mean < 0.1 and 0.05 < norm.std < 1.0  # mV
    for fs_out in (PAPER_FINETUNE_FS_HZ, 125):
        signals = prepare_cinc(records, fs_out, norm)
        assert all(s.dtype == np.float32 and s.shape[0] == resampled_length(r.signal.shape[0], 300, fs_out) for s, r in zip(signals, records))
    signals = prepare_cinc(records, PAPER_FINETUNE_FS_HZ, PAPER_CINC)
    z = np.concatenate(prepare_cinc(records, 300, norm))
    assert abs(z.mean()) < 1e-3 and z.std() == pytest.approx(1.0, abs=1e-3)
    y_true = [r.label_index for r in records]

    paper = CincPaperDataset(signals, [r.label for r in records])
    x, y = paper[0]
    assert x.shape == (1, PAPER_FINETUNE_SAMPLES) and y == y_true[0]
    n0 = signals[0].shape[0]
    assert n0 < PAPER_FINETUNE_SAMPLES and torch.all(x[0, : PAPER_FINETUNE_SAMPLES - n0] == 0)
    assert np.array_equal(x[0, -n0:].numpy(), signals[0])

    crop = CincCropDataset(signals, y_true, crop_samples=seconds(10))
    batch = next(iter(torch.utils.data.DataLoader(crop, batch_size=16, shuffle=False)))
    assert batch[0].shape == (16, 1, 2500) and batch[1].tolist() == y_true[:16]

    win = CincWindowDataset(signals, y_true, window_samples=seconds(10), hop_samples=seconds(5))
    assert win.n_records == 40 and set(win.record_index.tolist()) == set(range(40))
    assert win.labels.tolist() == y_true
    fake = np.random.default_rng(0).dirichlet(np.ones(4), size=len(win))
    agg = aggregate_windows(fake, win.record_index, win.n_records)
    assert agg.shape == (40, 4) and np.allclose(agg.sum(axis=1), 1.0)
    assert np.allclose(agg[5], fake[win.record_index == 5].mean(axis=0))

    unlabelled = CincWindowDataset(signals, None, 2500, 1250)
    assert unlabelled.labels.tolist() == [-1] * 40 and unlabelled[0][0].shape == (1, 2500)


def seconds(s, fs=PAPER_FINETUNE_FS_HZ):
    return int(s * fs)
