"""Data-layer benchmark on the real data of ../shared/data: download, reading, prepare, frame access, frame sampling.

    python benchmarks/bench_data.py [--shared-data ../shared/data] [--out benchmarks/results/bench_data.json]
    python benchmarks/bench_data.py --virtual 100,1000,11000 [--store data/store] [--virtual-frames 65536]
        [--repeats 3] [--out benchmarks/results/bench_scale.json]

Prints absolute figures and ratios measured side by side in the same run (this machine is
shared and noisy: compare ratios, not absolute numbers across runs), and writes them as JSON.

``--virtual`` is the scale simulation (issue 10): the pre-training sampler on stores of N
virtual patients (``benchmarks/virtual_store.py``: one real patient's files hard-linked N
times, built in a temporary folder), each scale measured in a fresh process (so peak RSS is
that process's), the scales interleaved over ``--repeats`` passes: start-up (store manifest
+ sampler + first batch), frames/s over a fixed window of frames (by default 65,536 =
1,024 patient visits of 64 frames, so the per-patient work is in every figure), peak RSS,
and the ratios of the largest scale to the smallest, next to the per-core target of issue 10
(50,000 labelled frames/s per CPU core: frames per CPU second of the one-threaded process).
The virtual patients link the source's uncompressed beat arrays when it has them (``ecgtl
prepare --out STORE`` upgrades an older store); the JSON says which layout was measured.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import json
import os
import pickle
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ecgtl.data.sampling import FrameSampler
from ecgtl.data.store import Store, StoredPatient, patient_folder, prepare

# The readers of the real-data sections (wfdb, the download and pipeline modules) are imported where they are
# used: the --virtual measurement processes import only what a pre-training data process imports, so their RSS
# is the sampler's.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_prepare_torrent(shared: Path, root: Path, tmp: Path, wfdb_seconds: float) -> dict:
    """Prepare patient 0 from the torrent release (its real label file + a signal pickle built from the WFDB
    signals, not timed), next to the WFDB release's prepare time measured in the same run."""
    import wfdb

    from ecgtl.data.icentia11k import IcentiaTorrentPatient, IcentiaWfdbPatient

    folder = tmp / "torrent"
    folder.mkdir()
    shutil.copy(shared / "icentia11k-torrent" / "00000_batched_lbls.pkl.gz", folder)
    rows = [wfdb.rdrecord(str(root / "p00" / "p00000" / f"p00000_s{s:02d}"), physical=False).d_signal[:, 0] for s in range(50)]
    with gzip.open(folder / "00000_batched.pkl.gz", "wb", compresslevel=1) as fh:
        pickle.dump(np.stack(rows).astype(np.int16), fh, protocol=2)
    gain = IcentiaWfdbPatient(root, 0).gain
    _, dt = _timed(lambda: prepare(tmp / "store_torrent", [("icentia11k/p00000", functools.partial(IcentiaTorrentPatient, folder, 0, gain))],
                                   progress=False))
    return {"torrent_seconds_per_patient": dt, "torrent_to_wfdb_seconds": dt / wfdb_seconds}


SAMPLER_CASES = (("beat", 2048, None), ("beat", 2048, 0), ("rhythm", 4096, None), ("future", 9 * 2048, None))


