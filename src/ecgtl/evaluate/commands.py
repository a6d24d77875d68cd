"""``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export``: using a fine-tuned model.

* ``evaluate --checkpoint C --data DIR``: scores a model on any folder in the CinC layout
  (``RECORDS``, ``REFERENCE*.csv``, ``.mat``/``.hea``), writing JSON metrics and per-record
  predictions.
* ``predict FILE ...``: classifies recordings a user brings: WFDB records (``.hea``), CinC
  ``.mat`` (with its ``.hea``), CSV or NumPy ``.npy`` (``--fs`` required; values in mV, or
  raw units with ``--gain``).
* ``export --checkpoint C --out model.onnx``: ONNX with dynamic batch and length, checked
  against PyTorch with onnxruntime on real records.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import Cinc2017, read_record
from ecgtl.data.wfdb_io import check_dat_size, read_header
from ecgtl.errors import ConfigError, DataError, EcgtlError
from ecgtl.evaluate.inference import Classifier, check_recording, find_card, write_predictions
from ecgtl.evaluate.metrics import classification_report, format_report


# --------------------------------------------------------------------------- evaluate
def run_evaluate(checkpoint: str, data: str, labels: str = "v3", out: str | None = None, n_boot: int = 1000,
                 device: str = "cpu", progress: bool = True) -> dict:
    clf = Classifier(checkpoint, device=device)
    cinc = Cinc2017(data, labels=labels)
    if not cinc.labels:
        raise ConfigError(f"{data}: no label file (REFERENCE.csv or REFERENCE-v3.csv); use `ecgtl predict` for unlabelled data")
    records, failures = cinc.read_all(progress=progress)
    for name, why in failures:
        print(f"skipped {name}: {why}")
    if not records:
        raise DataError(data, "no readable record")
    t = time.perf_counter()
    probs = clf.predict_proba([r.signal for r in records], [r.fs for r in records])
    seconds = time.perf_counter() - t
    y = np.array([r.label_index for r in records])
    report = classification_report(y, probs, n_boot=n_boot, split=f"folder {data}")
    splits_file = find_card(checkpoint).parent / "splits.json"
    if splits_file.is_file():  # records the model was trained or selected on make the score optimistic
        from ecgtl.data.splits import load_splits

        seen = set().union(*(set(v) for k, v in load_splits(splits_file).items() if k in ("train", "val")))
        overlap = sorted(seen & {r.name for r in records})
        report["records_seen_in_training_or_validation"] = len(overlap)
        if overlap:
            print(f"warning: {len(overlap)} of {len(records)} records were in this model's training or validation split "
                  f"({splits_file}), e.g. {overlap[:3]}: the score is optimistic")
    report["inference_records_per_s"] = len(records) / seconds
    report["skipped"] = [{"record": n, "error": e} for n, e in failures]
    report["checkpoint"] = str(find_card(checkpoint))
    out_dir = Path(out) if out else find_card(checkpoint).parent / f"evaluate-{Path(data).name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))

    write_predictions(out_dir / "predictions.csv", [r.name for r in records], y, probs)
    print(format_report(report))
    print(f"{len(records) / seconds:.0f} records/s; wrote {out_dir / 'report.json'} and predictions.csv")
    return report


# --------------------------------------------------------------------------- predict
def load_recording(path: str, fs: float | None = None, lead: str | int = 0, gain: float | None = None) -> tuple[np.ndarray, float]:
    """Read a user's recording into (signal in mV, fs in Hz); raises DataError naming the file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in ("", ".hea", ".dat") or (suffix == ".mat" and p.with_suffix(".hea").is_file()):
        record = str(p.with_suffix("")) if suffix else str(p)
        header = read_header(record)
        if suffix == ".mat" or header.file_name[0].endswith(".mat"):
            rec = read_record(p.parent, p.stem)
            return rec.signal, rec.fs
        check_dat_size(header)
        if str(lead).isdigit():
            idx = int(lead)
        elif lead in header.sig_name:
            idx = header.sig_name.index(lead)
        else:
            raise DataError(record + ".hea", f"lead {lead!r} not in the record (leads: {', '.join(header.sig_name)})")
        if not 0 <= idx < header.n_sig:
            raise DataError(record + ".hea", f"lead {lead!r} not in the record (leads: {', '.join(header.sig_name)})")
        import wfdb

        try:
            sig = wfdb.rdrecord(record, channels=[idx]).p_signal[:, 0]
        except Exception as exc:
            raise DataError(record + ".dat", f"unreadable signal ({type(exc).__name__}: {exc})") from None
        unit = header.units[idx] if header.units else "mV"
        scale = {"mV": 1.0, "uV": 1e-3, "V": 1e3}.get(unit, 1.0)
        return sig * scale, header.fs
    if suffix == ".mat":
        raise DataError(path, "a .mat file needs its WFDB header (.hea) next to it")
    if fs is None:
        raise ConfigError(f"{path}: CSV and NumPy files carry no sampling rate: pass --fs")
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(path, f"unreadable NumPy file ({exc})") from None
    elif suffix in (".csv", ".txt"):
        try:
            arr = np.genfromtxt(p, delimiter=",", dtype=np.float64)
        except (ValueError, OSError) as exc:
            raise DataError(path, f"unreadable CSV ({exc})") from None
        if arr.ndim >= 1 and arr.size and np.all(np.isnan(arr[0] if arr.ndim == 2 else arr[:1])):
            arr = arr[1:]  # a header line
    else:
        raise DataError(path, f"unknown file type {suffix!r} (expected .hea/.dat WFDB, .mat, .csv, .npy)")
    if arr.ndim == 2 and min(arr.shape) > 1:
        col = int(lead)
        if col >= arr.shape[1]:
            raise DataError(path, f"lead {col} requested, the file has {arr.shape[1]} columns")
        arr = arr[:, col]
    if gain:
        arr = arr / gain
    return arr, float(fs)


