"""Record-level splits of a labelled set (CinC 2017): train / val / test, k folds, low-label subsets.

The study's protocol (``shared/reference/paper-protocol.md``, Fine-tuning):
a stratified 80/20 train/test split, then 5% of ALL records (6.25% of the
training part) moved from train to validation, stratified as well.

Every function is deterministic for a seed and independent of the order in
which the records are given (they are sorted by name first), and returns
sorted name lists. Split files are JSON, written atomically, and validated
when read (:func:`load_splits`).
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecgtl.data.formats import read_format_json
from ecgtl.errors import ConfigError
from ecgtl.fileio import atomic_write

__all__ = [
    "SPLIT_KEYS",
    "kfold_splits",
    "load_splits",
    "make_splits",
    "read_record_list",
    "record_list_source",
    "save_splits",
    "split_counts",
    "subset_labels",
]

SPLIT_KEYS = ("train", "val", "test")
FORMAT = "ecgtl-splits"
FORMAT_VERSION = 1


def _sorted_pairs(names: Sequence[str], labels: Sequence[Hashable]) -> tuple[list[str], list[Hashable]]:
    names = [str(n) for n in names]
    labels = list(labels)
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names but {len(labels)} labels")
    if not names:
        raise ValueError("no records to split")
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise ValueError(f"{len(dup)} duplicated record name(s), e.g. {sorted(dup)[:3]}")
    if any(lab is None for lab in labels):
        raise ValueError("every record needs a label to be split stratified (got None)")
    order = sorted(range(len(names)), key=names.__getitem__)
    return [names[i] for i in order], [labels[i] for i in order]


def _n_of(fraction: float, total: int, what: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {fraction!r}")
    return int(round(fraction * total))


def _stratified_take(names: list[str], labels: list[Hashable], n_take: int, seed: int) -> tuple[list[str], list[Hashable], list[str]]:
    """Move ``n_take`` records, stratified by label, out of ``names``: returns (kept names, kept labels, taken names)."""
    if n_take == 0:
        return names, labels, []
    if n_take >= len(names):
        raise ValueError(f"cannot take {n_take} of {len(names)} records and keep any")
    from sklearn.model_selection import train_test_split  # loads in seconds: only making splits needs it

    try:
        kept, taken, kept_labels, _ = train_test_split(
            names, labels, test_size=n_take, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:  # e.g. a class with a single record, or more classes than records to take
        raise ValueError(f"stratified split impossible: {exc}") from None
    return list(kept), list(kept_labels), list(taken)


def make_splits(
    names: Sequence[str],
    labels: Sequence[Hashable],
    test_fraction: float = 0.2,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, list[str]]:
    """The study's stratified train / val / test split of records.

    ``round(test_fraction * N)`` records go to test (stratified by label), then
    ``round(val_fraction * N)`` records -- a fraction of ALL ``N`` records, i.e.
    0.05 / 0.8 = 6.25% of the training part by default -- move from train to
    validation, stratified again. ``labels[i]`` is the class of ``names[i]`` (any
    hashable: ``"N"``, ``"A"``, ... or class indices).

    Returns ``{"train": [...], "val": [...], "test": [...]}``: sorted, disjoint,
    together exactly ``names``. The same names, labels and seed give the same
    split whatever the order of the input.
    """
    names, labels = _sorted_pairs(names, labels)
    n = len(names)
    n_test = _n_of(test_fraction, n, "test_fraction")
    n_val = _n_of(val_fraction, n, "val_fraction")
    if n_test + n_val >= n:
        raise ValueError(f"test ({n_test}) + val ({n_val}) records leave no training record out of {n}")
    rest, rest_labels, test = _stratified_take(names, labels, n_test, seed)
    train, _, val = _stratified_take(rest, rest_labels, n_val, seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def kfold_splits(
    names: Sequence[str],
    labels: Sequence[Hashable],
    k: int = 5,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> list[dict[str, list[str]]]:
    """``k`` stratified folds (:class:`~sklearn.model_selection.StratifiedKFold`, shuffled with ``seed``).

    Fold ``i``'s test set is the i-th fold; its validation set is
    ``round(val_fraction * N)`` records (a fraction of ALL records, as in
    :func:`make_splits`) carved, stratified, from the other folds; the rest is its
    training set. Every record is a test record in exactly one fold.
    """
    names, labels = _sorted_pairs(names, labels)
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ValueError(f"k must be a whole number >= 2, got {k!r}")
    n_val = _n_of(val_fraction, len(names), "val_fraction")
    arr_names = np.array(names, dtype=object)
    arr_labels = np.array(labels, dtype=object)
    from sklearn.model_selection import StratifiedKFold  # loads in seconds: only making splits needs it

    skf = StratifiedKFold(n_splits=int(k), shuffle=True, random_state=seed)
    # StratifiedKFold wants labels it can sort/compare: encode them as integers
    _, y = np.unique(np.array([str(lab) for lab in labels]), return_inverse=True)
    folds = []
    for fold, (rest_idx, test_idx) in enumerate(skf.split(np.zeros(len(names)), y)):
        rest, rest_labels = list(arr_names[rest_idx]), list(arr_labels[rest_idx])
        train, _, val = _stratified_take(rest, rest_labels, n_val, seed + fold)
        folds.append({"train": sorted(train), "val": sorted(val), "test": sorted(arr_names[test_idx].tolist())})
    return folds


def subset_labels(names: Sequence[str], labels: Sequence[Hashable], fraction: float, seed: int = 0) -> list[str]:
    """A stratified ``fraction`` of (training) records, for low-label fine-tuning.

    Each class keeps ``max(1, round(fraction * n_class))`` of its records, so
    every class stays present. For a fixed seed the subsets are nested: the 10%
    subset is contained in the 20% subset (each class is shuffled once, and a
    prefix of that order is kept). Returns sorted names.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    names, labels = _sorted_pairs(names, labels)
    by_class: dict[Hashable, list[str]] = collections.defaultdict(list)
    for name, lab in zip(names, labels):
        by_class[lab].append(name)
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    for lab in sorted(by_class, key=str):
        members = by_class[lab]
        order = rng.permutation(len(members))
        n_keep = min(len(members), max(1, int(round(fraction * len(members)))))
        keep.extend(members[i] for i in order[:n_keep])
    return sorted(keep)


