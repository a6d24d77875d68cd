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
    patient selection mandatory, and ``patient_count`` bounds it. ``extract`` names zip
    archives unpacked next to themselves after verification.
    """

    name: str
    path: str
    title: str
    files: tuple[str, ...] | None = None
    patient_files: Callable[[int], Iterable[str]] | None = None
    extract: tuple[str, ...] = ()
    patient_count: int | None = None  # patients are numbered 0 .. patient_count - 1


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
            patient_count=ICENTIA_NUM_PATIENTS,
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


def parse_patients(spec: str | int | Iterable[int], count: int = ICENTIA_NUM_PATIENTS) -> list[int]:
    """Parse a patient selection: ``"0-9"``, ``"0,5,7"``, ``"0-3,10"``, an int, or ints.

    Returns the sorted, de-duplicated patient numbers. Raises :class:`ConfigError` on an
    empty or malformed selection, or a number outside ``0 .. count - 1`` (``count`` is the
    database's number of patients, 11,000 for Icentia11k). Bounds are checked before a range
    is expanded, so ``"0-99999999"`` is refused at once instead of filling the memory: the
    work and memory are bounded by ``count`` and the length of ``spec``.
    """
    if count < 1:
        raise ConfigError(f"patient count must be >= 1, got {count}")
    numbers: set[int] = set()
    if isinstance(spec, int):
        _check_patient(spec, count, str(spec))
        numbers.add(spec)
    elif isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"bad patient selection {spec[:100]!r}: expected e.g. '0-9' or '0,5,7'")
            lo = _patient_number(m.group(1), count, part)
            hi = _patient_number(m.group(2), count, part) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigError(f"bad patient range {part!r}: end before start")
            numbers.update(range(lo, hi + 1))  # at most `count` numbers: both ends are in range
    else:
        for n in spec:  # checked one by one, so a huge (or endless) iterable stops at the first bad number
            n = int(n)
            _check_patient(n, count, str(n))
            numbers.add(n)
    if not numbers:
        raise ConfigError("empty patient selection")
    return sorted(numbers)


def _out_of_range(text: str, count: int) -> ConfigError:
    return ConfigError(
        f"patient {text[:20]}{'...' if len(text) > 20 else ''} out of range: "
        f"the database has {count:,} patients, numbered 0-{count - 1}"
    )


def _check_patient(n: int, count: int, text: str) -> None:
    if not 0 <= n < count:
        raise _out_of_range(text, count)


def _patient_number(digits: str, count: int, part: str) -> int:
    """``int(digits)``, refusing a number too long to be a patient before converting it
    (Python refuses to convert more than 4,300 digits, with a ValueError, not our error)."""
    if len(digits.lstrip("0")) > len(str(count)):
        raise _out_of_range(part, count)
    n = int(digits)
    _check_patient(n, count, part)
    return n
