"""Data-layer benchmark on the real data of ../shared/data: download, reading, prepare, frame access, frame sampling.

    python benchmarks/bench_data.py [--shared-data ../shared/data] [--out benchmarks/results/bench_data.json]

Prints absolute figures and ratios measured side by side in the same run (this machine is
shared and noisy: compare ratios, not absolute numbers across runs), and writes them as JSON.
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
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import wfdb
from torch.utils.data import DataLoader

from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.download import download
from ecgtl.data.icentia11k import IcentiaTorrentPatient, IcentiaWfdbPatient
from ecgtl.data.sampling import FrameSampler
from ecgtl.data.store import Store, prepare
from ecgtl.data.wfdb_database import database_records
from ecgtl.pipeline import unpack_local_mirror


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default="benchmarks/results/bench_data.json")
    ap.add_argument("--frames", type=int, default=2000, help="random frames for the access benchmark")
    ap.add_argument("--sampler-frames", type=int, default=20000, help="frames per round for the sampler benchmarks")
    args = ap.parse_args()
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
    out = Path(args.out)
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