# ----------------------------------------------------------------------------- files
def split_counts(splits: Mapping[str, Sequence[str]], labels: Mapping[str, Hashable] | None = None) -> dict[str, dict[str, int]]:
    """``{split: {"total": n, <class>: n, ...}}``; per-class counts only when ``labels`` (name -> class) is given."""
    out: dict[str, dict[str, int]] = {}
    for key, members in splits.items():
        counts: dict[str, int] = {"total": len(members)}
        if labels is not None:
            per_class = collections.Counter(str(labels[n]) for n in members)
            counts.update({c: per_class[c] for c in sorted(per_class)})
        out[key] = counts
    return out


def save_splits(path: str | os.PathLike, splits: Mapping[str, Sequence[str]], *, labels: Mapping[str, Hashable] | None = None, **meta: Any) -> Path:
    """Write ``splits`` to ``path`` as JSON, atomically (temporary file in the same folder + ``os.replace``).

    ``meta`` is stored as given (e.g. ``seed=0, test_fraction=0.2,
    val_fraction=0.05, label_file="REFERENCE-v3.csv"``; paths are stored as
    strings); ``labels`` (name -> class), when given, adds counts per split
    and class. The splits are validated first (see :func:`load_splits`).
    """
    path = Path(path)
    clean = {key: sorted(str(n) for n in splits[key]) if key in splits else None for key in SPLIT_KEYS}
    _validate(clean, str(path))
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "meta": {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in meta.items()},
        "counts": split_counts(clean, labels),
        "splits": clean,
    }
    text = json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return path


