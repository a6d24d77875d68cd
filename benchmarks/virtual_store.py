"""A store of N virtual patients for scale tests: one real patient's files hard-linked N times.

    python benchmarks/virtual_store.py OUT --patients 11000 [--store data/store]
        [--patient icentia11k/p00000] [--segments K]

Every virtual patient ``icentia11k/p00000 .. p{N-1}`` is a folder whose ``signal.int16``,
``annotations.npz`` and uncompressed beat arrays (``*.npy``, where the source store has them:
``ecgtl prepare --out STORE`` upgrades an older store) are hard links to the source patient's files (no extra disk, but the
sampler opens, memory-maps and parses one patient's files per virtual patient, exactly as it
would with N real patients), and whose ``meta.json`` names it. ``--segments K`` first writes a
trimmed copy of the source patient (its first K segments, e.g. 4 x 70 min for a small file to
carry to a GPU machine) and links to that instead. The manifest lists all N patients.
Rebuilding with another N replaces the folder's patients. Used by ``benchmarks/bench_data.py
--virtual`` (sampler at 100 / 1,000 / 11,000 patients) and by the GPU data-wait check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ecgtl.data.store import (
    ANNOTATIONS_FILE,
    META_FILE,
    SIGNAL_FILE,
    UNCOMPRESSED_FILES,
    Store,
    patient_folder,
    write_manifest,
    write_uncompressed_arrays,
)
from ecgtl.errors import DataError

BASE = ".base"  # the trimmed source patient, inside the virtual store


def trimmed_copy(src: Path, dst: Path, segments: int) -> dict:
    """Write the first ``segments`` segments of the patient at ``src`` to ``dst``; return its meta."""
    meta = json.loads((src / META_FILE).read_text())
    with np.load(src / ANNOTATIONS_FILE, allow_pickle=False) as z:
        ann = {k: z[k] for k in z.files}
    k = min(segments, len(ann["segment_offsets"]) - 1)
    end = int(ann["segment_offsets"][k])
    keep = ann["beat_sample"] < end
    dst.mkdir(parents=True, exist_ok=True)
    signal = np.memmap(src / SIGNAL_FILE, dtype="<i2", mode="r")
    (dst / SIGNAL_FILE).write_bytes(np.asarray(signal[:end]).tobytes())
    np.savez_compressed(dst / ANNOTATIONS_FILE, segment_offsets=ann["segment_offsets"][:k + 1],
                        beat_sample=ann["beat_sample"][keep], beat_class=ann["beat_class"][keep], rhythm=ann["rhythm"][keep])
    meta.update(segments=meta["segments"][:k], segment_lengths=meta["segment_lengths"][:k], n_samples=end,
                n_beats=int(keep.sum()))
    classes, rhythm = ann["beat_class"][keep], ann["rhythm"][keep]
    meta["beat_counts"] = dict(zip(meta["beat_counts"], np.bincount(classes, minlength=len(meta["beat_counts"])).tolist()))
    meta["rhythm_counts"] = dict(zip(meta["rhythm_counts"], np.bincount(rhythm, minlength=len(meta["rhythm_counts"])).tolist()))
    (dst / META_FILE).write_text(json.dumps(meta, indent=1))
    if (src / UNCOMPRESSED_FILES[0]).is_file():  # the trimmed copy has the source's layout
        write_uncompressed_arrays(dst)
    return meta


def build(out: str | os.PathLike, n_patients: int, store: str | os.PathLike = "data/store",
          patient: str = "icentia11k/p00000", segments: int | None = None) -> Path:
    """Build (or rebuild) a virtual store of ``n_patients`` at ``out``; return its path."""
    out = Path(out)
    src = patient_folder(store, patient)
    if not (src / META_FILE).is_file():
        raise DataError(src, "source patient not found: build the store first (`ecgtl pipeline --until cinc`)")
    if (out / "patients").exists():
        shutil.rmtree(out / "patients")
    out.mkdir(parents=True, exist_ok=True)
    if segments is not None:
        base = out / BASE
        if base.exists():
            shutil.rmtree(base)
        meta = trimmed_copy(src, base, segments)
        src = base
    else:
        meta = json.loads((src / META_FILE).read_text())
    source = patient.split("/")[0]
    metas = []
    for i in range(n_patients):
        folder = out / "patients" / source / f"p{i:05d}"
        folder.mkdir(parents=True)
        for name in (SIGNAL_FILE, ANNOTATIONS_FILE, *UNCOMPRESSED_FILES):
            if name in (SIGNAL_FILE, ANNOTATIONS_FILE) or (src / name).is_file():
                os.link(src / name, folder / name)
        m = dict(meta, patient_id=f"{source}/p{i:05d}")
        (folder / META_FILE).write_text(json.dumps(m))
        metas.append(m)
    write_manifest(out, metas)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--store", default="data/store")
    p.add_argument("--patient", default="icentia11k/p00000")
    p.add_argument("--segments", type=int, default=None, help="keep only the source's first K segments")
    args = p.parse_args(argv)
    t = time.perf_counter()
    path = build(args.out, args.patients, args.store, args.patient, args.segments)
    s = Store(path)
    hours = s.manifest["totals"]["hours"]
    print(f"{path}: {len(s)} virtual patients ({hours:,.0f} h of ECG as the sampler sees it) in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
