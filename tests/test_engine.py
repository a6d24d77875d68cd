"""The training engine: exact resume after a kill, checkpoints and logs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ecgtl.errors import EcgtlError
from ecgtl.train.engine import BEST_FILE, CHECKPOINT_FILE, METRICS_FILE
from engine_toy import make_trainer

HERE = Path(__file__).resolve().parent


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", rounds=4)
    full.fit()
    part = make_trainer(tmp_path / "part", rounds=2)
    part.fit()
    resumed = make_trainer(tmp_path / "part", rounds=4)  # a fresh process would build exactly this
    state = resumed.fit()
    assert state.round == 4 and state.step == 32
    for k, v in _weights(full).items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    rows = list(csv.DictReader(open(tmp_path / "part" / METRICS_FILE)))
    assert [int(r["round"]) for r in rows] == [1, 2, 3, 4]


def test_sigkill_mid_round_then_resume(tmp_path):
    reference = make_trainer(tmp_path / "ref", rounds=4)
    reference.fit()
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "engine_toy.py"), str(out), "4", "0.05"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / CHECKPOINT_FILE).is_file():
        time.sleep(0.02)
    time.sleep(0.15)  # now inside round 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / CHECKPOINT_FILE).is_file() and (out / BEST_FILE).is_file()
    resumed = make_trainer(out, rounds=4)
    assert resumed.resume() and 1 <= resumed.state.round < 4
    resumed.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_early_stopping_and_best_weights(tmp_path):
    t = make_trainer(tmp_path, rounds=50)
    t.patience = 2
    state = t.fit()
    assert state.stopped_early and state.round < 50
    assert state.stale_rounds == 2 and state.best_round == state.round - 2


def test_sigkill_between_mid_round_checkpoints_then_resume(tmp_path):
    """checkpoint_every=3 steps (8 steps per round): a kill inside a round resumes from the last
    mid-round checkpoint (data replayed, random stream restored) and ends with identical weights."""
    import json

    reference = make_trainer(tmp_path / "ref", rounds=3)
    reference.fit()
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "engine_toy.py"), str(out), "3", "0.05", "3"], env=env)
    deadline = time.time() + 60
    state = {}
    while time.time() < deadline and proc.poll() is None:
        if (out / CHECKPOINT_FILE).is_file():
            try:
                state = json.loads(torch.load(out / CHECKPOINT_FILE, weights_only=True)["state"])
            except Exception:  # being replaced at this moment
                continue
            if state["round_batches"]:
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.get("round_batches"), "no mid-round checkpoint seen before the kill"
    resumed = make_trainer(out, rounds=3, checkpoint_every=3)
    resumed.fit()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.state.step == 24


def test_one_step_moves_the_weights_and_a_nan_loss_never_reaches_them(tmp_path):
    trainer = make_trainer(tmp_path, rounds=1)
    before = _weights(trainer)
    x, y = next(iter(trainer.make_batches(0)))
    loss, n = trainer._step((x, y), 0)
    assert n == 32 and trainer.state.step == 1 and torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    moved = _weights(trainer)
    try:
        trainer._step((x.fill_(float("nan")), y), 0)
        raise AssertionError("a NaN loss was accepted")
    except FloatingPointError as err:
        assert "non-finite loss" in str(err) and "step 2" in str(err)
        assert isinstance(err, EcgtlError)  # the command line prints it as a message, not a traceback
    assert trainer.state.step == 1
    assert all(torch.equal(moved[k], v) for k, v in trainer.model.state_dict().items())


def test_end_of_round_keeps_the_best_weights_and_stops_early(tmp_path):
    trainer = make_trainer(tmp_path, rounds=10)
    trainer.patience = 2
    for r, acc in enumerate([0.5, 0.7, 0.6, 0.65]):
        trainer._end_round({"round": r + 1, "step": r, "train_loss": 1.0, "train_seconds": 0.0, "val_acc": acc})
    assert (trainer.state.best_round, trainer.state.stale_rounds, trainer.state.stopped_early) == (2, 2, True)
    assert (tmp_path / BEST_FILE).is_file() and (tmp_path / CHECKPOINT_FILE).is_file()
    rows = list(csv.DictReader(open(tmp_path / METRICS_FILE)))
    assert [float(r["val_acc"]) for r in rows] == [0.5, 0.7, 0.6, 0.65]
    assert trainer.fit().round == 4  # stopped: nothing more is trained


def test_weight_average_is_what_is_kept_and_it_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    full = make_trainer(tmp_path / "full", rounds=4, ema_decay=0.9)
    full.fit()
    average = full.kept_model().state_dict()
    trained = full.model.state_dict()
    assert any(not torch.equal(average[k], trained[k]) for k in trained)  # an average, not the last weights
    best = load_file(str(tmp_path / "full" / BEST_FILE))
    upto = make_trainer(tmp_path / "upto", rounds=full.state.best_round, ema_decay=0.9)
    upto.fit()  # the average at the best round is what best.safetensors holds
    assert best.keys() == average.keys() and all(torch.equal(best[k], upto.kept_model().state_dict()[k]) for k in best)
    part = make_trainer(tmp_path / "part", rounds=2, ema_decay=0.9)
    part.fit()
    resumed = make_trainer(tmp_path / "part", rounds=4, ema_decay=0.9)
    resumed.fit()
    for k, v in average.items():
        assert torch.equal(v, resumed.kept_model().state_dict()[k]), k


def test_every_round_logs_how_long_training_waited_for_data(tmp_path):
    """``data_wait_share``: the share of a round's training time spent waiting for the next batch."""
    slow = make_trainer(tmp_path / "slow", rounds=1, sleep=0.15)  # a loader that starves a tiny model (8 batches)
    fast = make_trainer(tmp_path / "fast", rounds=1)
    slow_share = slow.fit().history[0]["data_wait_share"]
    fast_share = fast.fit().history[0]["data_wait_share"]
    assert 0.5 < slow_share <= 1 and 0 <= fast_share < slow_share  # wide margins: the machine may be busy
    rows = list(csv.DictReader(open(tmp_path / "slow" / METRICS_FILE)))
    assert float(rows[0]["data_wait_share"]) == slow_share


