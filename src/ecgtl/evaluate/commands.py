"""``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export``: using a fine-tuned model.

* ``evaluate --checkpoint C --data DIR``: scores a model on any folder in the CinC layout
  (``RECORDS``, ``REFERENCE*.csv``, ``.mat``/``.hea``), writing JSON metrics and per-record
  predictions.
* ``predict FILE ...``: classifies recordings a user brings: WFDB records (``.hea``), CinC
  ``.mat`` (with its ``.hea``), CSV or NumPy ``.npy`` (``--fs`` required; values in mV, or
  raw units with ``--gain``).
* Both take several models (``--checkpoint A B ...`` or ``--checkpoint A --checkpoint B``:
  k-fold models, several seeds): an :class:`~ecgtl.evaluate.inference.Ensemble`, whose class
  probabilities are the mean of its members' (each with its own preprocessing and
  ``class_bias``); the evaluation report names every member card and its SHA-256.
* ``export --checkpoint C --out model.onnx``: ONNX with dynamic batch and length, checked
  against PyTorch with onnxruntime on real records. A model with masked pooling (card
  ``pooling: masked``) is exported with a second input, ``valid`` (int64, ``(batch, 2)``): per
  input the samples ``[start, end)`` that are the recording's, the rest being zero padding
  (``[0, samples)`` for an input without padding); the metadata say ``pooling=masked``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import Cinc2017, read_record
from ecgtl.data.wfdb_io import check_dat_size, read_header
from ecgtl.errors import ConfigError, DataError, EcgtlError
from ecgtl.evaluate.inference import (
    CPU_BATCH,
    CPU_BATCH_SAMPLES,
    CUDA_BATCH,
    PRECISIONS,
    Classifier,
    Ensemble,
    InferenceTiming,
    check_recording,
    find_card,
    write_predictions,
)
from ecgtl.evaluate.metrics import classification_report, format_report
from ecgtl.evaluate.parallel import (
    cinc_ensemble_jobs,
    ordered_map,
    prepare_signal,
    read_prepared_cinc,
    resolve_workers,
    start_pool_server,
)

# --------------------------------------------------------------------------- evaluate
#: What the reading processes import once, before they fork (no PyTorch).
PRELOAD_CINC = ("ecgtl.evaluate.parallel", "ecgtl.data.cinc2017", "ecgtl.data.transforms", "scipy.signal")
#: ... and those of ``predict`` (its worker is in this module).
PRELOAD_PREDICT = ("ecgtl.evaluate.commands", "scipy.signal")


def classify_folder(clf: Classifier | Ensemble, cinc: Cinc2017, progress: bool = True, workers: int | str | None = "auto",
                    names: list[str] | None = None, check: bool = True) -> tuple[list[str], list[str | None], np.ndarray, list[tuple[str, str]], InferenceTiming]:
    """Read, prepare and classify the records of a CinC-layout folder: ``(names, labels, probabilities, failures, timing)``.

    Records are read and prepared by ``workers`` processes (``auto``: one per core but one, for
    enough records; 0: this process) while this process runs the model on those already
    prepared. A record that cannot be read is skipped and reported as ``(name, error)``, the
    error naming its file, as :meth:`Cinc2017.read_all` does. ``check``: refuse non-finite
    probabilities (:meth:`Classifier.probabilities`). ``clf`` may be an :class:`Ensemble`: each
    record is read once, prepared once per distinct rate and normalisation of its members, and
    the members' probabilities are averaged.
    """
    from tqdm.auto import tqdm

    ens = clf if isinstance(clf, Ensemble) else Ensemble([clf])
    t0 = time.perf_counter()
    names = list(names or cinc.names)
    n_workers = resolve_workers(workers, len(names))
    jobs = cinc_ensemble_jobs(cinc.folder, names, cinc.labels, ens.preparations)
    runners = ens.runners()
    kept, labels, failures = [], [], []
    read_s = preprocess_s = 0.0
    first = None
    results = ordered_map(read_prepared_cinc, jobs, n_workers, preload=PRELOAD_CINC)
    try:
        for r in tqdm(results, total=len(jobs), desc="classify", unit="rec", disable=not progress):
            first = first or time.perf_counter() - t0
            read_s += r.read_s
            preprocess_s += r.preprocess_s
            if r.error is not None:
                failures.append((r.name, r.error))
                continue
            ens.add(runners, r.signals)
            kept.append(r.name)
            labels.append(r.label)
    finally:
        results.close()  # an error or Ctrl-C: the workers stop
    probs = ens.probabilities(runners, check=check)
    timing = ens.timing(runners, time.perf_counter() - t0, read_s=read_s, preprocess_s=preprocess_s, workers=n_workers,
                        first_record_s=first or 0.0)
    return kept, labels, probs, failures, timing


def checkpoint_list(checkpoint: str | os.PathLike | list | tuple) -> list[str]:
    """``--checkpoint``'s value(s) as a list of paths: one path, or several (an ensemble)."""
    items = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint or [])
    if not items:
        raise ConfigError("no model given: pass --checkpoint RUN (or several, for an ensemble)")
    return [os.fspath(c) for c in items]


