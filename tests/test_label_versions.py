"""``scripts/label_versions.py``: the original CinC 2017 labels against v3, per class and per split."""

from __future__ import annotations

import pytest

from ecgtl.data.splits import load_splits, save_splits
from ecgtl.errors import DataError
from script_loader import load_script


@pytest.fixture(scope="module")
def label_versions():
    return load_script("label_versions")


def _folder(tmp_path, original: dict, v3: dict):
    folder = tmp_path / "training2017"  # PhysioNet's layout: v3 beside the folder, the original inside
    folder.mkdir()
    (folder / "REFERENCE.csv").write_text("".join(f"{n},{c}\n" for n, c in original.items()))
    (tmp_path / "REFERENCE-v3.csv").write_text("".join(f"{n},{c}\n" for n, c in v3.items()))
    return folder


def test_counts_per_class_and_split(label_versions, tmp_path):
    original = {"A1": "N", "A2": "N", "A3": "O", "A4": "~", "A5": "A", "A6": "N"}
    v3 = {"A1": "N", "A2": "~", "A3": "~", "A4": "~", "A5": "A", "A6": "O"}
    pairs = label_versions.label_pairs(_folder(tmp_path, original, v3))
    assert pairs["A2"] == ("N", "~") and pairs["A4"] == ("~", "~")
    save_splits(tmp_path / "sel.json", {"train": ["A1", "A2", "A3"], "val": ["A4"], "test": []}, seed=1)
    where = label_versions.split_of(pairs, load_splits(tmp_path / "sel.json"), tmp_path / "sel.json")
    assert where == {"A1": "train", "A2": "train", "A3": "train", "A4": "val", "A5": "test", "A6": "test"}
    text = label_versions.markdown(pairs, where)
    assert "| N | 1 | 0 | 1 | 1 | 3 |" in text  # original N: one stayed N, one became O, one noisy
    assert "| total | 1 | 1 | 1 | 3 | 6 |" in text
    assert "| selection training | 3 | 1 (1) | 0 (0) | 0 (0) | 2 (0) |" in text  # two v3-noisy, neither noisy before
    assert "| selection validation | 1 | 0 (0) | 0 (0) | 0 (0) | 1 (1) |" in text
    assert "| standard test | 2 | 0 (0) | 1 (1) | 1 (0) | 0 (0) |" in text


def test_records_labelled_in_one_release_only_are_an_error(label_versions, tmp_path):
    folder = _folder(tmp_path, {"A1": "N", "A2": "O"}, {"A1": "N"})
    with pytest.raises(DataError, match="REFERENCE-v3.csv: 1 records are labelled in one release only"):
        label_versions.label_pairs(folder)


def test_missing_label_files_are_named(label_versions, tmp_path):
    folder = tmp_path / "training2017"
    folder.mkdir()
    with pytest.raises(DataError, match="REFERENCE.csv: missing"):
        label_versions.label_pairs(folder)
    (folder / "REFERENCE.csv").write_text("A1,N\n")
    with pytest.raises(DataError, match="no REFERENCE-v3.csv"):
        label_versions.label_pairs(folder)


def test_a_bad_split_file_is_named(label_versions, tmp_path):
    pairs = {"A1": ("N", "N"), "A2": ("O", "~")}
    with pytest.raises(DataError, match=r"sel.json: record A9 of the val list has no label"):
        label_versions.split_of(pairs, {"train": ["A1"], "val": ["A9"]}, tmp_path / "sel.json")
    with pytest.raises(DataError, match=r"sel.json: record A1 is in the train list and the val list"):
        label_versions.split_of(pairs, {"train": ["A1"], "val": ["A1"]}, tmp_path / "sel.json")