def run_predict(files: list[str], checkpoint: str, fs: float | None = None, lead: str = "0", gain: float | None = None,
                as_json: bool = False, device: str = "cpu") -> int:
    clf = Classifier(checkpoint, device=device)
    results, failed = [], 0
    for f in files:
        try:
            sig, rate = load_recording(f, fs, lead, gain)
            sig = check_recording(sig, rate, f)
            probs = clf.predict_proba([sig], rate)[0]
        except EcgtlError as err:
            failed += 1
            results.append({"file": f, "error": str(err)})
            if not as_json:
                print(f"{f}: error: {err}")
            continue
        label = clf.classes[int(probs.argmax())]
        results.append({"file": f, "label": label, "probabilities": dict(zip(clf.classes, map(float, probs))),
                        "fs": rate, "seconds": len(sig) / rate})
        if not as_json:
            names = dict(zip(CINC_CLASSES, ("normal", "AF", "other rhythm", "noisy")))
            print(f"{f}: {label} ({names.get(label, label)}); " + ", ".join(f"{c} {p:.3f}" for c, p in zip(clf.classes, probs)))
    if as_json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


# --------------------------------------------------------------------------- export
def run_export(checkpoint: str, out: str, verify_data: str | None = None, verify_records: int = 16, opset: int = 17) -> dict:
    import onnx
    import onnxruntime as ort

    clf = Classifier(checkpoint)
    model = clf.model.cpu().eval()
    length = clf.input_samples
    dummy = torch.zeros(2, 1, length)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(out_path), input_names=["ecg"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"ecg": {0: "batch", 2: "samples"}, "logits": {0: "batch"}}, dynamo=False)
    proto = onnx.load(str(out_path))
    meta = {"fs_hz": clf.fs, "normalization_mean_mv": clf.normalization.mean, "normalization_std_mv": clf.normalization.std,
            "classes": ",".join(clf.classes), "window_samples": clf.window, "hop_samples": clf.hop, "input": clf.input}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    if verify_data:
        cinc = Cinc2017(verify_data)
        records, _ = cinc.read_all(progress=False, names=cinc.names[:verify_records])
        inputs = clf.preprocess([r.signal for r in records], [r.fs for r in records])
        batches = [x[: max(length, 1)] if len(x) >= length else np.pad(x, (length - len(x), 0)) for x in inputs]
        x = np.stack(batches)[:, None, :].astype(np.float32)
        source = f"{len(records)} real records of {verify_data}"
    else:
        x = np.random.default_rng(0).standard_normal((4, 1, length)).astype(np.float32)
        source = "random input"
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = session.run(["logits"], {"ecg": x})[0]
    diff = float(np.max(np.abs(ref - got)))
    same_class = bool(np.all(ref.argmax(1) == got.argmax(1)))
    result = {"onnx": str(out_path), "max_abs_logit_difference": diff, "same_predictions": same_class, "checked_on": source}
    print(f"exported {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); onnxruntime vs PyTorch on {source}: "
          f"max |logit difference| {diff:.2e}, same predictions: {same_class}")
    if diff > 1e-3 or not same_class:
        raise EcgtlError(f"{out_path}: onnxruntime output differs from PyTorch (max {diff:.2e})")
    return result


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate")
    p.add_argument("--checkpoint", required=True, help="model card (model.json), its run folder, or best.safetensors")
    p.add_argument("--data", required=True, help="folder with RECORDS, REFERENCE*.csv and .mat/.hea")
    p.add_argument("--labels", default="v3", help="v3 (default), original, or a label file")
    p.add_argument("--out", help="output folder (default: <run>/evaluate-<data folder name>)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: 0 if run_evaluate(a.checkpoint, a.data, a.labels, a.out, a.bootstrap, a.device,
                                                    not a.no_progress) else 1)

    p = subparsers.add_parser("predict")
    p.add_argument("files", nargs="+", help="recordings: record.hea, record.mat (+ .hea), file.csv, file.npy")
    p.add_argument("--checkpoint", required=True, help="model card (model.json) or its run folder")
    p.add_argument("--fs", type=float, help="sampling rate, Hz (required for CSV and NumPy)")
    p.add_argument("--lead", default="0", help="lead index or name for multi-lead input (default 0)")
    p.add_argument("--gain", type=float, help="raw units per mV, if the values are not in mV")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=lambda a: run_predict(a.files, a.checkpoint, a.fs, a.lead, a.gain, a.json, a.device))

    p = subparsers.add_parser("export")
    p.add_argument("--checkpoint", required=True, help="model card (model.json) or its run folder")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--verify-data", help="CinC-layout folder whose first records check the export (default: random input)")
    p.add_argument("--verify-records", type=int, default=16)
    p.set_defaults(func=lambda a: 0 if run_export(a.checkpoint, a.out, a.verify_data, a.verify_records) else 1)