def _members_hash(cards: list[Path]) -> str:
    """8 hex digits naming an ensemble: its members' resolved cards, in order."""
    import hashlib

    return hashlib.sha256("\n".join(str(c.resolve()) for c in cards).encode()).hexdigest()[:8]


def _seen_records(splits_file: Path) -> set[str]:
    """The records a run was trained or selected on (its ``splits.json``'s train and val)."""
    from ecgtl.data.splits import load_splits

    return set().union(*(set(v) for k, v in load_splits(splits_file).items() if k in ("train", "val")))


def run_evaluate(checkpoint: str | list[str], data: str, labels: str = "v3", out: str | None = None, n_boot: int = 1000,
                 device: str = "auto", progress: bool = True, workers: int | str | None = "auto", batch_size: int | None = None,
                 precision: str = "auto", records: str | None = None) -> dict:
    """Score a model, or the ensemble of several (``checkpoint`` a list, or an ensemble file), on a CinC-layout folder.

    ``records``: score only these records of the folder (``FILE.json:PART`` of a split file, or a file
    of names: :func:`~ecgtl.data.splits.read_record_list`), e.g. a run's ``splits.json:test``.

    The report (also written as JSON) holds the metrics, a ``timing`` section
    (:class:`~ecgtl.evaluate.inference.InferenceTiming`: records/s, and the read / preprocess /
    model seconds), ``checkpoints`` and ``members`` (each card with its ``weights_sha256`` and
    ``card_sha256``), and for one model ``checkpoint`` as before.
    """
    import hashlib

    checkpoints = checkpoint_list(checkpoint)
    if workers != 0:
        start_pool_server(PRELOAD_CINC)  # its imports run while the model loads and CUDA starts
    ens = Ensemble.load(checkpoints, device=device, batch_size=batch_size, precision=precision)
    cinc = Cinc2017(data, labels=labels)
    if not cinc.labels:
        raise ConfigError(f"{data}: no label file (REFERENCE.csv or REFERENCE-v3.csv); use `ecgtl predict` for unlabelled data")
    chosen = records_id = None
    if records is not None:
        from ecgtl.data.splits import read_record_list, record_list_source

        chosen = read_record_list(records)
        source, part = record_list_source(records)  # the identity: the resolved file, its part and the names it gave
        records_id = (f"{Path(source).resolve()}{':' + part if part else ''}#"
                      f"{hashlib.sha256(chr(10).join(sorted(chosen)).encode()).hexdigest()[:12]}")
        absent = sorted(set(chosen) - set(cinc.names))
        if absent:
            raise ConfigError(f"--records {records}: {len(absent)} of its {len(chosen)} records are not in {data}'s RECORDS, "
                              f"e.g. {absent[:3]}")
    # The default output folder is unique per data folder (its name + a hash of its resolved path), so
    # two folders of the same name never share one; an ensemble's is in its first member's run folder,
    # named also by a hash of its members (never a single model's folder); a folder holding another
    # evaluation's report (of other data or another model or ensemble) is refused, never overwritten:
    # checked now and again when writing.
    from ecgtl.evaluate.ensemble import expand_checkpoints

    data_path = str(Path(data).resolve())
    member_paths, ens_file = expand_checkpoints(checkpoints)
    cards = [find_card(c) for c in member_paths]  # as given (the report's paths), resolved to compare
    members = [str(c.resolve()) for c in cards]
    if ens_file is not None:  # an ensemble file is the model: its biases belong to it
        members = [str(ens_file.path.resolve())]
    what_data = data_path if records is None else f"{data_path} --records {records_id}"
    default_name = f"evaluate-{Path(data_path).name}-{hashlib.sha256(what_data.encode()).hexdigest()[:8]}"
    if len(cards) > 1 and ens_file is None:
        default_name = f"evaluate-ensemble-{_members_hash(cards)}-{default_name.removeprefix('evaluate-')}"
    out_dir = Path(out) if out else (ens_file.path.parent if ens_file else cards[0].parent) / default_name

    def check_out_dir() -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise DataError(out_dir, "is a file, not a folder; pass a folder as --out")
        previous = out_dir / "report.json"
        if not previous.is_file():
            return
        try:
            old = json.loads(previous.read_text())
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict):
            old_members = ([old["ensemble_file"]] if isinstance(old.get("ensemble_file"), str) else old["checkpoints"]
                           if isinstance(old.get("checkpoints"), list) else [old.get("checkpoint", "")])
            same_model = [str(Path(str(c)).resolve()) for c in old_members] == members  # the same model(s), in order
            same_data = old["data"] == data_path if "data" in old else old.get("split") == f"folder {data}"
            same_data = same_data and old.get("records_id") == records_id
            if same_model and same_data:
                return  # the same evaluation again: its report is refreshed
            what = f"of {old.get('data') or old.get('split')} with {', '.join(map(str, old_members))}"
        else:
            what = "that cannot be read"
        raise ConfigError(f"{out_dir}: already holds the report of another evaluation {what}; "
                          "pass another --out, or move that folder away")

    check_out_dir()
    names, label_names, probs, failures, timing = classify_folder(ens, cinc, progress=progress, workers=workers, check=False,
                                                                  names=chosen)
    for name, why in failures:
        print(f"skipped {name}: {why}")
    if not names:
        raise DataError(data, "no readable record")
    ens.check_probabilities(probs)  # non-finite output: the member that gave it is named
    y = np.array([CINC_CLASSES.index(lab) for lab in label_names])
    report = classification_report(y, probs, n_boot=n_boot, split=f"folder {data}" + (f", records {records}" if records else ""))
    member_info, seen_any, has_splits = [], set(), False
    for card_path, m in zip(cards, ens.members):
        info = {"card": str(card_path), "weights_sha256": m.card.get("weights_sha256")}
        if m.card.get("card_sha256"):
            info["card_sha256"] = m.card["card_sha256"]
        info.update(fs=m.fs, input=m.input, class_bias=bool(m.card.get("class_bias")))
        splits_file = card_path.parent / "splits.json"
        if splits_file.is_file():  # records the model was trained or selected on make the score optimistic
            overlap = sorted(_seen_records(splits_file) & set(names))
            info["records_seen_in_training_or_validation"] = len(overlap)
            seen_any.update(overlap)
            has_splits = True
            if overlap:
                print(f"warning: {len(overlap)} of {len(names)} records were in this model's training or validation split "
                      f"({splits_file}), e.g. {overlap[:3]}: the score is optimistic")
        member_info.append(info)
    if ens_file is not None and ens_file.validation_records:  # the ensemble file's own choices were made on these
        overlap = sorted(set(ens_file.validation_records) & set(names))
        seen_any.update(overlap)
        has_splits = True
        if overlap:
            print(f"warning: {len(overlap)} of {len(names)} records are the validation records of {ens_file.path} "
                  f"(its class biases were fitted on them), e.g. {overlap[:3]}: the score is optimistic")
    if has_splits:  # for an ensemble: the records any member saw
        report["records_seen_in_training_or_validation"] = len(seen_any)
    report["inference_records_per_s"] = timing.model_records_per_s  # the model stage, as fine-tuning's reports give it
    report["timing"] = timing.as_dict()
    report["skipped"] = [{"record": n, "error": e} for n, e in failures]
    if len(cards) == 1 and ens_file is None:
        report["checkpoint"] = str(cards[0])
    else:
        report["ensemble"] = (f"the mean of the class probabilities of {len(cards)} models, each with its own preprocessing "
                              "and class_bias" + (", then the ensemble file's class_bias" if ens.class_bias else ""))
    if ens_file is not None:
        report["ensemble_file"] = str(ens_file.path)
        report["ensemble_class_bias"] = ens.class_bias
    report["records"] = records  # None: every record of the folder
    report["records_id"] = records_id  # the resolved list file, its part and a hash of the names scored
    report["checkpoints"] = [str(c) for c in cards]
    report["members"] = member_info
    report["label_file"] = str(cinc.label_file)  # which labels were scored: the folder's own, or the one given
    report["data"] = data_path  # which folder was scored: tells this evaluation's output folder from another's
    from ecgtl.fileio import atomic_write

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / ".evaluate.lock", "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise DataError(exc.filename or out_dir, f"cannot write the evaluation here ({exc.strerror or exc}); "
                                                 "pass a writable folder as --out") from None
    with lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another evaluate writing here: its writes take milliseconds
        except ImportError:  # pragma: no cover - not POSIX
            pass
        check_out_dir()  # again: another evaluation may have written here while this one ran
        # Both atomic (a crash or a full disk leaves the old file or the new one); the report last.
        write_predictions(out_dir / "predictions.csv", names, y, probs)
        atomic_write(out_dir / "report.json", json.dumps(report, indent=1))
    if len(cards) == 1 and ens_file is None:
        print(f"model: {cards[0]} (weights sha256 {member_info[0]['weights_sha256']})")
    else:
        print(f"ensemble {f'{ens_file.path} ' if ens_file else ''}of {len(cards)} models (the mean of their class probabilities"
              + (f", then class biases {ens.class_bias}" if ens.class_bias else "") + "):")
        for info in member_info:
            print(f"  {info['card']} (weights sha256 {info['weights_sha256']})")
    print(format_report(report))
    print(timing.summary())
    print(f"wrote {out_dir / 'report.json'} and predictions.csv")
    return report