def test_without_validation_every_round_is_trained_and_the_last_is_kept(tmp_path):
    """A final fit (no evaluate, no monitor): the kept weights are the last round's, patience never stops it,
    and a resumed run ends with the same weights as an uninterrupted one."""
    import pytest
    from safetensors.torch import load_file

    full = make_trainer(tmp_path / "full", rounds=4, validate=False)  # patience=1: would stop after a stale round
    state = full.fit()
    assert (state.round, state.best_round, state.stopped_early) == (4, 4, False)
    rows = list(csv.DictReader(open(tmp_path / "full" / METRICS_FILE)))
    assert [int(r["round"]) for r in rows] == [1, 2, 3, 4] and "val_acc" not in rows[0]
    kept = load_file(str(tmp_path / "full" / BEST_FILE))
    assert all(torch.equal(kept[k], v) for k, v in full.model.state_dict().items())
    part = make_trainer(tmp_path / "part", rounds=2, validate=False)
    part.fit()
    resumed = make_trainer(tmp_path / "part", rounds=4, validate=False)
    resumed.fit()
    again = load_file(str(tmp_path / "part" / BEST_FILE))
    assert all(torch.equal(again[k], kept[k]) for k in kept)
    t = make_trainer(tmp_path / "x", rounds=1)
    for evaluate, monitor in ((None, "val_acc"), (t.evaluate, None)):
        with pytest.raises(ValueError, match="evaluate and monitor go together"):
            type(t)(t.model, t.optimizer, t.step_fn, t.make_batches, evaluate, tmp_path / "x", rounds=1, monitor=monitor)
    averaged = make_trainer(tmp_path / "ema", rounds=3, validate=False, ema_decay=0.9)
    averaged.fit()  # with a moving average, the average after the last round is what is kept
    kept = load_file(str(tmp_path / "ema" / BEST_FILE))
    average, trained = averaged.kept_model().state_dict(), averaged.model.state_dict()
    assert all(torch.equal(kept[k], average[k]) for k in kept) and any(not torch.equal(kept[k], trained[k]) for k in kept)