def bench_sampler(store_root: Path, frames: int, seed: int = 0) -> list[dict]:
    """Frames/s of a FrameSampler round in one process (best of 2 passes: warm page cache) per (task, frame
    length, shuffle buffer), next to the same number of random ``Patient.frame`` reads of that length from
    the same store (float32 in mV, no labels), measured in the same run."""
    store = Store(store_root)
    ids = store.patient_ids
    per_patient = max(1, frames // len(ids))
    patients = [store.open(p) for p in ids]
    rows = []
    for task, length, buffer in SAMPLER_CASES:
        sampler = FrameSampler(store_root, ids, length, per_patient, task, seed=seed, normalization=(0.0, 0.2),
                               shuffle_buffer=buffer)
        best = 0.0
        for _ in range(2):
            n, dt = _timed(lambda: sum(1 for _ in sampler))
            best = max(best, n / dt)
        rng = np.random.default_rng(seed)
        picks = []
        for _ in range(len(sampler)):
            patient = patients[int(rng.integers(len(patients)))]
            segment = int(rng.integers(patient.n_segments))
            picks.append((patient, segment, int(rng.integers(0, int(patient.segment_lengths[segment]) - length + 1))))
        _, dt_ref = _timed(lambda: [p.frame(s, o, length) for p, s, o in picks])
        ref = len(picks) / dt_ref
        rows.append({"task": task, "frame_samples": length, "shuffle_buffer": sampler.shuffle_buffer, "frames": n,
                     "frames_per_s": best, "float32_mb_per_s": best * length * 4 / 1e6,
                     "patient_frame_reads_per_s": ref, "ratio_to_patient_frame_reads": best / ref})
    return rows


def bench_dataloader(store_root: Path, frames: int, workers: int = 2, batch: int = 64, seed: int = 0) -> dict:
    """Frames/s of a round through a DataLoader with ``workers`` persistent workers (after a warm-up round, as in
    training) next to the same sampler iterated in the main process (``num_workers=0``), measured in the same run."""
    ids = Store(store_root).patient_ids
    sampler = FrameSampler(store_root, ids, 2048, max(1, frames // len(ids)), "beat", seed=seed, normalization=(0.0, 0.2))
    rates = {}
    for w in (0, workers):
        loader = DataLoader(sampler, batch_size=batch, num_workers=w, drop_last=True, persistent_workers=w > 0)
        for r in (0, 1):  # round 0 starts the workers; round 1 is timed
            sampler.set_round(r)
            n, dt = _timed(lambda: sum(len(x) for x, _ in loader))
        rates[w] = n / dt
    return {"workers": workers, "batch": batch, "frame_samples": 2048, "threads": torch.get_num_threads(),
            "frames_per_s": rates[workers], "main_process_frames_per_s": rates[0], "ratio_to_main_process": rates[workers] / rates[0]}


def bench_batches(store_root: Path, frames: int, batch: int = 64, length: int = 4096, seed: int = 0) -> dict:
    """Labelled frames/s per CPU core (one process, one torch thread) of what pre-training iterates: the sampler's
    whole batches (``batch_size=B``, ``DataLoader(batch_size=None)``) vs single frames collated by
    ``DataLoader(batch_size=B)`` (the sampler before batch mode), beat labels, side by side in one run (best of 3)."""
    ids = Store(store_root).patient_ids
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = {}
        for mode in ("single_frames", "batches"):
            sampler = FrameSampler(store_root, ids, length, max(1, frames // len(ids)), "beat", seed=seed, normalization=(0.0, 0.2),
                                   batch_size=batch if mode == "batches" else None)
            loader = DataLoader(sampler, batch_size=None if mode == "batches" else batch, drop_last=mode != "batches")
            best = 0.0
            for r in range(3):
                sampler.set_round(r)
                n, dt = _timed(lambda: sum(len(y) for _, y in loader))
                best = max(best, n / dt)
            rates[mode] = best
    finally:
        torch.set_num_threads(threads)
    return {"task": "beat", "frame_samples": length, "batch": batch, "frames_per_round": n,
            "batches_frames_per_s_per_core": rates["batches"], "single_frames_frames_per_s_per_core": rates["single_frames"],
            "ratio": rates["batches"] / rates["single_frames"], "target_frames_per_s_per_core": 50_000}


SCALE_TARGETS = {"flat_within": 0.10, "rss_mb_per_worker": 1024, "startup_s": 5.0, "frames_per_cpu_s": 50_000}


def _peak_rss_mb() -> float:
    """This process's peak RSS (MB): VmHWM of the process image, not ``ru_maxrss``, which Linux carries over
    ``exec`` from the forking parent (a child of a 400 MB parent would report at least 400 MB)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: kB (Linux)


def scale_child(root: str, frames: int, frames_per_patient: int = 64, length: int = 4096, batch: int = 64,
                seed: int = 0) -> dict:
    """One scale, in this (fresh) process: what a pre-training data process does, timed.

    Start-up: from opening the store (lean manifest read) to the first batch in hand. Then
    ``frames`` more frames, beat labels, whole batches (``DataLoader(batch_size=None)``, one torch thread),
    over as many rounds as it takes (100 patients x 64 frames is 6,400 frames a round): wall and CPU time
    of the window, and the process's peak RSS at the end."""
    torch.set_num_threads(1)
    rss_import = _peak_rss_mb()
    t0 = time.perf_counter()
    ids = Store(root, keys=()).patient_ids
    sampler = FrameSampler(root, ids, length, frames_per_patient, "beat", seed=seed, normalization=(0.0, 0.2),
                           batch_size=batch)
    t_open = time.perf_counter() - t0
    loader = DataLoader(sampler, batch_size=None)
    rounds = [0]

    def batches():
        while True:
            sampler.set_round(rounds[0])
            yield from loader
            rounds[0] += 1

    it = batches()
    next(it)
    startup = time.perf_counter() - t0
    n, t1, c1 = 0, time.perf_counter(), time.process_time()
    while n < frames:
        n += len(next(it)[1])
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    return {"patients": len(ids), "open_s": t_open, "startup_s": startup, "frames": n, "patient_visits": n / frames_per_patient,
            "rounds_touched": rounds[0] + 1, "seconds": wall, "frames_per_s": n / wall, "frames_per_cpu_s": n / cpu,
            "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss_import}


def _run_child(root: Path, frames: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--scale-child", str(root), "--virtual-frames", str(frames)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale child failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _scratch_next_to(store: Path) -> Path:
    """A temporary folder on the store's file system (virtual patients are hard links)."""
    tmp = Path(tempfile.mkdtemp(prefix="ecgtl-scale-"))
    if store.is_dir() and tmp.stat().st_dev != store.stat().st_dev:  # (a missing store: build() says so)
        tmp.rmdir()
        tmp = Path(tempfile.mkdtemp(prefix=".ecgtl-scale-", dir=store.parent))
    return tmp


def bench_virtual(scales: list[int], store: Path, patient: str, frames: int, repeats: int) -> dict:
    """The sampler at every scale (see the module docstring): per scale the best and median of ``repeats``
    fresh processes, the scales interleaved so that the machine's other load spreads over all of them."""
    from virtual_store import build  # benchmarks/, next to this file

    uncompressed = StoredPatient(patient_folder(store, patient)).uncompressed
    layout = "uncompressed .npy beat arrays, memory-mapped" if uncompressed else "annotations.npz only (store not upgraded)"
    if not uncompressed:
        print(f"note: {store} has no uncompressed beat arrays: measuring the old layout (upgrade: ecgtl prepare --out {store})")
    tmp = _scratch_next_to(store)
    try:
        roots, built = {}, {}
        for n in scales:
            roots[n], built[n] = _timed(lambda n=n: build(tmp / f"v{n}", n, store, patient))
        _run_child(roots[scales[0]], min(frames, 8192))  # warm-up, not counted: page cache of the shared files
        runs: dict[int, list[dict]] = {n: [] for n in scales}
        for r in range(repeats):
            for n in scales:
                runs[n].append(_run_child(roots[n], frames))
                row = runs[n][-1]
                print(f"  pass {r + 1}/{repeats}, {n:,} patients: {row['frames_per_s']:,.0f} frames/s "
                      f"({row['frames_per_cpu_s']:,.0f} per CPU s), peak RSS {row['peak_rss_mb']:.0f} MB, "
                      f"start-up {row['startup_s']:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for n in scales:
        rs = runs[n]
        rows.append({"patients": n, "build_s": built[n],
                     "frames_per_s_best": max(r["frames_per_s"] for r in rs),
                     "frames_per_s_median": statistics.median(r["frames_per_s"] for r in rs),
                     "frames_per_cpu_s_median": statistics.median(r["frames_per_cpu_s"] for r in rs),
                     "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs),
                     "startup_s_median": statistics.median(r["startup_s"] for r in rs),
                     "startup_s_max": max(r["startup_s"] for r in rs),
                     "runs": rs})
    lo, hi = rows[0], rows[-1]
    ratios = {"frames_per_s_best": hi["frames_per_s_best"] / lo["frames_per_s_best"],
              "frames_per_s_median": hi["frames_per_s_median"] / lo["frames_per_s_median"],
              "frames_per_cpu_s_median": hi["frames_per_cpu_s_median"] / lo["frames_per_cpu_s_median"],
              "peak_rss_mb_max": hi["peak_rss_mb_max"] / lo["peak_rss_mb_max"],
              "startup_s_median": hi["startup_s_median"] / lo["startup_s_median"]}
    flat = SCALE_TARGETS["flat_within"]
    met = {"frames_per_s_flat": min(ratios["frames_per_s_best"], ratios["frames_per_cpu_s_median"]) >= 1 - flat,
           "rss_flat": ratios["peak_rss_mb_max"] <= 1 + flat,
           "rss_under_1gb": all(r["peak_rss_mb_max"] < SCALE_TARGETS["rss_mb_per_worker"] for r in rows),
           "startup_under_5s": all(r["startup_s_max"] < SCALE_TARGETS["startup_s"] for r in rows),
           "frames_per_cpu_s_at_target": all(r["frames_per_cpu_s_median"] >= SCALE_TARGETS["frames_per_cpu_s"] for r in rows)}
    return {"setup": {"task": "beat", "frame_samples": 4096, "frames_per_patient": 64, "batch": 64, "torch_threads": 1,
                      "source_patient": patient, "beat_arrays": layout, "frames_per_measurement": frames, "repeats": repeats,
                      "method": "a fresh process per scale and pass, scales interleaved; frames/s over the frames after the "
                                "first batch (patients in the sampler's random order, all their work included: opening, "
                                "labels, gather, shuffle buffer, batches); peak RSS = VmHWM of that process (not ru_maxrss, which "
                                "Linux carries over from the forking parent); start-up = "
                                "Store(root, keys=()) + FrameSampler(...) + first batch (imports not counted; "
                                "rss_after_imports_mb is what torch and ecgtl cost before any of it)"},
            "scales": rows, f"ratio_{hi['patients']}_to_{lo['patients']}": ratios, "targets": SCALE_TARGETS, "met": met}


def _print_virtual(res: dict) -> None:
    for row in res["scales"]:
        print(f"{row['patients']:>6,} virtual patients: {row['frames_per_s_best']:,.0f} frames/s best "
              f"({row['frames_per_s_median']:,.0f} median, {row['frames_per_cpu_s_median']:,.0f} per CPU s), "
              f"peak RSS {row['peak_rss_mb_max']:.0f} MB, start-up {row['startup_s_median']:.2f} s (max {row['startup_s_max']:.2f})")
    key = next(k for k in res if k.startswith("ratio_"))
    r = res[key]
    print(f"{key.replace('_', ' ')}: frames/s x{r['frames_per_s_best']:.3f} (best), x{r['frames_per_s_median']:.3f} (median), "
          f"x{r['frames_per_cpu_s_median']:.3f} (per CPU s); peak RSS x{r['peak_rss_mb_max']:.3f}; start-up x{r['startup_s_median']:.2f}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in res["met"].items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_data.json, "
                                                "with --virtual benchmarks/results/bench_scale.json)")
    ap.add_argument("--frames", type=int, default=2000, help="random frames for the access benchmark")
    ap.add_argument("--sampler-frames", type=int, default=20000, help="frames per round for the sampler benchmarks")
    ap.add_argument("--virtual", default=None, help="scale simulation instead: comma-separated patient counts, e.g. 100,1000,11000")
    ap.add_argument("--store", default="data/store", help="--virtual: the store holding the source patient")
    ap.add_argument("--patient", default="icentia11k/p00000", help="--virtual: the patient every virtual patient links to")
    ap.add_argument("--virtual-frames", type=int, default=65536, help="--virtual: frames timed per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="--virtual: fresh processes per scale")
    ap.add_argument("--scale-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_child is not None:  # one measurement process of --virtual
        print(json.dumps(scale_child(args.scale_child, args.virtual_frames)))
        return 0
    if args.virtual is not None:
        scales = sorted(int(n.replace("_", "")) for n in args.virtual.split(","))
        res = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                           "torch": torch.__version__},
               "scale": f"virtual stores of {', '.join(f'{n:,}' for n in scales)} patients on CPU"}
        res.update(bench_virtual(scales, Path(args.store), args.patient, args.virtual_frames, args.repeats))
        out = Path(args.out or "benchmarks/results/bench_scale.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        _print_virtual(res)
        print(f"wrote {out}")
        return 0
    return run_real_data(args)


def run_real_data(args) -> int:
    import wfdb

    from ecgtl.data.cinc2017 import Cinc2017
    from ecgtl.data.download import download
    from ecgtl.data.icentia11k import IcentiaWfdbPatient
    from ecgtl.data.wfdb_database import database_records
    from ecgtl.pipeline import unpack_local_mirror

    shared = Path(args.shared_data)
    if not (shared / "README.md").is_file():
        print(f"skipped: real data not found at {shared}")
        return 0
    res: dict = {"machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
                 "scale": "real data of ../shared/data on CPU"}
    tmp = Path(tempfile.mkdtemp(prefix="ecgtl-bench-"))
    try:
        mirror = tmp / "mirror"
        unpack_local_mirror(shared, mirror)
        server, url = _serve(mirror)
        # --- download over loopback HTTP vs a plain copy of the same files
        rep, dt = _timed(lambda: download("mitdb", tmp / "raw", mirror=url, progress=False))
        rep2, dt2 = _timed(lambda: download("icentia11k", tmp / "raw", mirror=url, patients="0", progress=False))
        server.shutdown()
        nbytes = rep.bytes_downloaded + rep2.bytes_downloaded
        files = [p for d in (mirror / "mitdb", mirror / "icentia11k-continuous-ecg") for p in d.rglob("*") if p.is_file()]
        (tmp / "cp").mkdir()
        _, dt_cp = _timed(lambda: [shutil.copyfile(p, tmp / "cp" / f"{i}") for i, p in enumerate(files)])
        res["download"] = {"bytes": nbytes, "seconds": dt + dt2, "mb_per_s": nbytes / 1e6 / (dt + dt2),
                           "plain_copy_mb_per_s": sum(p.stat().st_size for p in files) / 1e6 / dt_cp}
        res["download"]["ratio_to_plain_copy"] = res["download"]["mb_per_s"] / res["download"]["plain_copy_mb_per_s"]
        # --- CinC reading: our reader vs wfdb.rdrecord on the same records
        download("cinc2017", tmp / "raw", mirror=mirror, progress=False)
        cinc = Cinc2017(tmp / "raw" / "challenge-2017" / "1.0.0" / "training2017")
        (records, _), dt = _timed(lambda: cinc.read_all(progress=False))
        names = cinc.names[:1000]
        _, dt_wfdb = _timed(lambda: [wfdb.rdrecord(str(cinc.folder / n)) for n in names])
        res["cinc_read"] = {"records": len(records), "records_per_s": len(records) / dt,
                            "wfdb_rdrecord_records_per_s": len(names) / dt_wfdb}
        res["cinc_read"]["ratio_to_wfdb"] = res["cinc_read"]["records_per_s"] / res["cinc_read"]["wfdb_rdrecord_records_per_s"]
        # --- Icentia11k patient read: ours vs wfdb.rdrecord + rdann for the 50 segments
        root = tmp / "raw" / "icentia11k-continuous-ecg" / "1.0"
        _, dt = _timed(lambda: list(IcentiaWfdbPatient(root, 0).segments()))
        seg = lambda s: str(root / "p00" / "p00000" / f"p00000_s{s:02d}")  # noqa: E731
        _, dt_wfdb = _timed(lambda: [(wfdb.rdrecord(seg(s)), wfdb.rdann(seg(s), "atr")) for s in range(50)])
        res["icentia_read"] = {"seconds_per_patient": dt, "wfdb_seconds_per_patient": dt_wfdb, "speedup_vs_wfdb": dt_wfdb / dt}
        # --- prepare
        rep, dt = _timed(lambda: prepare(tmp / "store", [("icentia11k/p00000", functools.partial(IcentiaWfdbPatient, root, 0))],
                                         progress=False))
        store = Store(tmp / "store")
        raw_bytes = sum(p.stat().st_size for p in (root / "p00" / "p00000").iterdir())
        res["prepare_icentia"] = {"seconds_per_patient": dt, "store_bytes": store.size_bytes(), "raw_bytes": raw_bytes,
                                  "store_to_raw": store.size_bytes() / raw_bytes}
        res["prepare_icentia"].update(bench_prepare_torrent(shared, root, tmp, dt))
        jobs = database_records(tmp / "raw" / "mitdb" / "1.0.0", "mitdb")
        rep, dt = _timed(lambda: prepare(tmp / "store_mitdb", jobs, workers=1, progress=False))
        res["prepare_mitdb"] = {"records": len(rep.prepared), "seconds_per_record_1_worker": dt / max(1, len(rep.prepared))}
        # --- random frame access: store (memory map) vs wfdb.rdrecord(sampfrom, sampto)
        rng = np.random.default_rng(0)
        patient = store.open("icentia11k/p00000")
        segs = rng.integers(0, 50, args.frames)
        starts = rng.integers(0, patient.segment_lengths.min() - 4096, args.frames)
        _, dt = _timed(lambda: [patient.frame(int(s), int(o), 4096) for s, o in zip(segs, starts)])
        n_wfdb = max(50, args.frames // 10)
        _, dt_wfdb = _timed(lambda: [wfdb.rdrecord(seg(int(s)), sampfrom=int(o), sampto=int(o) + 4096)
                                     for s, o in zip(segs[:n_wfdb], starts[:n_wfdb])])
        res["frame_access_4096"] = {"store_frames_per_s": args.frames / dt, "wfdb_frames_per_s": n_wfdb / dt_wfdb}
        res["frame_access_4096"]["speedup_vs_wfdb"] = res["frame_access_4096"]["store_frames_per_s"] / res["frame_access_4096"]["wfdb_frames_per_s"]
        # --- frame sampling for pre-training (MIT-BIH store: 48 patients), one process and through DataLoader workers
        res["sampler"] = bench_sampler(tmp / "store_mitdb", args.sampler_frames)
        res["sampler_dataloader"] = bench_dataloader(tmp / "store_mitdb", args.sampler_frames)
        res["sampler_batches"] = bench_batches(tmp / "store_mitdb", args.sampler_frames)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out or "benchmarks/results/bench_data.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    d, c, i, p, f = res["download"], res["cinc_read"], res["icentia_read"], res["prepare_icentia"], res["frame_access_4096"]
    print(f"download over loopback HTTP: {d['mb_per_s']:.0f} MB/s ({d['ratio_to_plain_copy']:.2f}x a plain file copy)")
    print(f"CinC 2017 read: {c['records_per_s']:.0f} records/s ({c['ratio_to_wfdb']:.2f}x wfdb.rdrecord)")
    print(f"Icentia11k patient read: {i['seconds_per_patient']:.2f} s/patient ({i['speedup_vs_wfdb']:.2f}x faster than wfdb)")
    print(f"prepare Icentia11k: {p['seconds_per_patient']:.2f} s/patient, store {p['store_to_raw']:.3f}x raw size "
          f"(torrent release: {p['torrent_seconds_per_patient']:.2f} s/patient, {p['torrent_to_wfdb_seconds']:.2f}x the WFDB time); "
          f"MIT-BIH {res['prepare_mitdb']['seconds_per_record_1_worker']:.2f} s/record (1 worker, 360->250 Hz)")
    print(f"random 4096-sample frames: {f['store_frames_per_s']:.0f}/s from the store vs {f['wfdb_frames_per_s']:.0f}/s "
          f"from WFDB ({f['speedup_vs_wfdb']:.0f}x)")
    for row in res["sampler"]:
        print(f"sampler {row['task']}, frames of {row['frame_samples']} samples, shuffle buffer {row['shuffle_buffer']}: "
              f"{row['frames_per_s']:,.0f} frames/s ({row['float32_mb_per_s']:,.0f} MB/s float32), "
              f"{row['ratio_to_patient_frame_reads']:.2f}x Patient.frame reads, 1 process")
    dl = res["sampler_dataloader"]
    print(f"DataLoader, {dl['workers']} workers: {dl['frames_per_s']:,.0f} frames/s ({dl['ratio_to_main_process']:.2f}x the main process)")
    sb = res["sampler_batches"]
    print(f"sampler batches of {sb['batch']} x {sb['frame_samples']} samples, beat labels, 1 core: {sb['batches_frames_per_s_per_core']:,.0f} "
          f"frames/s vs {sb['single_frames_frames_per_s_per_core']:,.0f} collated single frames ({sb['ratio']:.1f}x; "
          f"target {sb['target_frames_per_s_per_core']:,})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
