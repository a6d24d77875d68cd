"""Pre-training end to end on a real store (MIT-BIH, SVDB, AFTDB, Icentia11k patient 0): every task,
the model card fine-tuning reads, and DDP with torchrun (gloo, 2 processes) against one process."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ecgtl.config import PretrainConfig, load_config
from ecgtl.data.icentia11k import IcentiaWfdbPatient
from ecgtl.data.store import prepare
from ecgtl.data.wfdb_database import database_records
from ecgtl.models.card import model_from_card
from ecgtl.train.engine import CHECKPOINT_FILE, Trainer
from ecgtl.train.pretrain import build_job, make_evaluate, make_optimizer, run_pretrain

TINY = ["model.width=0.125", "frame_samples=1024", "frames_per_patient=8", "val_frames_per_patient=8", "rounds=2",
        "batch_size=16", "optim.warmup_epochs=0", "device=cpu", "val_fraction=0.2"]


@pytest.fixture(scope="module")
def store(mirror, icentia_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    jobs = (database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:12] + database_records(mirror / "svdb" / "1.0.0", "svdb")[:8]
            + database_records(mirror / "aftdb" / "1.0.0", "aftdb")[:4]
            + [("icentia11k/p00000", functools.partial(IcentiaWfdbPatient, icentia_root, 0))])
    report = prepare(root, jobs, workers=2, progress=False)
    assert not report.failures
    return root


def _cfg(store, out, *extra):
    return load_config(PretrainConfig, "cpu", "pretrain", TINY + [f"store={store}", f"out={out}", *extra])


@pytest.mark.parametrize("task", ["beat", "rhythm", "heart_rate"])
def test_classification_tasks_train_end_to_end(store, tmp_path, task):
    result = run_pretrain(_cfg(store, tmp_path, f"task={task}"), progress=False)
    assert result["rounds"] == 2
    row = result["history"][-1]
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_majority_accuracy"} <= set(row)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["task"] == task and card["fs"] == 250 and card["architecture"] == "resnet18v2"
    # the card is what fine-tuning starts from: a 4-class model loads its backbone
    model, _ = model_from_card(tmp_path / "model.json", num_classes=4)
    assert model.head.out_features == 4


def test_future_prediction_trains_and_beats_chance(store, tmp_path):
    cfg = _cfg(store, tmp_path, "task=future", "frame_samples=256", "context_frames=4", "frames_per_patient=32",
               "rounds=3", "batch_size=16", "val_frames_per_patient=8")
    result = run_pretrain(cfg, progress=False)
    last = result["history"][-1]
    assert last["val_accuracy"] > 2 * last["val_chance"], last
    weights = load_file(str(tmp_path / "backbone.safetensors"))
    assert weights and not any(k.startswith("backbone.") for k in weights)
    model, card = model_from_card(tmp_path / "model.json", num_classes=4)
    assert card["num_classes"] == 0


def test_sigkilled_run_resumes_to_the_same_weights(store, tmp_path):
    extra = ["rounds=4", "frames_per_patient=16", "checkpoint_every=5"]  # 19 steps per round: mid-round checkpoints too
    run_pretrain(_cfg(store, tmp_path / "full", *extra), progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ecgtl", "pretrain", "--preset", "cpu", "--no-progress", "--store", str(store),
           "--out", str(out), *[a for s in TINY + extra for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / CHECKPOINT_FILE).is_file() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.5)  # somewhere in round 1 or 2, most likely between mid-round checkpoints
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(torch.load(out / CHECKPOINT_FILE, weights_only=True)["state"])
    assert state["step"] < 4 * 19, state  # killed part-way
    run_pretrain(_cfg(store, out, *extra), progress=False)  # resumes from the checkpoint
    a = torch.load(tmp_path / "full" / CHECKPOINT_FILE, weights_only=True)["model"]
    b = torch.load(out / CHECKPOINT_FILE, weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(store, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), 8 frames per rank, vs one process that sees both ranks'
    batches as one global batch of 16, each half forwarded on its own (batch norm is per rank on CPU)."""
    per_rank = ["batch_size=8", "rounds=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "ecgtl", "pretrain", "--preset", "cpu", "--no-progress", "--store", str(store), "--out", str(tmp_path / "ddp"),
           *[a for s in TINY + per_rank for a in ("--set", s)]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT_FILE, weights_only=True)["model"]

    cfg = _cfg(store, tmp_path / "single", *per_rank)
    job = build_job(cfg, rank=0, world_size=1)
    shards = [job.sampler(rank=r, world_size=2) for r in (0, 1)]
    assert not set(shards[0].patients_of_rank(0, 2, 0)) & set(shards[1].patients_of_rank(1, 2, 0))
    steps = shards[0].batches_per_round(cfg.batch_size, 0)

    def make_batches(r):
        loaders = []
        for s in shards:
            s.set_round(r)
            loaders.append(torch.utils.data.DataLoader(s, batch_size=cfg.batch_size, drop_last=True))
        yield from zip(*loaders)

    def step_fn(model, batch):
        (x0, y0), (x1, y1) = batch
        loss = 0.5 * (F.cross_entropy(model(x0), y0) + F.cross_entropy(model(x1), y1))
        return loss, len(y0) + len(y1)

    optimizer, scheduler = make_optimizer(job, steps)
    Trainer(job.model, optimizer, step_fn, make_batches, make_evaluate(job), tmp_path / "single", rounds=cfg.rounds,
            monitor="val_loss", mode="min", scheduler=scheduler, seed=cfg.seed, progress=False).fit()
    single = job.model.state_dict()
    params = [k for k, _ in job.model.named_parameters()]
    worst = max(float((ddp[k] - single[k]).abs().max() / (single[k].abs().max() + 1e-8)) for k in params)
    print(f"\nDDP (2 ranks) vs one process: max relative parameter difference {worst:.2e}")
    assert worst < 1e-3, worst


def test_pretraining_at_another_sampling_rate(store, tmp_path):
    """Frames are read at the store's 250 Hz and resampled to the model's rate (here 125 Hz)."""
    run_pretrain(_cfg(store, tmp_path, "fs=125", "frame_samples=512", "rounds=1"), progress=False)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["fs"] == 125 and card["frame_samples"] == 512
    job = build_job(_cfg(store, tmp_path, "fs=125", "frame_samples=512"))
    assert job.window_samples == 1024
    x = torch.sin(torch.arange(1024, dtype=torch.float32) * 2 * torch.pi * 5 / 250).reshape(1, 1, -1)  # 5 Hz at 250 Hz
    y = job.to_input(x)[0, 0].numpy()
    assert y.shape == (512,)
    spectrum = abs(__import__("numpy").fft.rfft(y))
    assert spectrum.argmax() == round(5 * 512 / 125)  # still 5 Hz at 125 Hz
