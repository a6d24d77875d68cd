"""Pre-training end to end on a real store (MIT-BIH, SVDB, AFTDB, Icentia11k patient 0): every task,
the model card fine-tuning reads, and DDP with torchrun (gloo, 2 processes) against one process."""

from __future__ import annotations

import contextlib
import functools
import json
import math
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


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run with ``n`` intra-op threads (restored after): tensors compared across processes must be
    computed with the same thread count, since reductions split by thread round differently."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _distance(a: dict, b: dict) -> float:
    """Global L2 norm of a - b over the parameters of ``b``, in float64."""
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b))


@pytest.mark.parametrize("task", ["beat", "rhythm", "heart_rate"])
def test_classification_tasks_train_end_to_end(store, tmp_path, task):
    cfg = _cfg(store, tmp_path, f"task={task}")
    result = run_pretrain(cfg, progress=False)
    assert result["rounds"] == 2
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for row in result["history"])
    row = result["history"][-1]
    assert {"val_loss", "val_accuracy", "val_macro_f1", "val_majority_accuracy"} <= set(row)
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["task"] == task and card["fs"] == 250 and card["architecture"] == cfg.model.name
    # training moved the weights: the card's weights against the initial ones (same seed, same init)
    init = _params(build_job(cfg).model)
    trained = load_file(str(tmp_path / "backbone.safetensors"))
    assert set(init) <= set(trained) and all(torch.isfinite(trained[k]).all() for k in init)
    moved = _distance(trained, init) / _distance({k: torch.zeros_like(v) for k, v in init.items()}, init)
    print(f"\n{task}: weights moved by {moved:.2e} of their norm")
    assert moved > 1e-2, moved
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
    # the same thread count as this process's runs: weights are compared bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def _two_rank_reference(cfg, out, loss_of):
    """One process replaying the two ranks of a DDP run (1 thread, as each torchrun rank): each step
    takes both ranks' batches of ``cfg.batch_size`` and ``loss_of(model, (x0, y0), (x1, y1))``
    gives the loss to back-propagate. Returns (initial, trained) parameters."""
    with _torch_threads(1):
        job = build_job(cfg, rank=0, world_size=1)
        init = _params(job.model)
        shards = [job.sampler(rank=r, world_size=2) for r in (0, 1)]
        assert not set(shards[0].patients_of_rank(0, 2, 0)) & set(shards[1].patients_of_rank(1, 2, 0))
        steps = shards[0].batches_per_round(cfg.batch_size, 0)

        def make_batches(r):
            loaders = []
            for s in shards:
                s.set_round(r)
                loaders.append(torch.utils.data.DataLoader(s, batch_size=None))  # the sampler yields whole batches
            yield from zip(*loaders)

        def step_fn(model, batch):
            return loss_of(model, *batch), sum(len(y) for _, y in batch)

        optimizer, scheduler = make_optimizer(job, steps)
        Trainer(job.model, optimizer, step_fn, make_batches, make_evaluate(job), out, rounds=cfg.rounds,
                monitor="val_loss", mode="min", scheduler=scheduler, seed=cfg.seed, progress=False).fit()
        return init, _params(job.model)


def _mean_of_rank_means(model, b0, b1):  # what DDP computes: each rank's mean loss, gradients averaged
    return 0.5 * (F.cross_entropy(model(b0[0]), b0[1]) + F.cross_entropy(model(b1[0]), b1[1]))


def _sum_of_rank_means(model, b0, b1):  # negative control: a DDP that summed the ranks' gradients
    return F.cross_entropy(model(b0[0]), b0[1]) + F.cross_entropy(model(b1[0]), b1[1])


def _one_batch_of_both(model, b0, b1):  # negative control: batch norm over one batch of 16, not two of 8
    return F.cross_entropy(model(torch.cat([b0[0], b1[0]])), torch.cat([b0[1], b1[1]]))


DDP_BOUND = 1e-3  # |w_ddp - w_ref| / |w_ref - w_init|: rounding only, with equal thread counts


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(store, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU, 1 thread per rank), 8 frames per rank, vs one process
    (1 thread) that sees both ranks' batches as one global batch of 16, each half forwarded on its
    own (batch norm is per rank on CPU). Plain SGD, whose step scales with the gradient: DDP must
    average the ranks' gradients. The distance is measured against how far training moved the
    weights, and the same criterion must reject a gradient sum and a single batch-norm batch."""
    per_rank = ["batch_size=8", "rounds=2", "optim.name=sgd", "optim.momentum=0", "optim.lr=0.05"]
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
    assert cfg.optim.name == "sgd"
    ratios = {}
    for name, loss_of in [("mean of rank means (DDP)", _mean_of_rank_means), ("sum of rank means", _sum_of_rank_means),
                          ("one batch of 16", _one_batch_of_both)]:
        init, ref = _two_rank_reference(cfg, tmp_path / name.split(" (")[0].replace(" ", "_"), loss_of)
        moved = _distance(ref, init)
        assert moved > 1e-2 * _distance({k: torch.zeros_like(v) for k, v in init.items()}, init), name  # it trained
        ratios[name] = _distance(ddp, ref) / moved
    print("\nDDP (2 ranks) vs one process, |w_ddp - w_ref| / |w_ref - w_init|: "
          + ", ".join(f"{k} {v:.2e}" for k, v in ratios.items()))
    correct, *controls = ratios.values()
    assert correct < DDP_BOUND, ratios
    assert all(r > 10 * DDP_BOUND for r in controls), ratios  # the criterion tells these apart


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
