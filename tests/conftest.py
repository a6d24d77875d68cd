"""Shared fixtures: the real PhysioNet data of ``../shared/data``, unpacked once per test session."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("ECGTL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _require_shared() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set ECGTL_SHARED_DATA to the shared/data folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require_shared()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    """An unpacked mirror of physionet.org/files/ built from ../shared/data (read-only by convention)."""
    shared = _require_shared()
    root = tmp_path_factory.mktemp("mirror")
    shutil.copytree(shared / "physionet-files", root, dirs_exist_ok=True)
    for z in sorted(shared.glob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            zf.extractall(root)
    return root


@pytest.fixture(scope="session")
def cinc_folder(mirror) -> Path:
    """The CinC 2017 training folder (``training2017/``) with the v3 labels in its parent."""
    base = mirror / "challenge-2017" / "1.0.0"
    if not (base / "training2017").is_dir():
        with zipfile.ZipFile(base / "training2017.zip") as zf:
            zf.extractall(base)
    return base / "training2017"


@pytest.fixture(scope="session")
def icentia_root(mirror) -> Path:
    return mirror / "icentia11k-continuous-ecg" / "1.0"


@pytest.fixture
def icentia_copy(icentia_root, tmp_path) -> Path:
    """A writable copy of one Icentia11k segment (patient 0, segment 0) in the WFDB layout, to damage in a test."""
    folder = tmp_path / "p00" / "p00000"
    folder.mkdir(parents=True)
    for ext in ("hea", "dat", "atr"):
        shutil.copy(icentia_root / "p00" / "p00000" / f"p00000_s00.{ext}", folder)
    return tmp_path
