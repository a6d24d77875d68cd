"""The main job's transfer steps (pre-train -> fine-tune random vs pre-trained -> compare) end to end on small real
data, then a rerun that resumes every run instead of refusing or retraining it."""

from __future__ import annotations

import functools
import json
import shutil

import pytest

import ecgtl.config
from ecgtl.data.icentia11k import IcentiaWfdbPatient
from ecgtl.data.store import prepare
from ecgtl.data.wfdb_database import database_records
from ecgtl.pipeline import run_transfer

# the presets' settings cut down to seconds (the pipeline itself still reads the named presets)
TINY = {"pretrain": ["model.width=0.125", "frame_samples=512", "frames_per_patient=8", "val_frames_per_patient=4", "rounds=1",
                     "batch_size=16", "optim.warmup_epochs=0", "device=cpu", "val_fraction=0.2"],
        "finetune": ["fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125", "epochs=1", "batch_size=32",
                     "bootstrap=20", "optim.warmup_epochs=0", "device=cpu", "test_fraction=0.25", "val_fraction=0.25"]}


@pytest.fixture()
def tiny_presets(monkeypatch):
    real = ecgtl.config.load_config

    def load_config(cls, preset, kind, overrides=()):
        overrides = list(overrides)
        if kind == "pretrain":  # the pipeline sets fs and the model from the fine-tuning preset: keep the tiny frame
            overrides = [o for o in overrides if not o.startswith(("fs=", "model.width="))] + ["fs=100"]
        return real(cls, preset, kind, overrides + TINY[kind])

    monkeypatch.setattr(ecgtl.config, "load_config", load_config)


def test_transfer_steps_run_and_a_rerun_resumes_every_run(mirror, icentia_root, cinc_folder, tmp_path, tiny_presets, capsys):
    work, runs = tmp_path / "data", tmp_path / "runs"
    jobs = (database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:4]
            + [("icentia11k/p00000", functools.partial(IcentiaWfdbPatient, icentia_root, 0))])
    assert not prepare(work / "store", jobs, workers=2, progress=False).failures
    cinc = work / "raw" / "challenge-2017" / "1.0.0" / "training2017"  # the PhysioNet layout, 120 records
    cinc.mkdir(parents=True)
    names = (cinc_folder / "RECORDS").read_text().split()[:120]
    for n in names:
        for ext in (".mat", ".hea"):
            shutil.copy(cinc_folder / f"{n}{ext}", cinc)
    (cinc / "RECORDS").write_text("\n".join(names) + "\n")
    labels = dict(line.split(",")[:2] for line in (cinc_folder.parent / "REFERENCE-v3.csv").read_text().split())
    (cinc.parent / "REFERENCE-v3.csv").write_text("".join(f"{n},{labels[n]}\n" for n in names))

    summary = run_transfer(work, runs, "cpu", (1.0,), (0,), progress=False)
    assert set(summary) == {"random-labels1-seed0", "pretrained-labels1-seed0"}
    assert (runs / "comparison.md").is_file() and (runs / "splits.json").is_file()
    splits = (runs / "splits.json").read_text()
    for name in summary:  # every run used the one shared split
        assert json.loads((runs / name / "splits.json").read_text())["splits"] == json.loads(splits)["splits"]
    card = json.loads((runs / "pretrained-labels1-seed0" / "model.json").read_text())
    assert card["init"].endswith("pretrain-beat/model.json")
    weights = {n: (runs / n / "best.safetensors").read_bytes() for n in summary}
    capsys.readouterr()

    assert run_transfer(work, runs, "cpu", (1.0,), (0,), progress=False) == summary  # rerun: resumed, nothing retrained
    out = capsys.readouterr().out
    assert out.count("resumed from") == 3 and "round 1/1:" not in out
    assert all((runs / n / "best.safetensors").read_bytes() == w for n, w in weights.items())
