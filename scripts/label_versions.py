"""How the CinC 2017 labels moved between the original release and v3, per class and per split (issue 8).

    python scripts/label_versions.py [--data DIR] [--splits reports/recipe-ablation-gpu/runs/selection-splits.json]
        [--report reports/label-versions.md]

``--data`` is the ``training2017`` folder: its ``REFERENCE.csv`` holds the original labels, the v3
labels are found as every reader finds them (:func:`ecgtl.data.cinc2017.find_label_file`). The
splits are the selection split of ``scripts/recipe_ablation.py``; records in neither of its lists are
the standard test split. Only labels are read, no model and no signal: counting the test split's
labels chooses nothing. Writes a markdown table of counts: original label (rows) by v3 label
(columns), and per split the v3 classes with how many of each kept their original label.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import find_label_file, read_labels
from ecgtl.data.splits import load_splits
from ecgtl.errors import DataError
from ecgtl.fileio import atomic_write


def label_pairs(data: Path) -> dict[str, tuple[str, str]]:
    """``{record: (original label, v3 label)}`` for the records of ``data``; a record in one file only is an error."""
    original_file = find_label_file(data, "original")
    if original_file is None:
        raise DataError(data / "REFERENCE.csv", "missing: the original labels sit in the training2017 folder")
    original = read_labels(original_file)
    v3_file = find_label_file(data, "v3")
    if v3_file is None or v3_file.name != "REFERENCE-v3.csv":
        raise DataError(data, "no REFERENCE-v3.csv in the folder or, for PhysioNet's layout, beside it")
    v3 = read_labels(v3_file)
    if set(original) != set(v3):
        only = sorted(set(original) ^ set(v3))
        raise DataError(v3_file, f"{len(only)} records are labelled in one release only (e.g. {only[0]})")
    return {name: (original[name], v3[name]) for name in sorted(v3)}


def split_of(pairs: dict, splits: dict, path: Path) -> dict[str, str]:
    """Each record's split: the selection split's ``train`` / ``val``, else ``test`` (the standard test split).

    ``path`` is the splits file, named by the DataError for a record without a label or listed twice.
    """
    where = {n: "test" for n in pairs}
    for part in ("train", "val"):
        for n in splits[part]:
            if n not in where:
                raise DataError(path, f"record {n} of the {part} list has no label")
            if where[n] != "test":
                raise DataError(path, f"record {n} is in the {where[n]} list and the {part} list")
            where[n] = part
    return where


def markdown(pairs: dict, where: dict) -> str:
    """The report: the original-by-v3 count table, then per split the v3 classes and how many kept their original label."""
    cross = Counter(pairs.values())
    head = "| original \\ v3 | " + " | ".join(CINC_CLASSES) + " | total |\n" + "|---" * (len(CINC_CLASSES) + 2) + "|\n"
    rows = []
    for o in CINC_CLASSES:
        counts = [cross[(o, v)] for v in CINC_CLASSES]
        rows.append(f"| {o} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
    totals = [sum(cross[(o, v)] for o in CINC_CLASSES) for v in CINC_CLASSES]
    rows.append("| total | " + " | ".join(str(t) for t in totals) + f" | {sum(totals)} |")
    per = ["| split | records | " + " | ".join(f"v3 {c} (same originally)" for c in CINC_CLASSES) + " |",
           "|---|---" + "|---" * len(CINC_CLASSES) + "|"]
    for part in ("train", "val", "test"):
        names = [n for n in pairs if where[n] == part]
        cells = []
        for c in CINC_CLASSES:
            n_c = sum(pairs[n][1] == c for n in names)
            kept = sum(pairs[n] == (c, c) for n in names)
            cells.append(f"{n_c} ({kept})")
        label = {"train": "selection training", "val": "selection validation", "test": "standard test"}[part]
        per.append(f"| {label} | {len(names)} | " + " | ".join(cells) + " |")
    return ("CinC 2017 labels: the original release (`REFERENCE.csv` in `training2017/`) against v3 "
            f"(`REFERENCE-v3.csv`), {len(pairs)} records. Command: `python scripts/label_versions.py`.\n\n"
            + head + "\n".join(rows) + "\n\n" + "\n".join(per) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--splits", default="reports/recipe-ablation-gpu/runs/selection-splits.json")
    ap.add_argument("--report", default="reports/label-versions.md")
    args = ap.parse_args()
    pairs = label_pairs(Path(args.data))
    text = markdown(pairs, split_of(pairs, load_splits(Path(args.splits)), Path(args.splits)))
    atomic_write(Path(args.report), text)
    print(text)


if __name__ == "__main__":
    main()
