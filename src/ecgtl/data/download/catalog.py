"""The catalog: which PhysioNet databases are known, where they live, and patient selection.

:data:`DATABASES` maps a short name (``cinc2017``, ``mitdb``, ``svdb``, ``aftdb``,
``icentia11k``) to a :class:`Database`: its folder under the mirror's root and which of its
files to fetch. Icentia11k is selected by patient (:func:`parse_patients`,
:func:`icentia11k_patient_files`), since the full set is about 1 TiB.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ecgtl.constants import ICENTIA_NUM_PATIENTS, ICENTIA_SEGMENTS_PER_PATIENT
from ecgtl.errors import ConfigError

__all__ = [
    "DATABASES",
    "DEFAULT_MIRROR",
    "Database",
    "icentia11k_patient_files",
    "parse_patients",
    "resolve_database",
]

DEFAULT_MIRROR = "https://physionet.org/files/"


def icentia11k_patient_files(patient: int) -> list[str]:
    """Relative paths (inside ``icentia11k-continuous-ecg/1.0``) of all files of one patient.

    Patient ``N`` lives in ``p{N//1000:02d}/p{N:05d}/`` with 50 segments ``_s00`` .. ``_s49``,
    each a ``.hea``, ``.dat`` and ``.atr``.
    """
    if not 0 <= patient < ICENTIA_NUM_PATIENTS:
        raise ConfigError(f"Icentia11k patient {patient} out of range 0-{ICENTIA_NUM_PATIENTS - 1}")
    folder = f"p{patient // 1000:02d}/p{patient:05d}"
    return [
        f"{folder}/p{patient:05d}_s{segment:02d}.{ext}"
        for segment in range(ICENTIA_SEGMENTS_PER_PATIENT)
        for ext in ("hea", "dat", "atr")
    ]


@dataclass(frozen=True)
class Database:
    """A PhysioNet database version and which of its files to fetch.

    ``path`` is the folder under the mirror's root (``mitdb/1.0.0``). ``files`` restricts the
    download to those relative paths; ``None`` means every file listed in ``SHA256SUMS.txt``.
    ``patient_files`` (Icentia11k) maps a patient number to its relative paths, and makes a
    patient selection mandatory. ``extract`` names zip archives unpacked next to themselves
    after verification.
    """

    name: str
    path: str
    title: str
    files: tuple[str, ...] | None = None
    patient_files: Callable[[int], Iterable[str]] | None = None
    extract: tuple[str, ...] = ()


DATABASES: dict[str, Database] = {
    db.name: db
    for db in (
        Database(
            "cinc2017",
            "challenge-2017/1.0.0",
            "PhysioNet/CinC Challenge 2017 (AF classification from a short single-lead ECG)",
            files=("training2017.zip", "REFERENCE-v3.csv"),
            extract=("training2017.zip",),
        ),
        Database("mitdb", "mitdb/1.0.0", "MIT-BIH Arrhythmia Database"),
        Database("svdb", "svdb/1.0.0", "MIT-BIH Supraventricular Arrhythmia Database"),
        Database("aftdb", "aftdb/1.0.0", "AF Termination Challenge Database"),
        Database(
            "icentia11k",
            "icentia11k-continuous-ecg/1.0",
            "Icentia11k continuous ECG (select patients: the full set is about 1 TiB)",
            patient_files=icentia11k_patient_files,
        ),
    )
}


def resolve_database(database: str | Database) -> Database:
    """The :class:`Database` itself, or the one :data:`DATABASES` knows by that name (any case)."""
    if isinstance(database, Database):
        return database
    key = database.lower()
    if key not in DATABASES:
        raise ConfigError(f"unknown database {database!r}; known: {', '.join(DATABASES)}")
    return DATABASES[key]


def parse_patients(spec: str | int | Iterable[int]) -> list[int]:
    """Parse a patient selection: ``"0-9"``, ``"0,5,7"``, ``"0-3,10"``, an int, or ints.

    Returns the sorted, de-duplicated patient numbers. Raises :class:`ConfigError` on an
    empty or malformed selection, or a number outside Icentia11k's range.
    """
    if isinstance(spec, int):
        numbers: set[int] = {spec}
    elif isinstance(spec, str):
        numbers = set()
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"bad patient selection {spec!r}: expected e.g. '0-9' or '0,5,7'")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigError(f"bad patient range {part!r}: end before start")
            numbers.update(range(lo, hi + 1))
    else:
        numbers = {int(n) for n in spec}
    if not numbers:
        raise ConfigError("empty patient selection")
    bad = [n for n in numbers if not 0 <= n < ICENTIA_NUM_PATIENTS]
    if bad:
        raise ConfigError(f"patients out of range 0-{ICENTIA_NUM_PATIENTS - 1}: {sorted(bad)[:5]}")
    return sorted(numbers)