# --------------------------------------------------------------------------- predict
MAX_LEADS = 16  # a 2-D array with more than this many rows and columns is not one recording


def _choose_lead(names: list[str], lead, source: str, kind: str = "lead") -> int:
    """Index of the lead ``lead`` (an index or a name) among ``names``; never guessed when there are several."""
    listing = ", ".join(names if names == [str(i) for i in range(len(names))] else (f"{i}: {n}" for i, n in enumerate(names)))
    if lead is None or (isinstance(lead, str) and not lead.strip()):
        if len(names) == 1:
            return 0
        raise DataError(source, f"{len(names)} {kind}s ({listing}) and no --lead: the lead is never guessed; choose "
                                f"the ECG {kind} with --lead NAME or --lead INDEX")
    key = str(lead).strip()
    if key in names:
        return names.index(key)
    folded = [n.casefold() for n in names]
    if folded.count(key.casefold()) == 1:
        return folded.index(key.casefold())
    if key.isdigit() and int(key) < len(names):
        return int(key)
    raise DataError(source, f"--lead {key!r} is not one of the {len(names)} {kind}(s) ({listing})")


def _read_csv(p: Path, path: str) -> tuple[np.ndarray, list[str] | None]:
    """A CSV/text table as a 2-D float array (rows, columns) and its header's column names (None without a header)."""
    import io

    try:
        text = p.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable CSV ({type(exc).__name__}: {exc})") from None
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise DataError(path, "empty CSV (no values)")
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)  # None: whitespace
    tokens = [t.strip().strip('"').strip("'") for t in (first.split(delimiter) if delimiter else first.split())]
    names = None
    try:
        [float(t) for t in tokens if t]
    except ValueError:
        names = tokens  # a header line
    try:
        arr = np.genfromtxt(io.StringIO(text), delimiter=delimiter, dtype=np.float64, skip_header=1 if names else 0,
                            ndmin=2, comments="#")
    except (ValueError, OSError) as exc:
        raise DataError(path, f"unreadable CSV ({str(exc).strip().splitlines()[-1]})") from None
    return arr, names


