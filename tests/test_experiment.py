"""``ecgtl experiment``: the grid's plan, its checks, and a tiny grid on real data that survives SIGKILL."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecgtl.errors import ConfigError
from ecgtl.experiments.grid import GridSpec, load_spec, plan
from ecgtl.experiments.results import COLUMNS, TIMING_COLUMNS, read_results

TINY_GRID = """\
scale: a test grid (4 MIT-BIH patients, 120 CinC records, width 0.125, 2 epochs)
finetune_preset: cpu
pretrain_preset: cpu
finetune_set: [crop_seconds=20.48, hop_seconds=10.24, model.width=0.125, epochs=2, batch_size=32, bootstrap=20,
               optim.warmup_epochs=0, test_fraction=0.25, val_fraction=0.25]
pretrain_set: [frame_samples=512, frames_per_patient=8, val_frames_per_patient=4, rounds=1, batch_size=16,
               optim.warmup_epochs=0, val_fraction=0.25]
defaults: {arch: resnet18_preact, pretext: beat, patient_fraction: 1.0, fs: 100, label_fraction: 1.0, seeds: [0]}
blocks:
  q1: {pretext: [none, beat], seeds: [0, 1]}
"""


def _spec(**blocks) -> GridSpec:
    return GridSpec(name="t", defaults={"arch": "resnet18_preact", "pretext": "beat", "patient_fraction": 1.0, "fs": 125,
                                        "label_fraction": 1.0, "seeds": [0, 1]}, blocks=blocks)


def test_plan_shares_runs_between_blocks_and_pretraining_between_fine_tunes():
    p = plan(_spec(q1={"pretext": ["none", "beat"]}, q3={"patient_fraction": [0.5, 1.0]},
                   labels={"pretext": ["none", "beat"], "label_fraction": [0.1, 1.0], "seeds": [0]}))
    ids = [r.run_id for r in p.finetunes]
    assert len(ids) == len(set(ids)) == 2 + 2 + 2 + 2  # none x2 seeds, beat pf1 x2, beat pf0.5 x2, lf0.1 x (none, beat)
    assert p.blocks["resnet18_preact-beat-pf1-fs125-lf1-s0"] == ["q1", "q3", "labels"]
    assert p.blocks["resnet18_preact-none-fs125-lf1-s1"] == ["q1"]
    assert {r.run_id for r in p.pretrains} == {"resnet18_preact-beat-pf1-fs125", "resnet18_preact-beat-pf0.5-fs125"}
    # random init has no pre-training and no patient fraction, whatever the block says
    none = [r for r in p.finetunes if r.pretext == "none"]
    assert all(r.pretrain is None and r.patient_fraction is None for r in none)
    # each pre-training's fine-tunes come together, full labels first
    first = [r.pretrain for r in p.finetunes]
    assert first.index(p.pretrains[1]) > max(i for i, x in enumerate(first) if x == p.pretrains[0])


@pytest.mark.parametrize("text, message", [
    ("defaults: {}\nblocks: {q: {}}", "defaults must give every axis"),
    ("finetune_set: [fs=250]\n", "grid sets per run"),
    ("blocks: {q: {pretext: [jigsaw]}}", "pretext 'jigsaw'"),
    ("blocks: {q: {label_fraction: [0]}}", "must be in (0, 1]"),
    ("blocks: {q: {colour: [red]}}", "unknown axis colour"),
    ("epochs: 3", "unknown key(s) epochs"),
])
def test_bad_grid_files_are_refused_naming_the_file(tmp_path, text, message):
    base = ("defaults: {arch: resnet18_preact, pretext: beat, patient_fraction: 1.0, fs: 125, label_fraction: 1.0, seeds: [0]}\n"
            "blocks: {q1: {pretext: [none, beat]}}\n")
    path = tmp_path / "grid.yaml"
    path.write_text(text + "\n" + base if not text.startswith(("defaults", "blocks")) else
                    (text + "\n" + base.split("\n")[0] if text.startswith("blocks") else text))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_presets_plan_what_the_issue_asks_for():
    cpu = plan(load_spec("cpu"))
    rows = cpu.finetunes
    assert {r.pretext for r in rows} >= {"none", "beat", "rhythm", "heart_rate@cinc"}
    assert {r.input for r in rows} == {"1d", "2d_stft"}
    assert len({r.patient_fraction for r in rows if r.pretext == "beat"}) >= 4
    assert len({r.label_fraction for r in rows}) >= 5 and len({r.fs for r in rows}) >= 2
    cells: dict = {}
    for r in rows:
        cells.setdefault((r.arch, r.pretext, r.patient_fraction, r.fs, r.label_fraction), set()).add(r.seed)
    for (_, _, _, _, lf), seeds in cells.items():
        assert len(seeds) >= (5 if lf <= 0.1 else 3)
    assert len(plan(load_spec("quick")).finetunes) <= 8
    assert set(plan(load_spec("paper")).finetunes[0].arch.split("_")) >= {"resnet18", "postact"}


def test_dry_run_lists_every_run_with_an_estimate(tmp_path, capsys):
    from ecgtl.cli import main

    assert main(["experiment", "quick", "--dry-run", "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "1 pre-training and 6 fine-tuning runs" in out and out.count("to do") == 7
    assert not (tmp_path / "q").exists()  # a dry run writes nothing


def test_only_hardware_settings_may_be_set_for_a_whole_grid(capsys):
    from ecgtl.cli import main

    assert main(["experiment", "quick", "--set", "epochs=3"]) == 2
    assert "only hardware settings" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a tiny grid on real data
@pytest.fixture(scope="module")
def tiny_data(mirror, cinc_folder, tmp_path_factory):
    from ecgtl.data.store import prepare
    from ecgtl.data.wfdb_database import database_records

    root = tmp_path_factory.mktemp("grid-data")
    assert not prepare(root / "store", database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:4], workers=1,
                       progress=False).failures
    cinc = root / "cinc" / "training2017"
    cinc.mkdir(parents=True)
    names = (cinc_folder / "RECORDS").read_text().split()[:120]
    for n in names:
        for ext in (".mat", ".hea"):
            shutil.copy(cinc_folder / f"{n}{ext}", cinc)
    (cinc / "RECORDS").write_text("\n".join(names) + "\n")
    labels = dict(line.split(",")[:2] for line in (cinc_folder.parent / "REFERENCE-v3.csv").read_text().split())
    (cinc.parent / "REFERENCE-v3.csv").write_text("".join(f"{n},{labels[n]}\n" for n in names))
    (root / "grid.yaml").write_text(TINY_GRID)
    return root


def _experiment(data: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ecgtl", "experiment", str(data / "grid.yaml"), "--out", str(out),
                             "--data", str(data / "cinc" / "training2017"), "--store", str(data / "store"),
                             "--set", "device=cpu", "--no-progress", "--no-report"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _table(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_results(path)]


def test_sigkill_mid_grid_then_rerun_gives_the_uninterrupted_table(tiny_data, tmp_path):
    ref = _experiment(tiny_data, tmp_path / "ref")
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out
    reference = _table(tmp_path / "ref" / "results.csv")
    assert len(reference) == 4 and {r["pretext"] for r in reference} == {"none", "beat"}
    with open(tmp_path / "ref" / "results.csv", newline="") as fh:
        assert csv.DictReader(fh).fieldnames[:len(COLUMNS)] == COLUMNS

    killed = tmp_path / "killed"
    proc = _experiment(tiny_data, killed)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:  # kill as soon as the first row is in
        if (killed / "results.csv").is_file() and len(read_results(killed / "results.csv")) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the grid finished before it could be killed: " + proc.communicate()[0]
    time.sleep(1.0)  # into the next run
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = read_results(killed / "results.csv")
    assert 1 <= len(partial) < 4
    kept = {r["run_id"]: r for r in partial}

    again = _experiment(tiny_data, killed)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    final = read_results(killed / "results.csv")
    ids = [r["run_id"] for r in final]
    assert len(ids) == len(set(ids)) == 4  # none duplicated
    for r in final:  # the rows finished before the kill are kept as they were (timings included)
        if r["run_id"] in kept:
            assert r == kept[r["run_id"]]
    table = _table(killed / "results.csv")
    for got, want in zip(table, reference):  # and the table equals the uninterrupted run's
        assert got == want, {k: (got[k], want[k]) for k in got if got[k] != want[k]}

    # --extra-test on the finished grid: every model is scored on another folder, nothing is retrained
    weights = {p: p.read_bytes() for p in sorted((killed / "finetune").glob("*/best.safetensors"))}
    extra = subprocess.run([sys.executable, "-m", "ecgtl", "experiment", str(tiny_data / "grid.yaml"), "--out", str(killed),
                            "--data", str(tiny_data / "cinc" / "training2017"), "--store", str(tiny_data / "store"),
                            "--set", "device=cpu", "--no-progress", "--no-report",
                            "--extra-test", str(tiny_data / "cinc" / "training2017")],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert extra.returncode == 0, extra.stdout + extra.stderr
    scored = read_results(killed / "results.csv")
    assert len(scored) == 4 and all(0 <= float(r["extra_training2017_macro_f1"]) <= 1 for r in scored)
    assert all(r["extra_training2017_challenge_f1"] != "" for r in scored)
    assert {p: p.read_bytes() for p in weights} == weights  # no model was trained again
    assert [{k: v for k, v in r.items() if not k.startswith("extra_")} for r in scored] == final


def test_a_folder_run_with_another_recipe_is_refused(tmp_path):
    from ecgtl.experiments.runner import Experiment

    spec = load_spec("quick")
    Experiment(spec, tmp_path).check_recipe()  # writes grid.yaml
    assert (tmp_path / "grid.yaml").is_file()
    Experiment(spec, tmp_path).check_recipe()  # the same recipe: fine, also with other blocks
    spec.blocks = {"q1": {"pretext": ["none", "beat", "rhythm"]}}
    Experiment(spec, tmp_path).check_recipe()
    spec.finetune_set = ["epochs=7"]
    with pytest.raises(ConfigError, match=r"grid\.yaml: this folder's grid was run with another recipe \(finetune_set differ\)"):
        Experiment(spec, tmp_path).check_recipe()


def test_dry_run_into_a_closed_pipe_exits_quietly(tmp_path):
    # the reader closes its end before the command has written anything (it takes a second to start)
    proc = subprocess.Popen([sys.executable, "-m", "ecgtl", "experiment", "cpu", "--dry-run", "--out", str(tmp_path / "c")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_table_trained_with_an_edited_preset_is_refused(tmp_path):
    """check_recipe compares preset names; a preset whose contents changed is caught by the rows' config hashes."""
    import yaml

    from ecgtl.config import to_dict
    from ecgtl.experiments.results import write_results
    from ecgtl.experiments.runner import Experiment, config_hash

    exp = Experiment(load_spec("quick"), tmp_path, data=str(tmp_path / "no-cinc-here"), store=str(tmp_path / "no-store"))
    run = exp.plan.finetunes[0]
    cfg = exp.finetune_config(run)
    row = {"run_id": run.run_id, "pretext": run.pretext, "test_macro_f1": 0.5, "config_hash": config_hash(cfg)}
    write_results(exp.results_csv, [row])
    exp.check_finished(exp.finished_rows())  # the same config: fine

    # a row written before a setting existed (its hash without it; its config.yaml lacks it): at the default, accepted
    import json as _json

    older = _json.loads(_json.dumps(to_dict(cfg), default=str))
    del older["pooling"]
    exp.finetune_dir(run).mkdir(parents=True)
    (exp.finetune_dir(run) / "config.yaml").write_text(yaml.safe_dump(older))
    write_results(exp.results_csv, [dict(row, config_hash="444797304906")])
    exp.check_finished(exp.finished_rows())

    saved = to_dict(cfg)  # as if trained with another learning rate and weight decay
    saved["optim"]["lr"], saved["optim"]["weight_decay"] = 0.123, 0.5
    (exp.finetune_dir(run) / "config.yaml").write_text(yaml.safe_dump(saved))
    write_results(exp.results_csv, [dict(row, config_hash="0123456789ab")])
    with pytest.raises(ConfigError, match=rf"results\.csv: run {run.run_id} was trained with fine-tuning config 0123456789ab, "
                                          r"but preset 'cpu' now gives [0-9a-f]{12} \(optim\.lr: 0\.123 -> .*optim\.weight_decay"):
        exp.check_finished(exp.finished_rows())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="was trained with fine-tuning config 0123456789ab"):
        exp.run(progress=False)  # the grid refuses before it writes or reads anything
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_grid_without_validation_records_is_refused_before_writing(tmp_path):
    """val_fraction=0 (a final fit) leaves nothing to measure the best epoch and convergence on: refused, nothing written."""
    from ecgtl.experiments.runner import Experiment

    spec = load_spec("quick")
    spec.finetune_set = [*spec.finetune_set, "val_fraction=0"]
    exp = Experiment(spec, tmp_path / "grid", data=str(tmp_path / "no-cinc-here"), store=str(tmp_path / "no-store"))
    with pytest.raises(ConfigError, match="grid 'quick': val_fraction=0 .* cannot run in a grid"):
        exp.run(progress=False)
    assert not (tmp_path / "grid").exists()
    from ecgtl.data.splits import save_splits  # a grid folder whose split file has no validation records

    save_splits(tmp_path / "old" / "splits.json", {"train": ["A1", "A2"], "val": [], "test": ["A3"]}, seed=0)
    exp = Experiment(load_spec("quick"), tmp_path / "old", data=str(tmp_path / "no-cinc-here"), store=str(tmp_path / "no-store"))
    with pytest.raises(ConfigError, match=r"old/splits\.json: this grid's split has no validation records"):
        exp.run(progress=False)