def _validate(splits: Mapping[str, Any], where: str) -> None:
    seen: dict[str, str] = {}
    for key in SPLIT_KEYS:
        members = splits.get(key)
        if not isinstance(members, list) or not all(isinstance(n, str) for n in members):
            raise ConfigError(f"{where}: split {key!r} must be a list of record names")
        dup = [n for n, c in collections.Counter(members).items() if c > 1]
        if dup:
            raise ConfigError(f"{where}: split {key!r} lists {len(dup)} record(s) twice, e.g. {sorted(dup)[:3]}")
        for name in members:
            if name in seen:
                overlap = sorted(set(members) & {n for n, k in seen.items() if k == seen[name]})
                raise ConfigError(f"{where}: splits {seen[name]!r} and {key!r} overlap in {len(overlap)} record(s), e.g. {overlap[:3]}")
            seen[name] = key
    extra = sorted(set(splits) - set(SPLIT_KEYS))
    if extra:
        raise ConfigError(f"{where}: unknown split(s) {extra} (expected {', '.join(SPLIT_KEYS)})")


def load_splits(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    return_meta: bool = False,
) -> dict[str, list[str]] | tuple[dict[str, list[str]], dict[str, Any]]:
    """Read and validate a split file of :func:`save_splits`.

    Checks the format, that ``train``, ``val`` and ``test`` are lists of names
    without repeats, that they are disjoint, that their sizes match the stored
    counts, and -- when ``names`` (the records available) is given -- that every
    listed record exists. Any problem raises :class:`~ecgtl.errors.ConfigError`
    whose message starts with the file's path. Returns the splits, or
    ``(splits, meta)`` with ``return_meta=True``.
    """
    path = Path(path)
    where = os.fspath(path)
    doc = read_format_json(path, "split file", FORMAT, FORMAT_VERSION, "splits", dict)
    splits = doc["splits"]
    _validate(splits, where)
    counts = doc.get("counts") or {}
    for key in SPLIT_KEYS:
        stored = (counts.get(key) or {}).get("total") if isinstance(counts, dict) else None
        if stored is not None and stored != len(splits[key]):
            raise ConfigError(f"{where}: split {key!r} lists {len(splits[key])} records but the file's counts say {stored} (edited by hand?)")
    if names is not None:
        available = set(names)
        missing = sorted(n for key in SPLIT_KEYS for n in splits[key] if n not in available)
        if missing:
            raise ConfigError(f"{where}: {len(missing)} record(s) of the split file are not in the data, e.g. {missing[:3]}")
    out = {key: list(splits[key]) for key in SPLIT_KEYS}
    if return_meta:
        return out, dict(doc.get("meta") or {})
    return out


def record_list_source(spec: str | os.PathLike) -> tuple[str, str]:
    """``(file, part)`` of a record list ``spec``: ``("s.json", "test")`` for ``s.json:test``, ``(file, "")`` for a
    names file (also one whose own name ends in ``:test``, or is called ``test``, when that file exists)."""
    text = os.fspath(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail in SPLIT_KEYS and head and not Path(text).is_file():
        return head, tail
    return text, ""


def read_record_list(spec: str | os.PathLike) -> list[str]:
    """Record names from ``spec``: ``FILE.json:PART`` (a part -- ``train``, ``val`` or ``test`` -- of a split
    file of :func:`save_splits`) or a text file of names, one per line (``RECORDS``' layout; ``#`` comments).

    What ``ecgtl evaluate --records`` and ``ecgtl ensemble --records`` take, e.g.
    ``runs/finetune/cpu/splits.json:test``. Raises :class:`~ecgtl.errors.ConfigError` naming the file
    for a missing file, an unknown or empty part, repeated names or no names.
    """
    path, part = record_list_source(spec)
    if part:
        splits = load_splits(path)
        names = list(splits[part])
        if not names:
            raise ConfigError(f"{path}: the split file's {part!r} part lists no record")
        return names
    if Path(path).suffix == ".json":
        raise ConfigError(f"{path}: a split file needs its part: {path}:test (or :train, :val)")
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: record list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable record list ({type(exc).__name__}: {exc})") from None
    names = [ln.split("#", 1)[0].strip() for ln in lines]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"{path}: lists no record name")
    dup = sorted(n for n, c in collections.Counter(names).items() if c > 1)
    if dup:
        raise ConfigError(f"{path}: {len(dup)} record name(s) listed twice, e.g. {dup[:3]}")
    return names