def load_recording(path: str, fs: float | None = None, lead: str | int | None = None,
                   gain: float | None = None) -> tuple[np.ndarray, float]:
    """Read a user's recording into (signal in mV, fs in Hz); raises DataError (or ConfigError) naming the file.

    WFDB records (``.hea``/``.dat``, or a CinC ``.mat`` with its ``.hea``) carry their rate,
    gain and unit. CSV and NumPy files carry none: ``fs`` is required, and the values must be
    mV, or raw units divided by ``gain`` (units per mV). A multi-lead input needs ``lead`` (an
    index, or a lead / CSV column name): the lead is never guessed. A 2-D array may be
    (samples, leads) or (leads, samples): the longer axis is time. The amplitude must be an
    ECG's in mV (:func:`~ecgtl.data.wfdb_io.check_millivolts`), else the file is refused with
    the option that fixes it.
    """
    import logging

    from ecgtl.data.wfdb_io import check_fs, check_millivolts, unit_to_mv

    p = Path(path)
    suffix = p.suffix.lower()
    if gain is not None and not (isinstance(gain, (int, float)) and np.isfinite(gain) and gain > 0):
        raise ConfigError(f"{path}: --gain must be a positive number of raw units per mV (e.g. 1000), got {gain!r}")
    if fs is not None:
        check_fs(fs, path, "--fs")
    if suffix in ("", ".hea", ".dat") or (suffix == ".mat" and p.with_suffix(".hea").is_file()):
        record = str(p.with_suffix("")) if suffix else str(p)
        header = read_header(record)
        hea = record + ".hea"
        if gain is not None:
            raise ConfigError(f"{hea}: --gain is for CSV and NumPy values; a WFDB record's header gives its gain "
                              f"({header.adc_gain[0]:g} per {header.units[0] if header.units else 'mV'}): drop --gain")
        if fs is not None and abs(float(fs) - header.fs) > 1e-6 * header.fs:
            raise DataError(hea, f"--fs {float(fs):g} Hz contradicts the header's {header.fs:g} Hz: drop --fs "
                                 "(a WFDB record carries its rate)")
        names = [n or str(i) for i, n in enumerate(header.sig_name)] or [str(i) for i in range(header.n_sig)]
        idx = _choose_lead(names, lead, hea)
        if suffix == ".mat" or header.file_name[idx].endswith(".mat"):
            rec = read_record(p.parent, Path(record).name, channel=idx)
            return rec.signal, rec.fs
        check_dat_size(header)
        import wfdb

        try:
            sig = wfdb.rdrecord(record, channels=[idx]).p_signal[:, 0]
        except Exception as exc:
            raise DataError(record + ".dat", f"unreadable signal ({type(exc).__name__}: {exc})") from None
        sig = sig * unit_to_mv(header.units[idx] if idx < len(header.units) else None, hea, names[idx])
        check_millivolts(sig[np.isfinite(sig)], hea, fix="check the gain and unit in the header")
        return sig, header.fs
    if suffix == ".mat":
        raise DataError(path, "a .mat file needs its WFDB header (.hea) next to it")
    if fs is None:
        raise ConfigError(f"{path}: CSV and NumPy files carry no sampling rate: pass --fs")
    names = None
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(path, f"unreadable NumPy file ({exc})") from None
    elif suffix in (".csv", ".txt"):
        arr, names = _read_csv(p, path)
    else:
        raise DataError(path, f"unknown file type {suffix!r} (expected .hea/.dat WFDB, .mat, .csv, .npy)")
    if arr.dtype.kind not in "iuf":
        raise DataError(path, f"values of type {arr.dtype} are not real numbers (expected floats in mV)")
    if arr.ndim == 0 or arr.size == 0:
        raise DataError(path, f"no signal (array of shape {arr.shape})")
    if arr.ndim > 2:
        raise DataError(path, f"expected a single-lead recording (1-D) or a table of leads (samples x leads), got shape "
                              f"{arr.shape}; save one recording per file")
    if arr.dtype.kind in "iu" and gain is None:
        raise DataError(path, f"integer values ({arr.dtype}) look like raw ADC counts, not mV: pass --gain ADU_PER_MV "
                              "(e.g. 1000 for CinC 2017, 200 for MIT-BIH), or save mV as floats")
    if arr.ndim == 2 and min(arr.shape) > 1:
        rows, cols = arr.shape
        if min(rows, cols) > MAX_LEADS or rows == cols:
            raise DataError(path, f"shape {arr.shape}: neither axis looks like leads (at most {MAX_LEADS}) against time; "
                                  "save one recording per file, as (samples,) or (samples, leads)")
        transposed = rows < cols  # (leads, samples): the longer axis is time
        table = arr.T if transposed else arr
        kind = "row" if transposed else "column"
        leads = names if (names and not transposed and len(names) == table.shape[1]) else [str(i) for i in range(table.shape[1])]
        idx = _choose_lead(leads, lead, path, kind)
        logging.getLogger(__name__).info("%s: %d leads x %d samples (%s = leads, the longer axis = time); took %s %d (%s)",
                                         path, table.shape[1], table.shape[0], kind + "s", kind, idx, leads[idx])
        arr = table[:, idx]
    else:
        arr = arr.reshape(-1)
        if lead is not None:
            _choose_lead([names[0]] if names and len(names) == 1 else ["0"], lead, path, "column")
    arr = arr.astype(np.float64)
    if gain:
        arr = arr / gain
    finite = arr[np.isfinite(arr)]
    check_millivolts(finite, path, fix="pass --gain ADU_PER_MV (raw units per mV, e.g. 1000 for CinC 2017 values, "
                                       "0.001 for volts)" if gain is None else f"--gain {gain:g} gave these values: check it")
    return arr, float(fs)


