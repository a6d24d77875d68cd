"""``ecgtl ensemble``: several fine-tuned models saved as one, with decision biases fitted on the ensemble.

    ecgtl ensemble --checkpoint runs/s0 runs/s1 runs/s2 --out runs/ensemble --calibrate
    ecgtl evaluate --checkpoint runs/ensemble --data DIR --records runs/s0/splits.json:test
    ecgtl predict --checkpoint runs/ensemble record.hea

An *ensemble file* (``ensemble.json``) names its members' model cards (paths relative to the
file) with the SHA-256 of each member's weights, so that a member retrained or replaced since is
refused rather than silently used. Every ``--checkpoint`` takes it (its folder or the file), alone:
the members' class probabilities are averaged per record, as for ``--checkpoint A B C``.

With ``--calibrate``, per-class decision biases (:mod:`ecgtl.evaluate.calibration`) are fitted on
the *ensemble's* averaged probabilities of validation records: biases fitted on one model's
probabilities do not carry over to an average of several, which is smoother. The validation
records are the members' common ``val`` split (every member's ``splits.json`` must list the same
ones: early stopping chose each member on them, and no member trained on them) or ``--records``.
Whether the biases help is estimated without fitting and scoring on the same records: repeated
2-fold cross-fitting (fit on one stratified half, decide the other). They are kept only if that
estimate beats the uncalibrated ensemble's macro-F1 on the same records; the file says which.

Members of a final fit (``val_fraction=0``: no validation records) make an *unvalidated*
ensemble: its ``validation`` is null, it has no biases, and ``--calibrate`` is refused.

With ``--test-time-shifts 0,4,...,28`` (test-time augmentation) every member also reads each
window of a record shifted by those samples (at its own input rate) and averages them
(:class:`~ecgtl.evaluate.inference.Classifier`); the file keeps the shifts, so ``evaluate`` and
``predict`` use them too. Its validation also gives the macro-F1 without the shifts, for
comparison (the members' best epochs were chosen on the unshifted records, which favours them).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgtl.data.formats import read_format_json
from ecgtl.errors import ConfigError, DataError

__all__ = ["ENSEMBLE_FILE", "EnsembleFile", "cross_fitted_bias_f1", "expand_checkpoints", "read_ensemble", "run_ensemble"]

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "ecgtl-ensemble"
FORMAT_VERSION = 1
CROSS_FIT_REPEATS = 20


@dataclass(frozen=True)
class EnsembleFile:
    """A read and checked ensemble file: its path, its members' cards (resolved) and the ensemble's ``class_bias``."""

    path: Path
    members: list[Path]
    class_bias: list[float] | None
    validation_records: list[str]  # the records it was validated (and calibrated) on: optimistic to score there
    test_time_shifts: list[int] | None = None  # sample offsets of each window, averaged (None: none)


def ensemble_path(checkpoint: str | os.PathLike) -> Path | None:
    """The ensemble file ``checkpoint`` names (the file, or a folder holding one and no ``model.json``), else None."""
    p = Path(checkpoint)
    if p.is_dir():
        return p / ENSEMBLE_FILE if (p / ENSEMBLE_FILE).is_file() and not (p / "model.json").is_file() else None
    return p if p.name == ENSEMBLE_FILE and p.is_file() else None


def read_ensemble(path: str | os.PathLike) -> EnsembleFile:
    """Read ``path`` (an ensemble file or its folder) and check it: format, members present and unchanged, biases.

    Raises :class:`~ecgtl.errors.ConfigError` naming the file and the problem.
    """
    path = ensemble_path(path) or Path(path)
    doc = read_format_json(path, "ensemble file", FORMAT, FORMAT_VERSION, "members", list)
    if not doc["members"]:
        raise ConfigError(f"{path}: the ensemble lists no member")
    members = []
    for i, m in enumerate(doc["members"]):
        if not isinstance(m, dict) or not isinstance(m.get("card"), str) or not isinstance(m.get("weights_sha256"), str):
            raise ConfigError(f"{path}: member #{i} needs 'card' (a path) and 'weights_sha256'")
        card = (path.parent / m["card"]).resolve()
        if not card.is_file():
            raise ConfigError(f"{path}: member #{i}'s model card {card} is missing")
        try:
            got = json.loads(card.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: member #{i}'s model card {card} is unreadable ({exc})") from None
        if got.get("weights_sha256") != m["weights_sha256"]:
            raise ConfigError(f"{path}: member #{i} ({card}) has other weights than when the ensemble was made "
                              f"(weights sha256 {str(got.get('weights_sha256'))[:12]}..., the ensemble file says "
                              f"{m['weights_sha256'][:12]}...): it was retrained or replaced; make the ensemble again")
        if m.get("card_sha256") and got.get("card_sha256") != m["card_sha256"]:
            raise ConfigError(f"{path}: member #{i}'s model card {card} changed since the ensemble was made (its "
                              "preprocessing or class_bias may differ); make the ensemble again")
        members.append(card)
    bias = doc.get("class_bias")
    if bias is not None:
        n_classes = len(doc.get("classes") or [])
        if (not isinstance(bias, list) or len(bias) != n_classes
                or not all(isinstance(b, (int, float)) and np.isfinite(b) for b in bias)):
            raise ConfigError(f"{path}: class_bias must be null or {n_classes} finite numbers (one per class), got {bias!r}")
        bias = [float(b) for b in bias]
    shifts = doc.get("test_time_shifts")
    if shifts is not None and (not isinstance(shifts, list) or not shifts
                               or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in shifts)):
        raise ConfigError(f"{path}: test_time_shifts must be null or a list of sample offsets (whole numbers >= 0), got {shifts!r}")
    names = (doc.get("validation") or {}).get("record_names") or []
    return EnsembleFile(path=path, members=members, class_bias=bias, validation_records=[str(n) for n in names],
                        test_time_shifts=shifts)


def expand_checkpoints(checkpoints: list[str]) -> tuple[list[str], EnsembleFile | None]:
    """``--checkpoint``'s paths with an ensemble file replaced by its members: ``(paths, the file or None)``.

    An ensemble file stands alone (its biases were fitted on its members' average, not on a larger one).
    """
    files = [c for c in checkpoints if ensemble_path(c) is not None]
    if not files:
        return list(checkpoints), None
    if len(checkpoints) > 1:
        raise ConfigError(f"{files[0]}: an ensemble file is given alone (its class_bias was fitted on its own members' "
                          "average); give it by itself, or give its members' run folders instead")
    ens = read_ensemble(files[0])
    return [os.fspath(m) for m in ens.members], ens


def cross_fitted_bias_f1(probs: np.ndarray, y: np.ndarray, repeats: int = CROSS_FIT_REPEATS, seed: int = 0) -> tuple[float, float]:
    """Macro-F1 of decisions whose biases were fitted on the *other* half of the records: (mean, std) over ``repeats``.

    Each repeat splits the records into two stratified halves, fits :func:`~ecgtl.evaluate.calibration.fit_class_bias`
    on each and decides the other with it; the macro-F1 is over all records. An honest estimate of
    what fitted biases do to records they were not fitted on.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    from ecgtl.evaluate.calibration import apply_class_bias, fit_class_bias
    from ecgtl.evaluate.metrics import macro_f1

    n_classes = probs.shape[1]
    if len(y) < 4:
        raise ConfigError(f"{len(y)} validation records are too few to fit and check class biases (at least 4)")
    counts = np.bincount(y, minlength=n_classes)
    stratify = counts[counts > 0].min() >= 2  # else a class cannot be in both halves: plain halves
    scores = []
    for r in range(repeats):
        pred = np.zeros(len(y), dtype=np.int64)
        halves = (StratifiedKFold if stratify else KFold)(n_splits=2, shuffle=True, random_state=seed + r)
        for fit, held in halves.split(probs, y):
            bias, _ = fit_class_bias(probs[fit], y[fit])
            pred[held] = apply_class_bias(probs[held], bias)
        scores.append(macro_f1(y, pred, n_classes))
    return float(np.mean(scores)), float(np.std(scores))


def validation_records(cards: list[Path]) -> list[str]:
    """The members' common validation records (their run folders' ``splits.json`` ``val``), refused if they differ."""
    from ecgtl.data.splits import load_splits

    common = None
    for card in cards:
        split = card.parent / "splits.json"
        if not split.is_file():
            raise ConfigError(f"{card}: no splits.json beside this model card, so its validation records are unknown; "
                              "give the records to calibrate on with --records FILE.json:val")
        val = sorted(load_splits(split)["val"])
        if common is None:
            common, first = val, split
        elif val != common and not (val and common):
            none, other = (split, first) if not val else (first, split)
            raise ConfigError(f"{none}: this member has no validation records (a final fit, val_fraction=0) and {other} "
                              "has some: ensemble final fits with final fits, or give the records with --records")
        elif val != common:
            raise ConfigError(f"{split}: this member was validated on other records than {first}; an ensemble is "
                              "calibrated on records none of its members trained on: give them with --records")
    return common


def _member_records(cards: list[Path], part: str) -> set[str]:
    """The records of ``part`` (train, val or test) in any member's ``splits.json``."""
    from ecgtl.data.splits import load_splits

    seen: set[str] = set()
    for card in cards:
        split = card.parent / "splits.json"
        if split.is_file():
            seen.update(load_splits(split)[part])
    return seen


def _member_data(cards: list[Path]) -> str:
    """The CinC folder the members were fine-tuned on (their ``config.yaml`` ``data``), if they agree."""
    import yaml

    found = set()
    for card in cards:
        cfg = card.parent / "config.yaml"
        if cfg.is_file():
            found.add((yaml.safe_load(cfg.read_text()) or {}).get("data"))
    found.discard(None)
    if len(found) != 1:
        raise ConfigError("the members' CinC folder is not known (their config.yaml files name none, or several): "
                          "give it with --data")
    return found.pop()


def run_ensemble(checkpoints: list[str], out: str | os.PathLike, data: str | None = None, records: str | None = None,
                 labels: str = "v3", calibrate: bool = False, device: str = "auto", workers: int | str | None = "auto",
                 progress: bool = True, shifts: list[int] | None = None) -> dict:
    """Make the ensemble file of ``checkpoints`` in ``out`` (with ``calibrate``: biases fitted on the ensemble's
    validation probabilities, kept only if cross-fitting says they help; ``shifts``: test-time shifts, kept in the
    file and used for its validation). Returns the file's content."""
    from ecgtl.constants import CINC_CLASSES
    from ecgtl.data.cinc2017 import Cinc2017
    from ecgtl.data.splits import read_record_list
    from ecgtl.evaluate.calibration import fit_class_bias
    from ecgtl.evaluate.commands import checkpoint_list, classify_folder
    from ecgtl.evaluate.inference import Ensemble, find_card, write_predictions
    from ecgtl.evaluate.metrics import classification_report, fmt
    from ecgtl.fileio import atomic_write

    paths = checkpoint_list(checkpoints)
    if any(ensemble_path(c) for c in paths):
        raise ConfigError("an ensemble file cannot be a member of another ensemble: give the models' run folders")
    out = Path(out)
    if (out / "model.json").is_file():
        raise ConfigError(f"{out}: holds a model card (model.json); give the ensemble its own folder")
    cards = [find_card(c).resolve() for c in paths]
    ens = Ensemble.load(paths, device=device, shifts=shifts)
    shifts = None if shifts is None else list(ens.members[0].shifts)
    data = data or _member_data(cards)
    names = read_record_list(records) if records else validation_records(cards)
    if not names:  # members of a final fit (val_fraction=0): nothing to validate or calibrate on
        if calibrate:
            raise ConfigError("the members list no validation records (trained without any: val_fraction=0) and --records "
                              "gives none: --calibrate needs labelled records that no member trained on")
        doc = _ensemble_doc(ens.classes, cards, out, None, None, shifts)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / ENSEMBLE_FILE, json.dumps(doc, indent=1) + "\n")
        print(f"ensemble of {len(cards)} models, not validated (its members were trained without validation records)")
        print(f"wrote {out / ENSEMBLE_FILE}")
        return doc
    for part, what in (("train", "training"), ("test", "test")):
        clash = sorted(_member_records(cards, part) & set(names))
        if clash:
            raise ConfigError(f"{len(clash)} of the {len(names)} calibration records were in a member's {what} split "
                              f"(e.g. {clash[:3]}): calibrate on validation records, which no member trained on and "
                              "no test score will use (the members' common val split)")
    cinc = Cinc2017(data, labels=labels)
    if not cinc.labels:
        raise ConfigError(f"{data}: no label file (REFERENCE.csv or REFERENCE-v3.csv): calibration needs labelled records")
    missing = sorted(set(names) - set(cinc.names))
    if missing:
        raise ConfigError(f"{data}: {len(missing)} of the calibration records are not in this folder, e.g. {missing[:3]}")
    kept, label_names, probs, failures, _ = classify_folder(ens, cinc, progress=progress, workers=workers, names=names)
    for name, why in failures:
        print(f"skipped {name}: {why}")
    if not kept:
        raise DataError(data, "no readable validation record")
    y = np.array([CINC_CLASSES.index(lab) for lab in label_names])
    plain = classification_report(y, probs, n_boot=0, split="validation")
    member_f1 = [classification_report(y, p, n_boot=0)["macro_f1"] for p in ens.last_member_probabilities]
    validation = {"records": len(kept), "data": str(Path(data).resolve()), "records_from": records or "the members' val split",
                  "record_names": sorted(kept),
                  "skipped": [{"record": n, "error": e} for n, e in failures],
                  "member_macro_f1": member_f1, "macro_f1": plain["macro_f1"], "challenge_f1": plain["challenge_f1"]}
    if shifts is not None:  # the same members without the shifts, on the same records, for comparison
        _, _, unshifted, _, _ = classify_folder(Ensemble.load(paths, device=device), cinc, progress=progress, workers=workers,
                                                names=kept)
        validation["test_time_shifts"] = shifts
        validation["macro_f1_without_shifts"] = classification_report(y, unshifted, n_boot=0)["macro_f1"]
    bias = None
    if calibrate:
        fitted, fitted_f1 = fit_class_bias(probs, y)
        cross, cross_sd = cross_fitted_bias_f1(probs, y)
        keep = cross > plain["macro_f1"]
        bias = [float(b) for b in fitted] if keep else None
        validation["calibration"] = {
            "fitted_bias": [float(b) for b in fitted], "macro_f1_fitted_records": fitted_f1,
            "macro_f1_cross_fitted": cross, "macro_f1_cross_fitted_std": cross_sd, "cross_fit_repeats": CROSS_FIT_REPEATS,
            "kept": bool(keep),
            "rule": "biases kept only if their 2-fold cross-fitted macro-F1 beats the uncalibrated ensemble's on the same records"}
    doc = _ensemble_doc(ens.classes, cards, out, bias, validation, shifts)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions_val.csv", kept, y, probs)
    atomic_write(out / ENSEMBLE_FILE, json.dumps(doc, indent=1) + "\n")
    print(f"ensemble of {len(cards)} models on {len(kept)} validation records: macro-F1 {fmt(plain['macro_f1'], digits=4)} "
          f"(members {', '.join(fmt(f, digits=4) for f in member_f1)})")
    if shifts is not None:
        print(f"test-time shifts {','.join(map(str, shifts))} samples: macro-F1 {fmt(plain['macro_f1'], digits=4)} with them, "
              f"{fmt(validation['macro_f1_without_shifts'], digits=4)} without")
    if calibrate:
        c = validation["calibration"]
        print(f"class biases {', '.join(f'{b:+.1f}' for b in c['fitted_bias'])}: macro-F1 cross-fitted "
              f"{fmt(c['macro_f1_cross_fitted'], digits=4)} +- {fmt(c['macro_f1_cross_fitted_std'], digits=4)} -> "
              + ("kept" if c["kept"] else "not kept (no gain over the uncalibrated ensemble)"))
    print(f"wrote {out / ENSEMBLE_FILE}")
    return doc


