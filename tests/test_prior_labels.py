"""``prior_labels`` / ``prior_label_weight``: an earlier label release mixed into the fine-tuning target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecgtl.config import FinetuneConfig, load_config
from ecgtl.data.transforms import Normalization
from ecgtl.errors import ConfigError, DataError
from ecgtl.models import create_model
from ecgtl.train.finetune import FinetuneData, make_trainer, read_prior_labels, run_finetune
from mixup_check import step_and_mixed_logits

WIDTH = 0.0625


def _cfg(tmp_path, *sets):
    return load_config(FinetuneConfig, "cpu", "finetune", [f"data={tmp_path}", "fs=50", "crop_seconds=20.48", "hop_seconds=10.24",
                                                           f"model.width={WIDTH}", "epochs=1", "batch_size=4", f"out={tmp_path}",
                                                           "optim.warmup_epochs=0", "class_weights=false", *sets])


@pytest.mark.parametrize("sets", [["prior_labels=original"], ["prior_label_weight=0.3"]])
def test_the_two_settings_go_together(tmp_path, sets):
    with pytest.raises(ConfigError, match="prior_labels and prior_label_weight go together"):
        _cfg(tmp_path, *sets)


def test_the_weight_stays_below_one(tmp_path):
    with pytest.raises(ConfigError, match="prior_label_weight"):
        _cfg(tmp_path, "prior_labels=original", "prior_label_weight=1")


def test_the_runs_own_labels_are_refused_as_prior_labels(tmp_path):
    with pytest.raises(ConfigError, match="prior_labels=v3 names the run's own labels"):
        _cfg(tmp_path, "prior_labels=v3", "prior_label_weight=0.3")
    (tmp_path / "REFERENCE.csv").write_text("a,N\n")  # no REFERENCE-v3.csv: the run's labels are REFERENCE.csv too
    with pytest.raises(ConfigError, match="is the run's own label file"):
        read_prior_labels(_cfg(tmp_path, "prior_labels=original", "prior_label_weight=0.3"), ["a"], np.array([0]))
    with pytest.raises(ConfigError, match="is the run's own label file"):
        run_finetune(_cfg(tmp_path, f"prior_labels={tmp_path / 'REFERENCE.csv'}", "prior_label_weight=0.3", "val_fraction=0",
                          f"out={tmp_path / 'run'}"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_prior_labels_are_read_for_the_training_records(tmp_path):
    (tmp_path / "REFERENCE.csv").write_text("a,N\nb,~\nc,O\n")  # the folder's original release
    (tmp_path / "REFERENCE-v3.csv").write_text("a,N\nb,A\nc,O\n")  # the run's labels
    cfg = _cfg(tmp_path, "prior_labels=original", "prior_label_weight=0.3")
    got = read_prior_labels(cfg, ["b", "a"], np.array([2, 0]))
    assert got.tolist() == [3, 0]
    with pytest.raises(DataError, match=r"REFERENCE.csv: 1 of the 2 training records have no label here, e\.g\. d"):
        read_prior_labels(cfg, ["a", "d"], np.array([0, 0]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="REFERENCE.csv is missing"):
        read_prior_labels(_cfg(empty, "prior_labels=original", "prior_label_weight=0.3"), ["a"], np.array([0]))


def _trainer(tmp_path, weight: float, prior):
    sets = [f"prior_labels={tmp_path / 'old.csv'}", f"prior_label_weight={weight}"] if weight else []
    (tmp_path / "old.csv").write_text("a,N\n")
    cfg = _cfg(tmp_path, *sets)
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (600, 1500, 1024, 800)]
    names, labels = ["a", "b", "c", "d"], np.array([0, 1, 2, 3])
    data = FinetuneData(splits={"train": names, "val": names, "test": []}, train_names=names, normalization=Normalization(0.0, 1.0),
                        signals={"train": signals, "val": signals, "test": []}, labels={"train": labels, "val": labels, "test": labels[:0]},
                        prior_labels=prior)
    torch.manual_seed(0)
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH).eval()  # eval: no dropout, fixed batch norm
    return make_trainer(cfg, data, model, torch.device("cpu"), tmp_path, progress=False), model


def test_the_loss_mixes_the_two_labels_by_the_weight(tmp_path):
    prior = np.array([0, 3, 2, 3])  # b and d moved: A -> ~ is recorded as prior ~ for b; d stays ~
    trainer, model = _trainer(tmp_path, 0.3, prior)
    batch = next(iter(trainer.make_batches(0)))
    x, y, y_prior = batch  # the items carry the earlier label last
    assert sorted(zip(y.tolist(), y_prior.tolist())) == [(0, 0), (1, 3), (2, 2), (3, 3)]
    loss, n = trainer.step_fn(model, batch)
    with torch.no_grad():
        logits = model(x).float()
    want = 0.7 * F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(logits, y_prior)
    assert n == 4 and torch.allclose(loss, want, atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-4)  # the moved record changes it
    (tmp_path / "off").mkdir()
    plain, _ = _trainer(tmp_path / "off", 0.0, None)
    x0, y0 = next(iter(plain.make_batches(0)))  # off: the items are as before, the same crops
    assert torch.equal(x0, x) and torch.equal(y0, y)


def test_masked_pooling_and_mixup_carry_the_prior_label_too(tmp_path):
    """Items (crop, label, valid, prior): the prior label comes last; mixup mixes both labels' losses with one pairing."""
    (tmp_path / "old.csv").write_text("a,N\n")
    cfg = _cfg(tmp_path, f"prior_labels={tmp_path / 'old.csv'}", "prior_label_weight=0.25", "pooling=masked", "mixup=0.2")
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (600, 1500, 1024, 800)]
    names, labels = ["a", "b", "c", "d"], np.array([0, 1, 2, 3])
    data = FinetuneData(splits={"train": names, "val": names, "test": []}, train_names=names, normalization=Normalization(0.0, 1.0),
                        signals={"train": signals, "val": signals, "test": []}, labels={"train": labels, "val": labels, "test": labels[:0]},
                        prior_labels=np.array([3, 1, 2, 3]))
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH, pooling="masked").eval()
    trainer = make_trainer(cfg, data, model, torch.device("cpu"), tmp_path, progress=False)
    batch = next(iter(trainer.make_batches(0)))
    assert len(batch) == 4 and batch[2].shape == (4, 2)
    _, y, _, y_prior = batch
    loss, n, logits, lam, perm = step_and_mixed_logits(trainer, model, batch, 0.2)

    def mix(t, tp):
        return 0.75 * F.cross_entropy(logits, t) + 0.25 * F.cross_entropy(logits, tp)

    want = lam * mix(y, y_prior) + (1 - lam) * mix(y[perm], y_prior[perm])
    assert n == 4 and torch.allclose(loss, want, atol=1e-6)