def _json_safe(result: dict) -> dict:
    """``result`` if it has only finite numbers (valid JSON), else an error entry for its file."""
    try:
        json.dumps(result, allow_nan=False)
        return result
    except ValueError:
        return {"file": result.get("file"), "error": f"{result.get('file')}: non-finite value in the result {result!r}"}


def load_prepared(job: tuple) -> tuple:
    """Worker of ``predict``: one file read and checked once, then prepared for each model (rate and normalisation).

    ``job`` = ``(file, fs, lead, gain, preparations)``, ``preparations`` a tuple of ``(model fs,
    mean, std)`` (:attr:`Ensemble.preparations`); returns ``(prepared signals, one per
    preparation, or None, error or None, rate, samples, read seconds, preprocess seconds)``.
    """
    path, fs, lead, gain, preparations = job
    t0 = time.perf_counter()
    try:
        sig, rate = load_recording(path, fs, lead, gain)
        sig = check_recording(sig, rate, path)
    except EcgtlError as err:
        return None, str(err), None, 0, time.perf_counter() - t0, 0.0
    t1 = time.perf_counter()
    xs = tuple(prepare_signal(sig, rate, fs_out, mean, std) for fs_out, mean, std in preparations)
    return xs, None, float(rate), int(sig.shape[0]), t1 - t0, time.perf_counter() - t1