def _ensemble_doc(classes, cards: list[Path], out: Path, bias: list[float] | None, validation: dict | None,
                  shifts: list[int] | None = None) -> dict:
    """The ensemble file's content; ``validation`` None: members trained without validation records."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "classes": list(classes),
            "combine": "the mean of the members' class probabilities (each with its own preprocessing and class_bias, "
                       "each window also read at every test_time_shifts offset and averaged), "
                       "then the ensemble's class_bias: softmax(log p + bias)",
            "class_bias": bias,
            "test_time_shifts": shifts,
            "members": [{"card": os.path.relpath(c, out.resolve()), **{k: json.loads(c.read_text()).get(k)
                                                                       for k in ("weights_sha256", "card_sha256")}}
                        for c in cards],
            "validation": validation}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ensemble", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", action="extend", metavar="RUN",
                   help="the members: run folders or model cards (repeat the flag or list several)")
    p.add_argument("--out", required=True, help="folder for ensemble.json and the validation predictions")
    p.add_argument("--calibrate", action="store_true", help="fit per-class decision biases on the ensemble's validation "
                   "probabilities (kept only if cross-fitting says they help)")
    p.add_argument("--test-time-shifts", type=_shifts, metavar="K,K,...",
                   help="test-time augmentation: also read each window K samples later (at each member's rate) and "
                   "average; one period of the 1-D ResNets' stride is 0,4,8,12,16,20,24,28 (0,8,...,56 for "
                   "resnet18_preact_stem4; default: none)")
    p.add_argument("--data", help="CinC-layout folder of the validation records (default: the members' config)")
    p.add_argument("--records", help="validation records: FILE.json:val or a file of names (default: the members' val split)")
    p.add_argument("--labels", default="v3", help="v3 (default), original, or a label file")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: 0 if run_ensemble(a.checkpoint, a.out, a.data, a.records, a.labels, a.calibrate, a.device,
                                                    progress=not a.no_progress, shifts=a.test_time_shifts) else 1)


def _shifts(text: str) -> list[int]:
    """``--test-time-shifts``: comma-separated whole numbers of samples."""
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of samples (e.g. 0,8,16,24), got {text!r}") from None
