"""The main job's wiring: the data steps, then the experiment grid on the prepared data (steps stubbed here;
the grid itself runs on real data in tests/test_experiment.py, the data steps in the download/store tests)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import ecgtl.experiments.runner as runner
import ecgtl.pipeline as pipeline


def test_pipeline_runs_the_named_grid_on_the_data_it_prepared(tmp_path, monkeypatch, capsys):
    calls = {}
    report = SimpleNamespace(summary=lambda: "ok", raise_for_failures=lambda: None, downloaded=[], skipped=[], bytes_downloaded=0,
                             seconds=0.0, prepared=[], failures=[])
    monkeypatch.setattr(pipeline, "unpack_local_mirror", lambda shared, mirror: calls.setdefault("mirror", mirror))
    monkeypatch.setattr(pipeline, "find_wfdb_patients", lambda folder: [0])
    monkeypatch.setattr(pipeline, "download", lambda db, raw, **kw: report)
    monkeypatch.setattr(pipeline, "build_jobs", lambda **kw: [])
    monkeypatch.setattr(pipeline, "prepare", lambda store, jobs, **kw: calls.setdefault("store", store) and report)
    monkeypatch.setattr(pipeline, "describe_store", lambda store: "store")

    class FakeCinc:
        def __init__(self, folder):
            calls["cinc"] = folder
            self.label_file = folder / "REFERENCE-v3.csv"

        def read_all(self, progress=True):
            return [SimpleNamespace(duration_s=30.0, label="N"), SimpleNamespace(duration_s=9.0, label="A")], []

    monkeypatch.setattr(pipeline, "Cinc2017", FakeCinc)

    def fake_experiment(grid, out, data, store, progress=True):
        calls["experiment"] = (grid, out, data, store)
        return [{"run_id": "a"}, {"run_id": "b"}]

    monkeypatch.setattr(runner, "run_experiment", fake_experiment)
    summary = pipeline.run_pipeline(shared=tmp_path / "shared", work=tmp_path / "data", progress=False, grid="quick",
                                    runs=tmp_path / "runs")
    grid, out, data, store = calls["experiment"]
    assert grid == "quick" and out == tmp_path / "runs" / "quick"
    assert data == str(tmp_path / "data" / "raw" / "challenge-2017" / "1.0.0" / "training2017") == str(calls["cinc"])
    assert store == str(tmp_path / "data" / "store") == str(calls["store"])
    assert summary["steps"]["experiment"]["fine_tunes"] == 2
    assert json.loads((tmp_path / "runs" / "pipeline-summary.json").read_text())["steps"]["experiment"]["grid"] == "quick"

    calls.clear()  # --until cinc: the data steps only
    pipeline.run_pipeline(shared=tmp_path / "shared", work=tmp_path / "data", progress=False, until="cinc", runs=tmp_path / "runs")
    assert "experiment" not in calls and "cinc" in calls


def test_pipeline_help_names_the_grids(capsys):
    from ecgtl.cli import main

    try:
        main(["pipeline", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "--grid" in out and "quick" in out and "--until" in out
