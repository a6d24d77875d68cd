"""Frame sampling for pre-training on a real store (10 MIT-BIH records + Icentia11k patient 0).

Covers: determinism per (seed, round); frames are exact slices of the store and
never cross segments; labels equal the task label functions; sharding over DDP
ranks and DataLoader workers without overlap and with equal frame counts;
patient splits stable when patients are added; nested fraction subsets;
fixed validation frames; normalisation; unreadable and unusable patients.
"""

from __future__ import annotations

import functools
import shutil
import types
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ecgtl.data import sampling
from ecgtl.data.icentia11k import IcentiaWfdbPatient
from ecgtl.data.sampling import FrameSampler, estimate_normalization, fixed_frames, select_fraction, split_patients
from ecgtl.data.store import SIGNAL_FILE, UNCOMPRESSED_FILES, Store, StoredPatient, prepare, write_manifest
from ecgtl.data.wfdb_database import database_records
from ecgtl.errors import DataError
from ecgtl.tasks import beat_label, heart_rate_label, rhythm_label

ICENTIA = "icentia11k/p00000"
NORM = (-0.2, 0.4)  # an arbitrary (mean, std) in mV: the tests undo it


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def store_root(mirror, icentia_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sampling-store")
    jobs = database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:10]
    jobs.append((ICENTIA, functools.partial(IcentiaWfdbPatient, icentia_root, 0)))
    report = prepare(root, jobs, progress=False)
    assert not report.failures, report.summary()
    return root


@pytest.fixture(scope="module")
def store(store_root) -> Store:
    return Store(store_root)