def run_predict(files: list[str], checkpoint: str | list[str], fs: float | None = None, lead: str | None = None,
                gain: float | None = None, as_json: bool = False, device: str = "auto", workers: int | str | None = "auto",
                batch_size: int | None = None, precision: str = "auto") -> int:
    """Classify each file; a file that fails (or whose probabilities are not finite) gets an error, never a class.

    ``checkpoint``: one model, or a list of several whose class probabilities are averaged
    (:class:`~ecgtl.evaluate.inference.Ensemble`; the output is the same, with the ensemble's
    probabilities). With ``as_json`` the output is always valid JSON (no NaN/Infinity), one
    entry per file, also when the model itself is refused (then every file gets its error, and
    the error is raised). The files are read by ``workers`` processes (``auto``: for many
    files) and classified in batches; the timing (records/s, read / preprocess / model seconds)
    is logged (stderr), so that the output stays one line (or one JSON entry) per file.
    """
    import logging

    try:
        clf = Ensemble.load(checkpoint_list(checkpoint), device=device, batch_size=batch_size, precision=precision)
    except EcgtlError as err:
        if as_json:
            print(json.dumps([{"file": f, "error": str(err)} for f in files], indent=1))
        raise
    t0 = time.perf_counter()
    n_workers = resolve_workers(workers, len(files))
    jobs = [(f, fs, lead, gain, tuple(clf.preparations)) for f in files]
    runners = clf.runners()
    loaded: list[tuple[str, str | None, float | None, int]] = []  # (file, error, rate, samples)
    read_s = preprocess_s = 0.0
    first = None
    prepared = ordered_map(load_prepared, jobs, n_workers, preload=PRELOAD_PREDICT)
    try:
        for f, (x, error, rate, samples, r_s, p_s) in zip(files, prepared):
            first = first or time.perf_counter() - t0
            read_s += r_s
            preprocess_s += p_s
            if x is not None:
                clf.add(runners, x)
            loaded.append((f, error, rate, samples))
    finally:
        prepared.close()
    probs = clf.probabilities(runners, check=False)  # checked file by file below: one bad output fails its file only
    timing = clf.timing(runners, time.perf_counter() - t0, read_s=read_s, preprocess_s=preprocess_s, workers=n_workers,
                        first_record_s=first or 0.0)
    results, failed, row = [], 0, 0
    for f, error, rate, samples in loaded:
        if error is None:
            p = probs[row]
            try:
                clf.check_probabilities(p[None, :], rows=[row])  # naming the member that gave non-finite output
            except EcgtlError as err:
                error = str(err)
            row += 1
        if error is not None:
            failed += 1
            results.append({"file": f, "error": error})
            if not as_json:
                print(f"{f}: error: {error}")
            continue
        label = clf.classes[int(p.argmax())]
        result = _json_safe({"file": f, "label": label, "probabilities": dict(zip(clf.classes, map(float, p))),
                             "fs": float(rate), "seconds": samples / rate})
        results.append(result)
        if "error" in result:
            failed += 1
            if not as_json:
                print(f"{f}: error: {result['error']}")
            continue
        if not as_json:
            names = dict(zip(CINC_CLASSES, ("normal", "AF", "other rhythm", "noisy")))
            print(f"{f}: {label} ({names.get(label, label)}); " + ", ".join(f"{c} {v:.3f}" for c, v in zip(clf.classes, p)))
    if as_json:
        print(json.dumps(results, indent=1, allow_nan=False))
    logging.getLogger(__name__).info("predict: %s", timing.summary())
    return 1 if failed else 0


# --------------------------------------------------------------------------- export
def _compare_outputs(ref: np.ndarray, got: np.ndarray, out_path: Path, source: str, tolerance: float = 1e-3) -> tuple[float, bool]:
    """Max |logit difference| and whether the classes agree; refuses non-finite outputs of either side."""
    for name, values in (("PyTorch", ref), ("onnxruntime", got)):
        n_bad = int(np.sum(~np.isfinite(values)))
        if n_bad:
            raise DataError(out_path, f"{name} gives {n_bad} non-finite (NaN/inf) logit(s) on {source}: the model's weights "
                                      "are corrupt or diverged; nothing was exported (check the run's weights, or retrain)")
    diff = float(np.max(np.abs(ref - got)))
    same_class = bool(np.all(ref.argmax(1) == got.argmax(1)))
    if not diff <= tolerance or not same_class:  # "not <=": a NaN difference fails too
        raise DataError(out_path, f"onnxruntime output differs from PyTorch on {source} (max |logit difference| {diff:.2e}, "
                                  f"same predictions: {same_class}); nothing was exported (try another --opset)")
    return diff, same_class


