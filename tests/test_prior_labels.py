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
from ecgtl.train.finetune import FinetuneData, make_trainer, read_prior_labels

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


def test_prior_labels_are_read_for_the_training_records(tmp_path):
    (tmp_path / "REFERENCE.csv").write_text("a,N\nb,~\nc,O\n")  # the folder's original release
    cfg = _cfg(tmp_path, "prior_labels=original", "prior_label_weight=0.3")
    got = read_prior_labels(cfg, ["b", "a"], np.array([2, 0]))
    assert got.tolist() == [3, 0]
    with pytest.raises(DataError, match=r"REFERENCE.csv: 1 of the 2 training records have no label here, e\.g\. d"):
        read_prior_labels(cfg, ["a", "d"], np.array([0, 0]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no REFERENCE.csv"):
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
