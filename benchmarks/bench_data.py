"""Data-layer benchmark on the real data of ../shared/data: download, reading, prepare, frame access.

    python benchmarks/bench_data.py [--shared-data ../shared/data] [--out benchmarks/results/bench_data.json]

Prints absolute figures and ratios measured side by side in the same run (this machine is
shared and noisy: compare ratios, not absolute numbers across runs), and writes them as JSON.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import wfdb

from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.download import download
from ecgtl.data.icentia11k import IcentiaWfdbPatient
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--out", default="benchmarks/results/bench_data.json")
    ap.add_argument("--frames", type=int, default=2000, help="random frames for the access benchmark")
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    d, c, i, p, f = res["download"], res["cinc_read"], res["icentia_read"], res["prepare_icentia"], res["frame_access_4096"]
    print(f"download over loopback HTTP: {d['mb_per_s']:.0f} MB/s ({d['ratio_to_plain_copy']:.2f}x a plain file copy)")
    print(f"CinC 2017 read: {c['records_per_s']:.0f} records/s ({c['ratio_to_wfdb']:.2f}x wfdb.rdrecord)")
    print(f"Icentia11k patient read: {i['seconds_per_patient']:.2f} s/patient ({i['speedup_vs_wfdb']:.2f}x faster than wfdb)")
    print(f"prepare Icentia11k: {p['seconds_per_patient']:.2f} s/patient, store {p['store_to_raw']:.3f}x raw size; "
          f"MIT-BIH {res['prepare_mitdb']['seconds_per_record_1_worker']:.2f} s/record (1 worker, 360->250 Hz)")
    print(f"random 4096-sample frames: {f['store_frames_per_s']:.0f}/s from the store vs {f['wfdb_frames_per_s']:.0f}/s "
          f"from WFDB ({f['speedup_vs_wfdb']:.0f}x)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