def run_export(checkpoint: str | list[str], out: str, verify_data: str | None = None, verify_records: int = 16,
               opset: int = 17) -> dict:
    """ONNX export of one model, checked against PyTorch; the ``.onnx`` file appears only once the check passed.

    Several checkpoints (an ensemble) are refused: an ONNX file holds one model.
    """
    checkpoints = checkpoint_list(checkpoint)
    if len(checkpoints) > 1:
        raise ConfigError(f"export writes one model, but {len(checkpoints)} checkpoints were given ({', '.join(checkpoints)}): "
                          "an ensemble is not exported as one ONNX file; export each member on its own "
                          "(one --checkpoint, one --out each) and average their probabilities")
    import onnx
    import onnxruntime as ort

    clf = Classifier(checkpoints[0], device="cpu", conv_layout="1d")  # exported as plain 1-D convolutions
    model = clf.model.eval()
    length = clf.input_samples
    masked = clf.pooling == "masked"  # a second input: the samples of each input that are the recording's
    dummy = (torch.zeros(2, 1, length),) + ((torch.tensor([[0, length]] * 2, dtype=torch.int64),) if masked else ())
    input_names = ["ecg", "valid"] if masked else ["ecg"]
    axes = {"ecg": {0: "batch", 2: "samples"}, "logits": {0: "batch"}, **({"valid": {0: "batch"}} if masked else {})}
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")  # renamed to out_path once verified
    try:
        torch.onnx.export(model, dummy, str(tmp_path), input_names=input_names, output_names=["logits"], opset_version=opset,
                          dynamic_axes=axes, dynamo=False)
        proto = onnx.load(str(tmp_path))
        meta = {"fs_hz": clf.fs, "normalization_mean_mv": clf.normalization.mean, "normalization_std_mv": clf.normalization.std,
                "classes": ",".join(clf.classes), "window_samples": clf.window, "hop_samples": clf.hop, "input": clf.input,
                "pooling": clf.pooling}
        if masked:
            meta["valid_input"] = ("int64 (batch, 2): per input the samples [start, end) that are the recording's; "
                                   "the rest is zero padding ([0, samples) without padding)")
        if clf.card.get("class_bias"):  # decisions of a calibrated model: argmax(log_softmax(logits) + bias)
            meta["class_bias_on_log_softmax"] = ",".join(f"{b:.6g}" for b in clf.card["class_bias"])
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, str(v)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp_path))
        session = ort.InferenceSession(str(tmp_path), providers=["CPUExecutionProvider"])
        if verify_data:
            cinc = Cinc2017(verify_data)
            records, _ = cinc.read_all(progress=False, names=cinc.names[:verify_records])
            inputs = clf.preprocess([r.signal for r in records], [r.fs for r in records])
            batches = [x[: max(length, 1)] if len(x) >= length else np.pad(x, (length - len(x), 0)) for x in inputs]
            x = np.stack(batches)[:, None, :].astype(np.float32)
            valid = np.array([[max(0, length - len(r)), length] for r in inputs], dtype=np.int64)  # front padding
            source = f"{len(records)} real records of {verify_data}"
        else:
            x = np.random.default_rng(0).standard_normal((4, 1, length)).astype(np.float32)
            valid = np.array([[0, length], [length // 2, length], [length - 10, length], [0, length // 3]], dtype=np.int64)
            x[1, 0, : length // 2] = x[2, 0, : length - 10] = x[3, 0, length // 3 :] = 0.0  # zero padding where not valid
            source = "random input"
        feeds = {"ecg": x, **({"valid": valid} if masked else {})}
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feeds[k]) for k in input_names)).numpy()
        got = session.run(["logits"], feeds)[0]
        diff, same_class = _compare_outputs(ref, got, out_path, source)
        os.replace(tmp_path, out_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    result = {"onnx": str(out_path), "max_abs_logit_difference": diff, "same_predictions": same_class, "checked_on": source}
    print(f"exported {out_path} ({out_path.stat().st_size / 1e6:.1f} MB); onnxruntime vs PyTorch on {source}: "
          f"max |logit difference| {diff:.2e}, same predictions: {same_class}")
    return result


# --------------------------------------------------------------------------- CLI
def _rate_hz(text: str) -> float:
    """``--fs``: a sampling rate an ECG can have (argparse refuses anything else, before any work)."""
    import argparse

    from ecgtl.data.wfdb_io import ECG_FS_RANGE_HZ

    lo, hi = ECG_FS_RANGE_HZ
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sampling rate of an ECG: give Hz between {lo:g} and {hi:g} (e.g. 300)")
    return value


def _positive_gain(text: str) -> float:
    """``--gain``: raw units per mV, a positive finite number."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give the raw units per mV, a positive number (e.g. 1000)")
    return value


def _workers(text: str) -> int | str:
    """``--workers``: ``auto`` or a count of processes (0: read in this process)."""
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of processes (0 = none) or auto")
    return value


def _batch(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of model inputs per batch")
    return value


def _add_speed_options(p) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:1")
    p.add_argument("--workers", type=_workers, default="auto", help="processes that read and prepare the files: auto "
                   "(one per core but one, when there are enough files), or a number (0 = this process)")
    p.add_argument("--batch-size", type=_batch, default=None, help=f"model inputs per batch (default {CUDA_BATCH} on a "
                   f"GPU; on the CPU {CPU_BATCH}, or fewer long inputs: {CPU_BATCH_SAMPLES:,} samples a batch)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto (bf16 autocast on a GPU that has it, "
                   "float32 elsewhere), float32 (the probabilities of fine-tuning's reports), bfloat16")


#: The suffixes of recordings (``predict``): a value of ``--checkpoint`` with one of these, and those after it, are files.
RECORDING_SUFFIXES = (".hea", ".dat", ".mat", ".csv", ".txt", ".npy")
_CHECKPOINTS_HELP = ("model card (model.json), its run folder, or best.safetensors; several (--checkpoint A B, or "
                     "--checkpoint A --checkpoint B): an ensemble, the mean of their class probabilities; or, alone, an ensemble made "
                     "by `ecgtl ensemble` (its folder or ensemble.json)")


def _split_predict_arguments(checkpoints: list[str], files: list[str]) -> tuple[list[str], list[str]]:
    """``predict --checkpoint RUN FILE ...``: ``--checkpoint`` takes several values, so argparse gives it the files that
    follow it; those from the first with a recording's suffix (:data:`RECORDING_SUFFIXES`) on are files."""
    k = next((i for i, c in enumerate(checkpoints) if Path(c).suffix.lower() in RECORDING_SUFFIXES), len(checkpoints))
    checkpoints, files = checkpoints[:k], [*files, *checkpoints[k:]]
    if not files:
        raise ConfigError("no recording given: ecgtl predict FILE [FILE ...] --checkpoint RUN [RUN ...]")
    return checkpoints, files


def _predict_command(a) -> int:
    checkpoints, files = _split_predict_arguments(list(a.checkpoint), list(a.files))
    return run_predict(files, checkpoints, a.fs, a.lead, a.gain, a.json, a.device, a.workers, a.batch_size, a.precision)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate")
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend", metavar="RUN", help=_CHECKPOINTS_HELP)
    p.add_argument("--data", required=True, help="folder with RECORDS, REFERENCE*.csv and .mat/.hea")
    p.add_argument("--labels", default="v3", help="v3 (default), original, or a label file")
    p.add_argument("--out", help="output folder (default: <run>/evaluate-<data folder name>-<hash of its path>; for an "
                   "ensemble <first member's run>/evaluate-ensemble-<hash of its members>-<data folder name>-<hash>)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% intervals")
    _add_speed_options(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--records", help="score only these records of --data: FILE.json:PART (train, val or test of a split "
                   "file, e.g. a run's splits.json:test) or a file of record names, one per line")
    p.set_defaults(func=lambda a: 0 if run_evaluate(a.checkpoint, a.data, a.labels, a.out, a.bootstrap, a.device,
                                                    not a.no_progress, a.workers, a.batch_size, a.precision, a.records) else 1)

    p = subparsers.add_parser("predict")
    p.add_argument("files", nargs="*", help="recordings: record.hea, record.mat (+ .hea), file.csv, file.npy (best before "
                   "--checkpoint, which takes several values: after it, the values from the first with a recording's suffix "
                   "on are recordings)")
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend", metavar="RUN", help=_CHECKPOINTS_HELP)
    p.add_argument("--fs", type=_rate_hz, help="sampling rate, Hz (required for CSV and NumPy; WFDB headers carry it)")
    p.add_argument("--lead", default=None, help="lead index or name (WFDB signal name, CSV column header); required when "
                                                "the input has several leads: it is never guessed")
    p.add_argument("--gain", type=_positive_gain, help="raw units per mV of CSV/NumPy values not in mV (e.g. 1000 for "
                                                       "CinC 2017 counts, 0.001 for volts)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_speed_options(p)
    p.set_defaults(func=_predict_command)

    p = subparsers.add_parser("export")
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend", metavar="RUN",
                   help="model card (model.json) or its run folder (one: an ensemble is not exported)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--verify-data", help="CinC-layout folder whose first records check the export (default: random input)")
    p.add_argument("--verify-records", type=int, default=16)
    p.set_defaults(func=lambda a: 0 if run_export(a.checkpoint, a.out, a.verify_data, a.verify_records) else 1)
