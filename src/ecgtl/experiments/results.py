"""The experiment grid's results table: one CSV row per finished fine-tune, written atomically.

Everything ``ecgtl report`` draws comes from this table, so it carries the validation curve of
each run (``val_macro_f1_curve``, ``train_seconds_curve``: one value per epoch, ``;``-separated)
next to the scores. Columns:

* the run's axes: ``run_id``, ``blocks`` (the grid blocks that asked for it, ``;``-separated),
  ``arch`` (model name), ``input`` (``1d`` or ``2d_stft``), ``pretext`` (``none`` = random
  initialisation; ``beat``, ``rhythm``, ``heart_rate``, ``future`` on the pre-training store;
  ``heart_rate@cinc``, ``future@cinc`` on the CinC training split's own records, unlabelled),
  ``patient_fraction`` (of the pre-training patients; empty for ``none``), ``fs`` (Hz),
  ``label_fraction`` (of the CinC training labels), ``seed``, ``split_seed``;
* provenance: ``config_hash`` (of the fine-tuning config), ``finetune_preset``, ``pretrain_run``;
* scores: ``val_macro_f1`` (best epoch), ``test_macro_f1`` with ``test_macro_f1_lo``/``_hi``
  (bootstrap 95% CI), ``test_challenge_f1`` (mean F1 of N, A, O), ``test_f1_<class>`` and
  ``test_auroc_<class>`` for N, A, O, ~ (``~`` is written ``noisy`` in column names);
* training: ``best_epoch``, ``epochs_run``, ``epochs_to_95``, ``seconds_to_95`` (the first epoch,
  and the training seconds until it, whose validation macro-F1 reaches 95% of the run's best),
  ``train_seconds``, ``train_records``;
* ``extra_<name>_macro_f1`` / ``extra_<name>_challenge_f1`` for each ``--extra-test`` folder.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ecgtl.constants import CINC_CLASSES
from ecgtl.errors import DataError
from ecgtl.fileio import atomic_write

CLASS_COLUMN = {"N": "N", "A": "A", "O": "O", "~": "noisy"}

AXES = ["run_id", "blocks", "arch", "input", "pretext", "patient_fraction", "fs", "label_fraction", "seed", "split_seed"]
PROVENANCE = ["config_hash", "finetune_preset", "pretrain_run"]
SCORES = (["val_macro_f1", "test_macro_f1", "test_macro_f1_lo", "test_macro_f1_hi", "test_challenge_f1"]
          + [f"test_f1_{CLASS_COLUMN[c]}" for c in CINC_CLASSES] + [f"test_auroc_{CLASS_COLUMN[c]}" for c in CINC_CLASSES])
TRAINING = ["best_epoch", "epochs_run", "epochs_to_95", "seconds_to_95", "train_seconds", "train_records",
            "val_macro_f1_curve", "train_seconds_curve"]
COLUMNS = AXES + PROVENANCE + SCORES + TRAINING
#: columns that depend on the machine's speed, not on the computation (left out when comparing tables)
TIMING_COLUMNS = {"seconds_to_95", "train_seconds", "train_seconds_curve"}


def extra_columns(name: str) -> list[str]:
    """The columns of one ``--extra-test`` folder, named by ``name`` (the folder's name)."""
    return [f"extra_{name}_macro_f1", f"extra_{name}_challenge_f1"]


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of a results table (values as text, as written); [] if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("run_id", "pretext", "test_macro_f1") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(path, f"not an experiment results table (missing columns {', '.join(missing)})")
        rows = list(reader)
    ids = [r["run_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError(path, "a run appears twice in the results table")
    return rows


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write the whole table atomically (a kill leaves the old table or the new one, never half of one)."""
    extra = sorted({k for r in rows for k in r if k.startswith("extra_")})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS + extra, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _text(r.get(k)) for k in COLUMNS + extra})
    atomic_write(path, text.getvalue())


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (list, tuple)):
        return ";".join(_text(v) for v in value)
    return str(value)


def parse_curve(text: str) -> list[float]:
    """A ``;``-separated curve column as floats."""
    return [float(v) for v in text.split(";") if v != ""]