def _run(sampler: FrameSampler, round_index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All frames of one round, in order: x (N, L), y, patient index, start."""
    sampler.set_round(round_index)
    xs, ys, ps, ss = [], [], [], []
    for x, y, p, s in sampler:
        xs.append(x[0].numpy())
        ys.append(int(y))
        ps.append(int(p))
        ss.append(int(s))
    return np.stack(xs), np.array(ys), np.array(ps), np.array(ss)


def _sampler(store_root, store, patient_ids=None, **kw) -> FrameSampler:
    args = dict(frame_samples=2048, frames_per_patient=64, task="beat", seed=3, normalization=NORM, return_position=True)
    args.update(kw)
    return FrameSampler(store_root, store.patient_ids if patient_ids is None else patient_ids, **args)


# --------------------------------------------------------------------------- determinism
def test_same_seed_and_round_same_frames_other_round_or_seed_differs(store_root, store):
    a = _run(_sampler(store_root, store), 0)
    b = _run(_sampler(store_root, store), 0)  # a fresh instance
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    s = _sampler(store_root, store)
    again = _run(s, 0), _run(s, 1), _run(s, 0)  # the same instance, rounds switched back and forth
    np.testing.assert_array_equal(again[0][0], a[0])
    np.testing.assert_array_equal(again[2][0], a[0])
    assert not np.array_equal(np.sort(again[1][3]), np.sort(a[3]))  # other round, other starts
    other_seed = _run(_sampler(store_root, store, seed=4), 0)
    assert not np.array_equal(np.sort(other_seed[3]), np.sort(a[3]))
    assert len(a[0]) == len(_sampler(store_root, store)) == 11 * 64


# --------------------------------------------------------------------------- frames and labels
@pytest.mark.parametrize("task", ["beat", "rhythm", "heart_rate", "future"])
def test_frames_are_exact_store_slices_and_labels_match_the_task(store_root, store, task):
    L = 2048
    s = _sampler(store_root, store, task=task, frames_per_patient=48, frame_samples=L)
    x, y, p, starts = _run(s, 2)
    assert x.dtype == np.float32 and y.dtype == np.int64 and len(x) == len(s)
    mean, std = NORM
    for index in np.unique(p):
        patient = store.open(s.patient_ids[index])
        sel = p == index
        off = patient.segment_offsets
        seg = np.searchsorted(off, starts[sel], side="right") - 1
        assert np.all(starts[sel] >= off[seg]) and np.all(starts[sel] + L <= off[seg + 1]), "frame crosses a segment"
        for xi, g, k in zip(x[sel], starts[sel], seg):
            ref = patient.frame(int(k), int(g - off[k]), L)
            np.testing.assert_array_equal(xi, (ref - np.float32(mean)) / np.float32(std))  # the same float32 arithmetic
            np.testing.assert_allclose(xi * std + mean, ref, atol=1e-5)  # undoing the normalisation
        if task == "beat":
            want = beat_label(patient.beat_sample, patient.beat_class, starts[sel], L, segment_offsets=off)
        elif task == "rhythm":
            want = rhythm_label(patient.beat_sample, patient.rhythm, starts[sel], L, patient.fs, segment_offsets=off)
        elif task == "heart_rate":
            want = heart_rate_label(patient.beat_sample, starts[sel], L, patient.fs, segment_offsets=off)
        else:
            want = np.full(sel.sum(), -1)
        np.testing.assert_array_equal(y[sel], want)
    if task == "beat":
        assert len(set(y.tolist())) >= 3  # MIT-BIH brings PVCs / PACs, not only normal beats


def test_frames_never_cross_segments(store_root, store):
    """Frames almost as long as a segment: the start range per segment is tiny, a crossing would show."""
    L = 1_040_000  # Icentia segments: 1,048,577 samples; MIT-BIH records (451,389) are too short
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = FrameSampler(store_root, store.patient_ids, L, 40, "rhythm", seed=1, shuffle_buffer=0, return_position=True)
    assert s.patient_ids == [ICENTIA] and len(s.unusable) == 10 and len(s) == 40
    assert s.block_frames < 40  # read in several blocks
    patient = store.open(ICENTIA)
    off = patient.segment_offsets
    n = 0
    for x, y, p, g in s:
        k = int(np.searchsorted(off, int(g), side="right") - 1)
        assert off[k] <= g and g + L <= off[k + 1]
        if n in (0, 39):
            np.testing.assert_array_equal(x[0].numpy(), patient.frame(k, int(g - off[k]), L))
        n += 1
    assert n == 40


def test_segment_then_start_uniform(store_root, store):
    s = FrameSampler(store_root, [ICENTIA], 2048, 5000, "future", seed=2, shuffle_buffer=0, return_position=True)
    starts = np.array([int(g) for _, _, _, g in s])
    off = store.open(ICENTIA).segment_offsets
    seg = np.searchsorted(off, starts, side="right") - 1
    counts = np.bincount(seg, minlength=50)
    assert counts.min() > 50 and counts.max() < 160  # 100 expected per segment
    within = (starts - off[seg]) / (np.diff(off)[seg] - 2048)
    assert np.all(within <= 1) and 0.45 < within.mean() < 0.55  # uniform start inside the segment
    assert np.all(starts[1:] >= starts[:-1])  # read in file order when not shuffled


def test_future_prediction_frames_without_labels(store_root, store):
    s = FrameSampler(store_root, store.patient_ids, 9 * 2048, 8, "future", normalization=NORM, shuffle_buffer=32)
    items = list(s)
    assert len(items) == len(s) == 88
    assert all(x.shape == (1, 9 * 2048) and x.dtype == torch.float32 and int(y) == -1 for x, y in items)


def test_shuffle_buffer_mixes_patients(store_root, store):
    _, _, p, _ = _run(_sampler(store_root, store, frames_per_patient=64, shuffle_buffer=256), 0)
    assert len(set(p[:64].tolist())) >= 3  # the first 64 frames come from several patients
    assert Counter(p.tolist()) == {i: 64 for i in range(11)}  # and every frame comes out exactly once
    _, _, p0, _ = _run(_sampler(store_root, store, frames_per_patient=64, shuffle_buffer=0), 0)
    assert len(set(p0[:64].tolist())) == 1  # no buffer: patient after patient


def test_sources_filter(store_root, store):
    assert _sampler(store_root, store, sources=["mitdb"]).patient_ids == [p for p in store.patient_ids if p.startswith("mitdb/")]
    assert _sampler(store_root, store, sources="icentia11k-wfdb").patient_ids == [ICENTIA]
    assert _sampler(store_root, store, sources=["icentia11k"]).patient_ids == [ICENTIA]


# --------------------------------------------------------------------------- sharding
def test_ranks_get_disjoint_equal_shards_and_all_patients_over_rounds(store_root, store):
    r0 = _sampler(store_root, store, rank=0, world_size=2, frames_per_patient=16)
    r1 = _sampler(store_root, store, rank=1, world_size=2, frames_per_patient=16)
    assert r0.frames_per_rank() == r1.frames_per_rank() == len(r0) == len(r1) == 5 * 16  # 11 patients: 5 + 5, 1 left out
    used = set()
    for rnd in range(8):
        a, b = r0.patients_of_rank(0, 2, rnd), r0.patients_of_rank(1, 2, rnd)
        assert len(a) == len(b) == 5 and not set(a) & set(b)
        assert a == r1.patients_of_rank(0, 2, rnd) and b == r1.patients_of_rank(1, 2, rnd)  # every rank agrees
        used |= set(a) | set(b)
    assert used == set(store.patient_ids)  # the left-out patient changes with the round
    for rnd in (0, 3):
        _, _, p0, _ = _run(r0, rnd)
        _, _, p1, _ = _run(r1, rnd)
        assert len(p0) == len(p1) == 80  # DDP: exactly the same number of frames on every rank
        assert {r0.patient_ids[i] for i in p0} == set(r0.patients_of_rank(0, 2, rnd))
        assert {r1.patient_ids[i] for i in p1} == set(r1.patients_of_rank(1, 2, rnd))
    with pytest.raises(ValueError):
        _sampler(store_root, store, rank=2, world_size=2)
    with pytest.raises(ValueError):
        _sampler(store_root, store, world_size=12)  # fewer patients than ranks


def test_workers_mocked_disjoint_and_deterministic(store_root, store, monkeypatch):
    s = _sampler(store_root, store, rank=1, world_size=2, frames_per_patient=16)
    per_worker = {}
    for w in range(2):
        monkeypatch.setattr(sampling, "get_worker_info", lambda w=w: types.SimpleNamespace(id=w, num_workers=2))
        first = _run(s, 5)
        second = _run(s, 5)
        np.testing.assert_array_equal(first[0], second[0])  # deterministic per (seed, round, rank, worker)
        per_worker[w] = first
        assert {s.patient_ids[i] for i in first[2]} == set(s.patients_of_worker(w, 2, 5))
    assert not set(per_worker[0][2]) & set(per_worker[1][2])
    assert [len(per_worker[w][2]) for w in range(2)] == s.frames_per_worker(2) == [48, 32]
    monkeypatch.setattr(sampling, "get_worker_info", lambda: None)
    whole = _run(s, 5)
    # a patient's frames do not depend on which worker reads it
    split = sorted(zip(np.concatenate([per_worker[0][2], per_worker[1][2]]), np.concatenate([per_worker[0][3], per_worker[1][3]])))
    assert split == sorted(zip(whole[2], whole[3]))


def test_dataloader_two_workers_persistent_rounds(store_root, store):
    s = _sampler(store_root, store, frames_per_patient=20, shuffle_buffer=64)
    bs = 8
    loader = DataLoader(s, batch_size=bs, num_workers=2, drop_last=True, persistent_workers=True)
    expected = s.batches_per_round(bs, num_workers=2)
    assert expected == (6 * 20) // bs + (5 * 20) // bs
    single = {r: _run(_sampler(store_root, store, frames_per_patient=20, shuffle_buffer=64), r) for r in (0, 1)}
    for rnd in (0, 1):
        s.set_round(rnd)  # reaches the persistent workers through shared memory
        batches = list(loader)
        assert len(batches) == expected
        shards = [{s.patient_ids.index(q) for q in s.patients_of_worker(w, 2, rnd)} for w in range(2)]
        assert len(shards[0]) == 6 and len(shards[1]) == 5 and not shards[0] & shards[1]
        # each batch comes from one worker, so all its frames come from one worker's shard
        owner = [next(w for w in range(2) if set(p.tolist()) <= shards[w]) for _, _, p, _ in batches]
        assert Counter(owner) == {0: 120 // bs, 1: 100 // bs}
        got = Counter((int(p), int(g)) for _, _, pp, gg in batches for p, g in zip(pp, gg))
        want = Counter(zip(single[rnd][2].tolist(), single[rnd][3].tolist()))
        assert not got - want  # every frame of the loader is one of the round's frames (some dropped by drop_last)
        assert sum(want.values()) - sum(got.values()) < 2 * bs


# --------------------------------------------------------------------------- splits
def test_split_is_stable_when_patients_are_added(store):
    ids = [f"icentia11k/p{i:05d}" for i in range(4000)]
    train, val = split_patients(ids, 0.05, seed=0)
    assert 0.04 < len(val) / len(ids) < 0.06 and not set(train) & set(val) and len(train) + len(val) == 4000
    assert train == [p for p in ids if p in set(train)]  # order of the input kept
    more = ids + [f"icentia11k/p{i:05d}" for i in range(4000, 6000)] + [f"mitdb/{i}" for i in range(100, 150)]
    train2, val2 = split_patients(list(reversed(more)), 0.05, seed=0)
    assert set(val) <= set(val2) and set(train) <= set(train2)  # nobody moved
    assert split_patients(ids, 0.05, seed=1)[1] != val
    assert split_patients(ids, 0.05, seed=0) == (train, val)
    # tiny stores: at least one validation and one training patient
    for n in (2, 3, 11):
        tr, va = split_patients(store.patient_ids[:n], 0.05)
        assert len(va) >= 1 and len(tr) >= 1 and len(tr) + len(va) == n
    assert split_patients(["a"], 0.05) == (["a"], [])
    with pytest.raises(ValueError):
        split_patients(["a", "a"])


def test_fraction_subsets_are_nested(store):
    ids = [f"icentia11k/p{i:05d}" for i in range(3000)]
    subsets = {f: select_fraction(ids, f, seed=7) for f in (0.0001, 0.01, 0.1, 0.2, 1.0)}
    assert [len(subsets[f]) for f in sorted(subsets)] == [1, 30, 300, 600, 3000]
    order = sorted(subsets)
    for small, big in zip(order, order[1:]):
        assert set(subsets[small]) <= set(subsets[big])
    assert select_fraction(ids, 0.1, seed=7) == subsets[0.1]
    assert set(select_fraction(ids, 0.1, seed=8)) != set(subsets[0.1])
    assert select_fraction(store.patient_ids, 0.01, seed=0) != []
    explicit = ["icentia11k/p00007", "icentia11k/p00003"]
    assert select_fraction(ids, explicit) == ["icentia11k/p00003", "icentia11k/p00007"]
    with pytest.raises(ValueError):
        select_fraction(ids, ["mitdb/100"])
    with pytest.raises(ValueError):
        select_fraction(ids, 0.0)


# --------------------------------------------------------------------------- validation frames, normalisation
def test_fixed_frames_are_deterministic_and_exact(store_root, store):
    ids = store.patient_ids
    x, y = fixed_frames(store_root, ids, 2048, 16, "beat", seed=0, normalization=NORM)
    x2, y2 = fixed_frames(store_root, list(reversed(ids)), 2048, 16, "beat", seed=0, normalization=NORM)
    assert x.shape == (11 * 16, 1, 2048) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # a patient's frames do not depend on the other patients
    xs, ys = fixed_frames(store_root, ids[3:5], 2048, 16, "beat", seed=0, normalization=NORM)
    np.testing.assert_array_equal(xs, x[3 * 16:5 * 16])
    np.testing.assert_array_equal(ys, y[3 * 16:5 * 16])
    x3, _ = fixed_frames(store_root, ids, 2048, 16, "beat", seed=1, normalization=NORM)
    assert not np.array_equal(x, x3)
    # every frame is a slice of its patient's signal
    mean, std = NORM
    sorted_ids = sorted(ids)
    for i in (16, 5 * 16 + 3, len(x) - 1):  # MIT-BIH patients (short signals)
        patient = store.open(sorted_ids[i // 16])
        sig = (np.asarray(patient.signal, np.float32) - patient.baseline) / np.float32(patient.gain)
        frame = x[i, 0] * std + mean
        hits = np.flatnonzero(np.isclose(sig[:-2048], frame[0], atol=1e-4))
        assert any(np.allclose(sig[h:h + 2048], frame, atol=1e-4) for h in hits)


def test_estimate_normalization(store_root, store):
    mean, std = estimate_normalization(store_root, store.patient_ids, n_frames=500, frame_samples=2048, seed=0)
    assert (mean, std) == estimate_normalization(store_root, store.patient_ids, n_frames=500, frame_samples=2048, seed=0)
    # reference: every patient weighted equally, statistics from a subsample of all its samples
    means, second = [], []
    for pid in store.patient_ids:
        patient = store.open(pid)
        v = (np.asarray(patient.signal[::13], np.float64) - patient.baseline) / patient.gain
        means.append(v.mean())
        second.append(np.mean(v * v))
    ref_mean = float(np.mean(means))
    ref_std = float(np.sqrt(np.mean(second) - ref_mean**2))
    print(f"\nnormalisation: estimated mean {mean:.4f} std {std:.4f} mV; reference {ref_mean:.4f} / {ref_std:.4f} mV")
    assert abs(mean - ref_mean) < 0.1 * ref_std and abs(std / ref_std - 1) < 0.15
    icentia = estimate_normalization(store_root, [ICENTIA], n_frames=200)
    assert 0.1 < icentia[1] < 0.4  # the WFDB release of patient 0: std about 0.19 mV (protocol notes)


# --------------------------------------------------------------------------- robustness
def test_unreadable_patient_keeps_the_frame_count(store_root, store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(store_root / "patients" / "mitdb", root / "patients" / "mitdb")
    write_manifest(root)
    ids = Store(root).patient_ids
    ok = FrameSampler(root, ids, 2048, 10, "beat", shuffle_buffer=0, return_position=True)
    n_ok = sum(1 for _ in ok)
    bad = root / "patients" / ids[2] / SIGNAL_FILE
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    s = FrameSampler(root, ids, 2048, 10, "beat", shuffle_buffer=0, return_position=True)
    with pytest.warns(RuntimeWarning, match="skipping patient"):
        items = list(s)
    assert len(items) == n_ok == len(s) == 100
    assert s.failures and s.failures[0][0] == ids[2]
    assert ids[2] not in {s.patient_ids[int(p)] for _, _, p, _ in items}


# --------------------------------------------------------------------------- what a visit reads (scale: issue 10)
def _mitdb_copy(store_root: Path, root: Path, n: int, failures=()) -> list[str]:
    for folder in sorted((store_root / "patients" / "mitdb").iterdir())[:n]:
        shutil.copytree(folder, root / "patients" / "mitdb" / folder.name)
    write_manifest(root, failures=failures)
    return Store(root).patient_ids


def test_lean_manifest_read_keeps_only_the_asked_keys(store_root, store, tmp_path):
    """``Store(root, keys=...)``: the patient entries hold only those keys (segment lengths as arrays); the rest is whole."""
    lean = Store(store_root, keys=("fs", "segment_lengths"))
    assert lean.patient_ids == store.patient_ids and lean.manifest["totals"] == store.manifest["totals"]
    for entry, full in zip(lean.patients, store.patients):
        assert set(entry) == {"patient_id", "fs", "segment_lengths"} and entry["fs"] == full["fs"]
        assert entry["segment_lengths"].dtype == np.int64 and entry["segment_lengths"].tolist() == full["segment_lengths"]
    assert [set(e) for e in Store(store_root, keys=()).patients] == [{"patient_id"}] * len(store)
    failure = {"patient_id": "mitdb/999", "error": "truncated"}  # a failure names a patient too: kept whole
    _mitdb_copy(store_root, tmp_path, 2, failures=[failure])
    assert Store(tmp_path, keys=("fs",)).manifest["failures"] == [failure]


def _drop_arrays(folder: Path, names: tuple[str, ...]) -> None:
    """Remove beat arrays from a patient, in both layouts (annotations.npz and the .npy files)."""
    with np.load(folder / "annotations.npz") as z:
        kept = {k: z[k] for k in z.files if k not in names}
    np.savez_compressed(folder / "annotations.npz", **kept)
    for name in names:
        (folder / f"{name}.npy").unlink(missing_ok=True)


@pytest.mark.parametrize("layout", ["npy", "npz"])
def test_a_visit_reads_no_meta_json_and_only_the_beat_arrays_of_its_task(store_root, tmp_path, layout):
    """The sampler opens a patient from its manifest entry (no meta.json per visit) and reads only the beat
    arrays its task reads (beat: positions and classes, never rhythm; future: none), with the same frames;
    from the memory-mapped .npy files, or from annotations.npz in a store written before them ("npz")."""
    ids = _mitdb_copy(store_root, tmp_path, 4)
    kw = dict(frame_samples=2048, frames_per_patient=24, seed=3, normalization=NORM, return_position=True, shuffle_buffer=32)
    want = {task: _run(FrameSampler(tmp_path, ids, task=task, **kw), 1) for task in ("beat", "future")}
    want_fixed = fixed_frames(tmp_path, ids, 2048, 8, "beat", seed=0, normalization=NORM)
    folders = [tmp_path / "patients" / p for p in ids]
    if layout == "npz":
        for folder in folders:
            for f in UNCOMPRESSED_FILES:
                (folder / f).unlink()
    assert StoredPatient(folders[0]).beat_sample.dtype == np.int32  # the store's positions, not an int64 copy
    assert StoredPatient(folders[0]).uncompressed == (layout == "npy")
    for folder in folders:
        (folder / "meta.json").unlink()
        _drop_arrays(folder, ("rhythm",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped patient warns
        for a, b in zip(_run(FrameSampler(tmp_path, ids, task="beat", **kw), 1), want["beat"]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(fixed_frames(tmp_path, ids, 2048, 8, "beat", seed=0, normalization=NORM), want_fixed):
            np.testing.assert_array_equal(a, b)
        for folder in folders:
            _drop_arrays(folder, ("beat_sample", "beat_class"))
        for a, b in zip(_run(FrameSampler(tmp_path, ids, task="future", **kw), 1), want["future"]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="meta.json missing"):
        Store(tmp_path).open(ids[0])
    patient = StoredPatient(folders[0], meta={"patient_id": ids[0], "fs": 250.0, "gain": 200.0, "baseline": 0})
    with pytest.raises(DataError, match="corrupt annotation arrays"):
        patient.rhythm  # noqa: B018 -- read on first use
    with pytest.warns(RuntimeWarning, match="skipping patient"), pytest.raises(DataError, match="no readable patient"):
        _run(FrameSampler(tmp_path, ids, task="rhythm", **kw), 1)  # the rhythm task needs what is gone


def _whole_array_reference(patient: StoredPatient, task: str, starts: np.ndarray, length: int) -> np.ndarray:
    """The labels by the previous whole-array algorithm: per-class cumulative sums over all the patient's beats."""
    from ecgtl.tasks import beat, complete_beat_range, heart_rate, rhythm

    pos = np.asarray(patient.beat_sample, np.int64)
    off = np.asarray(patient.segment_offsets)
    n = len(pos)
    if task == "beat":
        lo, hi = complete_beat_range(pos, starts, length, segment_offsets=off)
        cum = np.zeros((n + 1, 5), np.int64)
        cum[np.arange(1, n + 1), np.asarray(patient.beat_class, np.int64)] = 1
        counts = np.cumsum(cum, axis=0)
        return beat._priority_label(counts[hi] - counts[lo], beat.HIGH_PRIORITY, beat.LOW_PRIORITY, beat.EMPTY_LABEL)
    if task == "heart_rate":
        lo, hi = complete_beat_range(pos, starts, length, segment_offsets=off)
        k = hi - lo
        bpm = np.full(len(starts), np.nan)
        ok = k >= 2
        with np.errstate(divide="ignore"):
            bpm[ok] = 60.0 * patient.fs * (k[ok] - 1) / (pos[hi[ok] - 1] - pos[lo[ok]]).astype(np.float64)
        return heart_rate._classify(bpm)
    lab = np.asarray(patient.rhythm, np.int64)
    end = starts + length
    seg = np.searchsorted(off, starts, side="right") - 1
    seg_lo, seg_hi = np.searchsorted(pos, off[seg]), np.searchsorted(pos, off[seg + 1])
    first = np.clip(np.searchsorted(pos, starts, "right"), seg_lo, seg_hi)
    after = np.clip(np.searchsorted(pos, end, "left"), seg_lo, seg_hi)
    has = first < seg_hi
    last = np.maximum(np.minimum(after, seg_hi - 1), first)
    first_c, last_c = np.minimum(first, n - 1), np.minimum(last, n - 1)
    span = np.zeros(n, np.int64)
    span[1:] = np.diff(pos)
    cum = np.zeros((n + 1, 6), np.int64)
    cum[np.arange(1, n + 1), lab] = span
    cum = np.cumsum(cum, axis=0)
    inner = last_c > first_c + 1
    out = cum[np.where(inner, last_c, 0)] - cum[np.where(inner, first_c + 1, 0)]
    rows, single = np.arange(len(starts)), last_c == first_c
    out[rows, lab[first_c]] += np.where(single, length, pos[first_c] - starts)
    out[rows, lab[last_c]] += np.where(single, 0, end - pos[np.maximum(last_c - 1, 0)])
    out[~has] = 0
    return rhythm._priority_label(out, rhythm.HIGH_PRIORITY, rhythm.LOW_PRIORITY, rhythm.EMPTY_LABEL)


@pytest.mark.parametrize("layout", ["npy", "npz"])
def test_frame_labels_read_only_the_beats_near_the_frames_and_equal_the_whole_array_labels(store_root, tmp_path, layout):
    """On Icentia11k patient 0 (282,712 beats, 50 segments): the sampler's label rules (unchecked, gathering only the
    beats of each frame, on the memory-mapped or decompressed arrays) give the labels of the checked public functions
    and of the previous whole-array algorithm, for random frames and frames starting or ending exactly on beats and
    on segment edges."""
    from ecgtl.tasks import PRETEXT_TASKS

    folder = tmp_path / ICENTIA
    shutil.copytree(store_root / "patients" / ICENTIA, folder)
    if layout == "npz":
        for f in UNCOMPRESSED_FILES:
            (folder / f).unlink()
    patient = StoredPatient(folder)
    assert patient.uncompressed == (layout == "npy") and len(patient.beat_sample) == 282_712
    pos, off = np.asarray(patient.beat_sample), patient.segment_offsets
    rng = np.random.default_rng(11)
    for length in (1, 250, 2048, 4096):
        lens = np.diff(off)
        seg = rng.integers(len(lens), size=3000)
        random = off[seg] + rng.integers(0, lens[seg] - length + 1)
        abnormal = pos[np.asarray(patient.beat_class) >= 2]  # frames around the rare PAC / PVC beats too
        on_beats = np.concatenate([rng.choice(pos, 500), rng.choice(pos, 500) - length, off[:-1], off[1:] - length,
                                   rng.choice(abnormal, 300) - rng.integers(0, length, 300)])
        seg_of = np.searchsorted(off, on_beats, side="right") - 1
        inside = (on_beats >= 0) & (on_beats + length <= off[np.minimum(seg_of + 1, len(off) - 1)])
        starts = np.sort(np.concatenate([random, on_beats[inside]]))
        for task in ("beat", "rhythm", "heart_rate"):
            fast = PRETEXT_TASKS[task].label_frames(patient, starts, length)
            if task == "beat":
                checked = beat_label(pos, patient.beat_class, starts, length, segment_offsets=off)
            elif task == "rhythm":
                checked = rhythm_label(pos, patient.rhythm, starts, length, patient.fs, segment_offsets=off)
            else:
                checked = heart_rate_label(pos, starts, length, patient.fs, segment_offsets=off)
            np.testing.assert_array_equal(fast, checked, err_msg=f"{task} {length}")
            np.testing.assert_array_equal(fast, _whole_array_reference(patient, task, starts, length), err_msg=f"{task} {length}")
            if length == 4096:  # the frames reach the classes of patient 0 (normal, undefined, 2 PAC beats; noise, NSR)
                assert len(np.unique(fast)) >= {"beat": 3, "rhythm": 2, "heart_rate": 3}[task], task


# --------------------------------------------------------------------------- long rounds
def test_long_rounds_yield_every_frame(store_root, store):
    """1,000 frames per patient, shuffled or not, up to 9 x 2048 samples: the whole round comes out.

    Frames/s of these configurations: benchmarks/bench_data.py ("sampler").
    """
    for task, L, buffer in (("beat", 2048, None), ("beat", 2048, 0), ("rhythm", 4096, None), ("future", 9 * 2048, None)):
        s = FrameSampler(store_root, store.patient_ids, L, 1000, task, normalization=NORM, shuffle_buffer=buffer)
        n = 0
        for x, _ in s:
            n += 1
        assert n == len(s) == 11 * 1000, (task, L, buffer)
        assert x.shape == (1, L) and x.dtype == torch.float32


@pytest.mark.parametrize("num_workers, shuffle_buffer", [(0, None), (0, 0), (2, None)])
def test_batch_mode_yields_the_dataloaders_batches_without_a_tensor_per_frame(store_root, store, num_workers, shuffle_buffer):
    """``batch_size=B`` yields exactly the batches DataLoader(batch_size=B, drop_last=True) collates from single frames."""
    kw = dict(shuffle_buffer=shuffle_buffer, frames_per_patient=21)  # 21 frames a patient: batches cross patients
    single = _sampler(store_root, store, **kw)
    batched = _sampler(store_root, store, batch_size=16, **kw)
    single.set_round(2)
    batched.set_round(2)
    expected = list(torch.utils.data.DataLoader(single, batch_size=16, drop_last=True, num_workers=num_workers))
    got = list(torch.utils.data.DataLoader(batched, batch_size=None, num_workers=num_workers))
    assert len(got) == len(expected) == single.batches_per_round(16, num_workers) > 0
    for g, e in zip(got, expected):
        assert g[0].shape == (16, 1, 2048) and g[0].dtype == torch.float32
        for a, b in zip(g, e):  # x, y, patient index, start
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        _sampler(store_root, store, batch_size=0)
