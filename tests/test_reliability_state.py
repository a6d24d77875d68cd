"""Reliability of weights, outputs and run state: each test injects one fault into the real code path
on small real data (80 CinC 2017 records, a 6-patient MIT-BIH store) and checks the promise a user
relies on: a damaged model never answers with a class, a run folder never mixes two runs, a damaged
checkpoint or a full disk stops with a message naming the file and loses no finished work."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecgtl.cli import main as cli
from ecgtl.config import FinetuneConfig, PretrainConfig, load_config, save_or_check_config
from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.data.store import SIGNAL_FILE, prepare
from ecgtl.data.wfdb_database import database_records
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.commands import run_export
from ecgtl.evaluate.inference import Classifier
from ecgtl.fileio import file_sha256
from ecgtl.models import create_model
from ecgtl.models.card import load_card_weights, save_weights, write_card
from ecgtl.train import finetune as finetune_module
from ecgtl.train.engine import BEST_FILE, BEST_PENDING_FILE, CHECKPOINT_FILE, METRICS_FILE, Trainer
from ecgtl.train.finetune import build_model, resolve_splits, run_finetune
from ecgtl.train.pretrain import TRAINING_SET_FILE, run_pretrain
from engine_toy import make_trainer

PER_CLASS = 20  # records per class in the small CinC folder
TINY = ["fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125", "epochs=1", "batch_size=32",
        "bootstrap=0", "optim.warmup_epochs=0", "test_fraction=0.25", "val_fraction=0.25", "device=cpu"]
PRETRAIN_TINY = ["model.width=0.125", "frame_samples=1024", "frames_per_patient=8", "val_frames_per_patient=8", "rounds=1",
                 "batch_size=16", "optim.warmup_epochs=0", "device=cpu", "val_fraction=0.2"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def subset(cinc_folder, tmp_path_factory) -> Path:
    """A CinC-layout folder of 80 real records (20 per class), with the v3 and the original labels."""
    v3 = dict(line.split(",") for line in (cinc_folder.parent / "REFERENCE-v3.csv").read_text().split())
    original = dict(line.split(",") for line in (cinc_folder / "REFERENCE.csv").read_text().split())
    names = []
    for c in ("N", "A", "O", "~"):
        names += [n for n in sorted(v3) if v3[n] == c][:PER_CLASS]
    names.sort()
    folder = tmp_path_factory.mktemp("cinc") / "subset"
    folder.mkdir()
    for n in names:
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_folder / (n + ext), folder / (n + ext))
    (folder / "RECORDS").write_text("\n".join(names) + "\n")
    (folder / "REFERENCE-v3.csv").write_text("".join(f"{n},{v3[n]}\n" for n in names))
    (folder / "REFERENCE.csv").write_text("".join(f"{n},{original[n]}\n" for n in names))
    return folder


def _ft_cfg(subset, out, *extra) -> FinetuneConfig:
    return load_config(FinetuneConfig, "cpu", "finetune", TINY + [f"data={subset}", f"out={out}", *extra])


@pytest.fixture(scope="module")
def tiny_run(subset, tmp_path_factory) -> Path:
    """A genuine fine-tuning run folder (1 epoch, tiny model); tests damage copies of it."""
    out = tmp_path_factory.mktemp("ft") / "run"
    run_finetune(_ft_cfg(subset, out), progress=False)
    return out


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def store(mirror, tmp_path_factory) -> Path:
    """A pre-training store of 6 real MIT-BIH patients; two more are available to add (``store.extra``)."""
    root = tmp_path_factory.mktemp("store")
    report = prepare(root, database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:6], workers=1, progress=False)
    assert not report.failures
    return root


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


# ----------------------------------------------------------------------------- weights faults
def _tensor_data_offset(path: Path) -> int:
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_len


def _flip_tensor_bytes(run: Path) -> None:
    path = run / BEST_FILE
    data = bytearray(path.read_bytes())
    start = _tensor_data_offset(path)
    pos = start + (len(data) - start) // 2
    data[pos:pos + 4] = bytes(b ^ 0xFF for b in data[pos:pos + 4])
    path.write_bytes(bytes(data))


def _garble_header(run: Path) -> None:
    path = run / BEST_FILE
    data = bytearray(path.read_bytes())
    data[12:16] = b"\x00\xff\x00\xff"
    path.write_bytes(bytes(data))


def _truncate(run: Path) -> None:
    path = run / BEST_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _delete(run: Path) -> None:
    (run / BEST_FILE).unlink()


def _other_model_state(run: Path) -> dict:
    card = json.loads((run / "model.json").read_text())
    torch.manual_seed(12345)
    return create_model(card["architecture"], num_classes=4, width=card["width"]).state_dict()


def _another_runs_weights(run: Path) -> None:
    save_weights(_other_model_state(run), run / BEST_FILE)  # a valid file of the same architecture


def _rewritten_after_card(run: Path) -> None:
    state = load_file(str(run / BEST_FILE))  # a resumed training improving best.safetensors, killed before the card
    state["head.weight"] = state["head.weight"] * 1.5
    save_weights(state, run / BEST_FILE)


def _card_normalization_edited(run: Path) -> None:
    card = json.loads((run / "model.json").read_text())
    card["normalization"]["std"] *= 2
    (run / "model.json").write_text(json.dumps(card))


def _card_hash_edited_to_other_weights(run: Path) -> None:
    _another_runs_weights(run)  # and the card's hash edited to vouch for them
    card = json.loads((run / "model.json").read_text())
    card["weights_sha256"] = file_sha256(run / BEST_FILE)
    (run / "model.json").write_text(json.dumps(card))


def _card_without_hash(run: Path) -> None:
    card = json.loads((run / "model.json").read_text())
    del card["weights_sha256"], card["card_sha256"]
    (run / "model.json").write_text(json.dumps(card))


def _card_truncated(run: Path) -> None:
    text = (run / "model.json").read_text()
    (run / "model.json").write_text(text[: len(text) // 2])


def _nan_weights_with_a_matching_card(run: Path) -> None:
    """NaN weights whose card hashes agree (written by hand or an older version: write_card itself refuses them)."""
    state = load_file(str(run / BEST_FILE))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8 and not k.startswith("head"))
    state[key] = state[key].clone()
    state[key].view(-1)[:4] = float("nan")
    save_file(state, str(run / BEST_FILE))  # safetensors' own writer: no finiteness check
    card = json.loads((run / "model.json").read_text())
    del card["card_sha256"]  # as an earlier version wrote it
    card["weights_sha256"] = file_sha256(run / BEST_FILE)
    (run / "model.json").write_text(json.dumps(card))


WEIGHT_FAULTS = {
    "flipped_tensor_bytes": (_flip_tensor_bytes, BEST_FILE, "do not match their model card"),
    "garbled_header": (_garble_header, BEST_FILE, "unreadable safetensors file"),
    "truncated_weights": (_truncate, BEST_FILE, "unreadable safetensors file"),
    "missing_weights": (_delete, BEST_FILE, "weights file not found"),
    "another_runs_weights": (_another_runs_weights, BEST_FILE, "do not match their model card"),
    "weights_rewritten_after_card": (_rewritten_after_card, BEST_FILE, "rewritten after the card"),
    "card_normalization_edited": (_card_normalization_edited, "model.json", "edited after it was written"),
    "card_hash_edited": (_card_hash_edited_to_other_weights, "model.json", "edited after it was written"),
    "card_without_hash": (_card_without_hash, "model.json", "lacks 'weights_sha256'"),
    "card_truncated": (_card_truncated, "model.json", "not a JSON model card"),
    "nan_weights_matching_card": (_nan_weights_with_a_matching_card, BEST_FILE, "non-finite (NaN/inf)"),
}


@pytest.mark.parametrize("fault", list(WEIGHT_FAULTS))
def test_damaged_weights_or_card_never_give_a_class(run, subset, capsys, fault):
    damage, culprit, problem = WEIGHT_FAULTS[fault]
    record = str(subset / "A00001.mat")
    assert cli(["predict", record, "--checkpoint", str(run)]) == 0  # the intact run classifies
    capsys.readouterr()
    damage(run)
    code = cli(["predict", record, "--checkpoint", str(run)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""  # no "N (normal)": no class at all
    assert err.startswith(f"ecgtl predict: error: {run / culprit}: ") and problem in err, err
    code = cli(["predict", record, "--checkpoint", str(run), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and problem in err
    assert json.loads(out) == [{"file": record, "error": err.split("error: ", 1)[1].strip()}]  # valid JSON, no label


def test_every_reader_of_weights_checks_them_against_the_card(run, subset, tmp_path, capsys):
    """evaluate, export, fine-tuning from a card and the Python API all refuse the same flipped bytes."""
    _flip_tensor_bytes(run)
    weights = run / BEST_FILE
    code = cli(["evaluate", "--checkpoint", str(run), "--data", str(subset), "--out", str(tmp_path / "eval"),
                "--bootstrap", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{weights}: weights do not match their model card" in err
    assert not (tmp_path / "eval" / "report.json").exists()
    with pytest.raises(DataError, match="do not match their model card") as info:
        run_export(str(run), str(tmp_path / "model.onnx"))
    assert info.value.path == str(weights) and not (tmp_path / "model.onnx").exists()
    with pytest.raises(DataError, match="do not match their model card"):
        build_model(_ft_cfg(subset, tmp_path / "ft", f"init={run / 'model.json'}"))
    with pytest.raises(DataError, match="do not match their model card"):
        Classifier(run)
    with pytest.raises(DataError, match="do not match their model card"):
        load_card_weights(run / "model.json")


def _explosive_weights(run: Path) -> None:
    """Finite weights whose outputs overflow (a diverged model): the weights checks pass, the output check must not."""
    state = load_file(str(run / BEST_FILE))
    state["head.weight"] = torch.full_like(state["head.weight"], 3e38)
    save_weights(state, run / BEST_FILE)
    card = {k: v for k, v in json.loads((run / "model.json").read_text()).items()
            if k not in ("card_version", "weights", "weights_sha256", "card_sha256", "ecgtl_version", "torch_version", "git_commit")}
    write_card(run / "model.json", run / BEST_FILE, **card)


def test_non_finite_probabilities_are_an_error_never_a_class(run, subset, tmp_path, capsys):
    _explosive_weights(run)
    record = str(subset / "A00001.mat")
    assert cli(["predict", record, "--checkpoint", str(run)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{record}: error: {run / 'model.json'}: the model gave non-finite (NaN/inf) probabilities")
    assert "(normal)" not in out
    assert cli(["predict", record, "--checkpoint", str(run), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)  # strict JSON: no NaN
    assert len(result) == 1 and "label" not in result[0] and "non-finite" in result[0]["error"]
    code = cli(["evaluate", "--checkpoint", str(run), "--data", str(subset), "--out", str(tmp_path / "eval"),
                "--bootstrap", "0", "--no-progress"])
    assert code == 2 and "non-finite (NaN/inf) probabilities" in capsys.readouterr().err  # an error, not a traceback
    with pytest.raises(DataError, match="PyTorch gives .* non-finite"):
        run_export(str(run), str(tmp_path / "model.onnx"), verify_data=str(subset), verify_records=4)
    assert not (tmp_path / "model.onnx").exists() and _temp_files(tmp_path) == []


def test_writers_never_vouch_for_non_finite_weights(run):
    state = load_file(str(run / BEST_FILE))
    state["head.bias"] = torch.tensor([0.0, float("inf"), 0.0, 0.0])
    before = (run / BEST_FILE).read_bytes()
    with pytest.raises(DataError, match="non-finite"):
        save_weights(state, run / BEST_FILE)
    assert (run / BEST_FILE).read_bytes() == before
    save_file(state, str(run / "nan.safetensors"))
    with pytest.raises(DataError, match="nan.safetensors: 1 non-finite"):
        write_card(run / "nan.json", run / "nan.safetensors", architecture="resnet18_postact", width=0.125, fs=100,
                   normalization={"mean": 0, "std": 1})
    assert not (run / "nan.json").exists()


def test_finetune_rerun_refuses_best_weights_replaced_after_training(run, subset):
    """The card is written for the weights the engine recorded, not for whatever file lies there."""
    card = (run / "model.json").read_text()
    _another_runs_weights(run)
    with pytest.raises(DataError, match="not the weights this run wrote") as info:
        run_finetune(_ft_cfg(subset, run), progress=False)  # resumes: nothing to train, then the card
    assert info.value.path == str(run / BEST_FILE)
    assert (run / "model.json").read_text() == card


# ----------------------------------------------------------------------------- stale run state
@pytest.fixture(scope="module")
def records(subset):
    cinc = Cinc2017(subset)
    read, failures = cinc.read_all(progress=False)
    assert not failures
    return {r.name: r for r in read}


SPLIT_CHANGES = {
    "split_seed": ([], ["split_seed=5"], "split_seed=0"),
    "test_fraction": ([], ["test_fraction=0.3"], "test_fraction=0.25"),
    "val_fraction": ([], ["val_fraction=0.2"], "val_fraction=0.25"),
    "folds": ([], ["folds=5"], "folds=0"),
    "fold": (["folds=5", "fold=0"], ["folds=5", "fold=1"], "fold=0"),
    "label_file": ([], ["labels=original"], "REFERENCE-v3.csv"),
}


@pytest.mark.parametrize("change", list(SPLIT_CHANGES))
def test_a_run_folders_splits_must_match_the_split_settings(records, subset, tmp_path, change):
    first, second, said = SPLIT_CHANGES[change]
    cfg = _ft_cfg(subset, tmp_path, *first)
    made = resolve_splits(cfg, tmp_path, records, Cinc2017(subset, labels=cfg.labels))
    saved = (tmp_path / "splits.json").read_text()
    assert resolve_splits(cfg, tmp_path, records, Cinc2017(subset, labels=cfg.labels)) == made  # same settings: reused
    other = _ft_cfg(subset, tmp_path, *first, *second)
    with pytest.raises(ConfigError, match="this run folder's splits were made with") as info:
        resolve_splits(other, tmp_path, records, Cinc2017(subset, labels=other.labels))
    assert str(info.value).startswith(f"{tmp_path / 'splits.json'}: ") and said in str(info.value)
    assert "use another --out" in str(info.value)
    assert (tmp_path / "splits.json").read_text() == saved
    # a split file the user names is the user's choice, whatever the split settings say
    chosen = _ft_cfg(subset, tmp_path / "b", *first, *second, f"splits={tmp_path / 'splits.json'}")
    assert resolve_splits(chosen, tmp_path / "b", records, Cinc2017(subset, labels=chosen.labels)) == made


class _Killed(BaseException):
    """Stands for a SIGKILL / Ctrl-C before the first checkpoint."""


def test_a_finetune_killed_before_its_first_checkpoint_is_not_rerun_under_other_settings(subset, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(finetune_module, "make_trainer", killed)
        with pytest.raises(_Killed):
            run_finetune(_ft_cfg(subset, out), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "splits.json"]  # no checkpoint yet
    config, splits = (out / "config.yaml").read_text(), (out / "splits.json").read_text()
    with pytest.raises(ConfigError, match="splits were made with split_seed=0, but the config asks for split_seed=5"):
        run_finetune(_ft_cfg(subset, out, "split_seed=5"), progress=False)
    assert (out / "config.yaml").read_text() == config and (out / "splits.json").read_text() == splits
    (out / "config.yaml").unlink()  # without its config the folder's splits still guard themselves
    with pytest.raises(ConfigError, match="splits were made with split_seed=0, but the config asks for split_seed=5"):
        run_finetune(_ft_cfg(subset, out, "split_seed=5"), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["splits.json"]  # the refused run wrote nothing
    # the same settings finish the run, and what it claims is what it used
    run_finetune(_ft_cfg(subset, out), progress=False)
    card = json.loads((out / "model.json").read_text())
    assert card["config"]["split_seed"] == 0 and json.loads((out / "splits.json").read_text())["meta"]["seed"] == 0


def test_a_folder_without_training_state_takes_a_new_config(subset, tmp_path):
    """Before training wrote anything (a start-up failure, e.g. out of memory) a new config replaces the old one;
    a checkpoint makes it binding."""
    save_or_check_config(_ft_cfg(subset, tmp_path), tmp_path / "config.yaml")
    (tmp_path / ".config.yaml.x1y2.tmp").write_text("")  # a killed atomic write's leftover is no state
    (tmp_path / "splits.json").write_text("{}")  # guards its own split settings (see the test above)
    save_or_check_config(_ft_cfg(subset, tmp_path, "split_seed=3", "batch_size=16"), tmp_path / "config.yaml")
    (tmp_path / "checkpoint.pt").write_text("")
    with pytest.raises(ConfigError, match=r"other settings \(split_seed\)"):
        save_or_check_config(_ft_cfg(subset, tmp_path, "split_seed=4", "batch_size=16"), tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="unreadable run config"):
        save_or_check_config(_ft_cfg(subset, tmp_path), tmp_path / "config.yaml")



def test_a_finished_run_reused_as_it_is_allows_no_resumable_change(subset, tmp_path):
    """``resumable=()`` (scripts/final_fit.py reusing a finished member): more epochs, allowed on resume, are refused too."""
    save_or_check_config(_ft_cfg(subset, tmp_path, "epochs=2"), tmp_path / "config.yaml")
    (tmp_path / "metrics.csv").write_text("round\n1\n")  # training state: the folder holds a run
    save_or_check_config(_ft_cfg(subset, tmp_path, "epochs=3"), tmp_path / "config.yaml")  # resuming: epochs may grow
    with pytest.raises(ConfigError, match=r"other settings \(epochs\)"):
        save_or_check_config(_ft_cfg(subset, tmp_path, "epochs=2"), tmp_path / "config.yaml", resumable=())
    save_or_check_config(_ft_cfg(subset, tmp_path, "epochs=3"), tmp_path / "config.yaml", resumable=())

def _pre_cfg(store, out, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, "cpu", "pretrain", PRETRAIN_TINY + [f"store={store}", f"out={out}", *extra])


def _halve_signal(store: Path, patient_id: str) -> None:
    """A re-prepared patient: same id, other samples (as after a gain fix)."""
    raw = np.memmap(store / "patients" / patient_id / SIGNAL_FILE, dtype="<i2", mode="r+")
    raw[:] = raw // 2
    raw.flush()


@pytest.mark.parametrize("change", ["patients_added", "patient_reprepared"])
def test_pretrain_resume_refuses_a_store_that_changed(store, mirror, tmp_path, change):
    local = tmp_path / "store"
    shutil.copytree(store, local)
    out = tmp_path / "run"
    run_pretrain(_pre_cfg(local, out), progress=False)
    record = json.loads((out / TRAINING_SET_FILE).read_text())
    assert record["train_patients"] + record["val_patients"] == 6 and record["normalization"]["std"] > 0
    checkpoint = (out / CHECKPOINT_FILE).read_bytes()
    if change == "patients_added":
        prepare(local, database_records(mirror / "mitdb" / "1.0.0", "mitdb")[:8], workers=1, progress=False)
        expect = r"patients: \d -> \d, 1 added|patients: \d -> \d, 2 added"
    else:
        _halve_signal(local, record["train_ids"][0])
        expect = "normalisation mean/std"
    with pytest.raises(ConfigError, match=expect) as info:
        run_pretrain(_pre_cfg(local, out, "rounds=2"), progress=False)
    assert str(info.value).startswith(f"{out / TRAINING_SET_FILE}: ") and "use another --out" in str(info.value)
    assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint  # nothing trained on the changed store


def test_pretrain_backbone_refuses_best_weights_replaced_after_training(store, tmp_path):
    out = tmp_path / "run"
    run_pretrain(_pre_cfg(store, out), progress=False)
    card = (out / "model.json").read_text()
    state = load_file(str(out / BEST_FILE))
    save_weights({k: torch.zeros_like(v) for k, v in state.items()}, out / BEST_FILE)
    with pytest.raises(DataError, match="not the weights this run wrote"):
        run_pretrain(_pre_cfg(store, out), progress=False)  # resumes: nothing to train, then the backbone
    assert (out / "model.json").read_text() == card


# ----------------------------------------------------------------------------- damaged checkpoints
def _ckpt_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _ckpt_flip(path):
    """Bytes changed inside a tensor (torch.load does not check its zip CRCs: it would load them)."""
    data = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["model"]
    key = max(weights, key=lambda k: weights[k].numel())
    pos = bytes(data).find(weights[key].numpy().tobytes()[:64])
    assert pos > 0
    data[pos + 40:pos + 44] = bytes(b ^ 0x55 for b in data[pos + 40:pos + 44])
    path.write_bytes(bytes(data))


def _ckpt_empty(path):
    path.write_bytes(b"")


def _ckpt_garbage(path):
    path.write_bytes(os.urandom(4096))


def _ckpt_nan_weights(path):
    """A well-formed checkpoint of an earlier version (no digest) holding NaN weights."""
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop("digest", None)
    key = next(iter(ckpt["model"]))
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("nan"))
    torch.save(ckpt, path)


def _ckpt_other_model(path):
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop("digest", None)
    ckpt["model"] = torch.nn.Linear(3, 3).state_dict()
    torch.save(ckpt, path)


CHECKPOINT_FAULTS = {"truncated": _ckpt_truncate, "flipped_tensor_bytes": _ckpt_flip, "empty": _ckpt_empty,
                     "garbage": _ckpt_garbage, "nan_weights": _ckpt_nan_weights, "another_model": _ckpt_other_model}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_a_damaged_checkpoint_stops_the_resume_and_keeps_the_progress(tmp_path, fault):
    make_trainer(tmp_path, rounds=2).fit()
    path = tmp_path / CHECKPOINT_FILE
    CHECKPOINT_FAULTS[fault](path)
    damaged, metrics = path.read_bytes(), (tmp_path / METRICS_FILE).read_text()
    with pytest.raises(DataError) as info:
        make_trainer(tmp_path, rounds=4).fit()
    message = str(info.value)
    assert info.value.path == str(path) and "Delete it" in message and "another --out" in message, message
    assert path.read_bytes() == damaged and (tmp_path / METRICS_FILE).read_text() == metrics  # not started over


def test_a_damaged_finetune_checkpoint_is_reported_by_the_command(run, subset, capsys):
    _ckpt_flip(run / CHECKPOINT_FILE)
    code = cli(["finetune", "--preset", "cpu", "--no-progress", *[a for s in TINY + [f"data={subset}", f"out={run}"]
                                                                    for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and f"{run / CHECKPOINT_FILE}: corrupt checkpoint" in err and "Delete it" in err


def test_non_finite_weights_never_reach_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, rounds=3)
    evaluate = trainer.evaluate

    def diverging(m, r):  # the weights overflow in round 2 although every loss was finite
        if r == 1:
            with torch.no_grad():
                next(m.parameters()).fill_(float("inf"))
        return evaluate(m, r)

    trainer.evaluate = diverging
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        trainer.fit()
    assert json.loads(torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["state"])["round"] == 1
    assert make_trainer(tmp_path, rounds=3).resume()


# ----------------------------------------------------------------------------- a full disk
class _FullDisk:
    """Stands in for ``os`` inside :mod:`ecgtl.fileio`: the write of ``target`` fails with ENOSPC,
    part-way through the data (``stage="write"``) or when flushed to disk (``stage="fsync"``)."""

    def __init__(self, target: str, stage: str):
        self.target, self.stage, self.hits = target, stage, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _is_target(self, fd: int) -> bool:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{self.target}.")

    def fdopen(self, fd, *args, **kwargs):
        fh = os.fdopen(fd, *args, **kwargs)
        if self.stage == "write" and self._is_target(fd):
            self.hits += 1
            real_write = fh.write

            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            fh.write = write
        return fh

    def fsync(self, fd):
        if self.stage == "fsync" and self._is_target(fd):
            self.hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.fsync(fd)


def _recorded_best(out: Path) -> str:
    return json.loads(torch.load(out / CHECKPOINT_FILE, weights_only=True)["state"])["best_sha256"]


def _improving(trainer):
    """Round 3 improves on rounds 1-2, so that it writes new best weights too."""
    evaluate = trainer.evaluate
    trainer.evaluate = lambda model, r: {"val_acc": evaluate(model, r)["val_acc"] + (r == 2)}
    return trainer


@pytest.mark.parametrize("stage", ["write", "fsync"])
@pytest.mark.parametrize("target", [CHECKPOINT_FILE, METRICS_FILE, BEST_PENDING_FILE])
def test_a_full_disk_stops_training_with_the_file_named_and_the_previous_one_intact(tmp_path, monkeypatch, target, stage):
    import ecgtl.fileio

    reference = make_trainer(tmp_path / "ref", rounds=3)
    reference.fit()
    out = tmp_path / "run"
    make_trainer(out, rounds=2).fit()
    before = {name: (out / name).read_bytes() for name in (CHECKPOINT_FILE, METRICS_FILE, BEST_FILE)}
    disk = _FullDisk(target, stage)
    with monkeypatch.context() as m:
        m.setattr(ecgtl.fileio, "os", disk)
        with pytest.raises(DataError) as info:
            _improving(make_trainer(out, rounds=3)).fit()
    assert disk.hits == 1
    assert info.value.path == str(out / target) and "No space left on device" in str(info.value)
    assert "free disk space" in str(info.value) and "rerun the same command to resume" in str(info.value)
    assert _temp_files(out) == []
    # the run is where its last checkpoint says: round 2, with the best weights that checkpoint vouches for
    assert (out / CHECKPOINT_FILE).read_bytes() == before[CHECKPOINT_FILE]
    assert (out / BEST_FILE).read_bytes() == before[BEST_FILE] and file_sha256(out / BEST_FILE) == _recorded_best(out)
    if target == METRICS_FILE:
        assert (out / METRICS_FILE).read_bytes() == before[METRICS_FILE]
    resumed = make_trainer(out, rounds=3)  # disk space freed: the same command again
    resumed.fit()
    assert resumed.state.round == 3 and not (out / BEST_PENDING_FILE).exists()
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert file_sha256(out / BEST_FILE) == _recorded_best(out)


@pytest.mark.parametrize("moment", ["before_the_checkpoint", "after_the_checkpoint"])
def test_a_kill_around_new_best_weights_leaves_the_best_the_checkpoint_vouches_for(tmp_path, monkeypatch, moment):
    import ecgtl.train.engine as engine

    out = tmp_path / "run"
    make_trainer(out, rounds=2).fit()
    best_before = (out / BEST_FILE).read_bytes()

    def killed(*args, **kwargs):
        raise _Killed

    def killed_before_the_commit(self, _settle=Trainer._settle_pending_best):
        if (self.out / BEST_PENDING_FILE).exists():
            raise _Killed
        _settle(self)

    with monkeypatch.context() as m:
        if moment == "before_the_checkpoint":
            m.setattr(engine, "_atomic_torch_save", killed)
        else:
            m.setattr(Trainer, "_settle_pending_best", killed_before_the_commit)
        with pytest.raises(_Killed):
            _improving(make_trainer(out, rounds=3)).fit()
    pending = (out / BEST_PENDING_FILE).read_bytes()
    assert (out / BEST_FILE).read_bytes() == best_before  # the new best is still pending
    resumed = make_trainer(out, rounds=3)
    assert resumed.resume()
    assert not (out / BEST_PENDING_FILE).exists()
    if moment == "before_the_checkpoint":  # round 3 not checkpointed: its best is dropped, the round retrained
        assert resumed.state.round == 2 and (out / BEST_FILE).read_bytes() == best_before
    else:  # round 3 checkpointed with the new best's hash: the pending file is committed
        assert resumed.state.round == 3 and (out / BEST_FILE).read_bytes() == pending
    assert file_sha256(out / BEST_FILE) == resumed.state.best_sha256


def test_a_full_disk_while_writing_the_card_is_an_error_naming_it(run, subset, monkeypatch):
    import ecgtl.fileio

    card = (run / "model.json").read_bytes()
    monkeypatch.setattr(ecgtl.fileio, "os", _FullDisk("model.json", "fsync"))
    with pytest.raises(DataError, match="No space left on device") as info:
        run_finetune(_ft_cfg(subset, run), progress=False)
    assert info.value.path == str(run / "model.json")
    assert (run / "model.json").read_bytes() == card and _temp_files(run) == []
