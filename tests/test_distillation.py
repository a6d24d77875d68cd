"""``distill_probs`` / ``distill_weight`` / ``distill_temperature``: a teacher's probabilities mixed into the fine-tuning target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cinc_subset import write_cinc_subset
from ecgtl.cli import main as cli
from ecgtl.config import FinetuneConfig, load_config
from ecgtl.data.splits import save_splits
from ecgtl.data.transforms import Normalization
from ecgtl.errors import ConfigError, DataError
from ecgtl.models import create_model
from ecgtl.train.finetune import FinetuneData, distill_cross_entropy, make_trainer, read_distill_probs, run_finetune
from mixup_check import step_and_mixed_logits

WIDTH = 0.0625
HEADER = "record,label,prediction,p_N,p_A,p_O,p_~\n"


def _cfg(tmp_path, *sets):
    return load_config(FinetuneConfig, "cpu", "finetune", [f"data={tmp_path}", "fs=50", "crop_seconds=20.48", "hop_seconds=10.24",
                                                           f"model.width={WIDTH}", "epochs=1", "batch_size=4", f"out={tmp_path}",
                                                           "optim.warmup_epochs=0", *sets])


@pytest.mark.parametrize("sets", [["distill_probs=t.csv"], ["distill_weight=0.5"]])
def test_the_file_and_the_weight_go_together(tmp_path, sets):
    with pytest.raises(ConfigError, match="distill_probs and distill_weight go together"):
        _cfg(tmp_path, *sets)


@pytest.mark.parametrize("sets, match", [(["distill_weight=1.5"], "distill_weight"), (["distill_temperature=0"], "distill_temperature"),
                                         (["distill_temperature=nan"], "distill_temperature")])
def test_weight_and_temperature_bounds(tmp_path, sets, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, "distill_probs=t.csv", "distill_weight=0.5", *sets)


def test_a_temperature_without_distillation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="distill_temperature=3 applies only with distill_probs"):
        _cfg(tmp_path, "distill_temperature=3")


def test_distillation_and_prior_labels_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="set one of them"):
        _cfg(tmp_path, "distill_probs=t.csv", "distill_weight=0.5", "prior_labels=original", "prior_label_weight=0.3")


def test_the_teachers_probabilities_are_read_in_training_order(tmp_path):
    f = tmp_path / "predictions.csv"
    f.write_text("\ufeff" + HEADER + "a,N,N,0.7,0.1,0.1,0.1\nb,,O,0.2,0.1,0.6,0.1\nz,~,~,0,0,0,1\n", encoding="utf-8")  # a BOM
    got = read_distill_probs(f, ["b", "a"], np.array([2, 0]))  # b has no label column value (predict's output): fine
    assert got.dtype == np.float32 and got.shape == (2, 4)  # z: not trained on, ignored
    np.testing.assert_allclose(got, [[0.2, 0.1, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]], rtol=1e-6)
    f.write_text(HEADER + "a,N,N,0.7,0.1,0.1,0.1\n\n\na,N,N,0.7,0.1,0.1,0.1\n")  # blank lines: the message gives the file's line
    with pytest.raises(DataError, match="line 5: record a is listed twice"):
        read_distill_probs(f, ["a"], np.array([0]))


@pytest.mark.parametrize("body, match", [
    ("a,N,N,0.7,0.1,0.1,0.1\n", r"1 of the 2 training records have no probabilities here, e\.g\. b"),
    ("a,N,N,0.7,0.1,0.1,0.1\na,N,N,0.7,0.1,0.1,0.1\nb,A,A,0,1,0,0\n", "line 3: record a is listed twice"),
    ("a,N,N,0.7,0.1,0.1,x\nb,A,A,0,1,0,0\n", "record a: probabilities .* are not all numbers"),
    ("a,N,N,0.7,0.1,0.1,nan\nb,A,A,0,1,0,0\n", "record a: .* not finite, non-negative and summing to 1"),
    ("a,N,N,0.9,0.2,0.1,-0.2\nb,A,A,0,1,0,0\n", "record a: .* not finite, non-negative and summing to 1"),
    ("a,N,N,0.7,0.1,0.1,0.2\nb,A,A,0,1,0,0\n", "record a: .* not finite, non-negative and summing to 1"),
    ("a,O,N,0.7,0.1,0.1,0.1\nb,A,A,0,1,0,0\n", "record a is labelled O here but N in the run's labels"),
])
def test_bad_teacher_files_are_refused_naming_the_file(tmp_path, body, match):
    f = tmp_path / "predictions.csv"
    f.write_text(HEADER + body)
    with pytest.raises(DataError, match=match) as e:
        read_distill_probs(f, ["a", "b"], np.array([0, 1]))
    assert str(f) in str(e.value)


def test_a_file_without_the_class_columns_or_at_all_is_refused(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("record,label\na,N\n")
    with pytest.raises(DataError, match=r"no column p_N, p_A, p_O, p_~"):
        read_distill_probs(f, ["a"], np.array([0]))
    with pytest.raises(DataError, match="no such file"):
        read_distill_probs(tmp_path / "nothing.csv", ["a"], np.array([0]))
    (tmp_path / "REFERENCE.csv").write_text("a,N\n")
    with pytest.raises(DataError, match="no such file"):
        run_finetune(_cfg(tmp_path, f"distill_probs={tmp_path / 'nothing.csv'}", "distill_weight=0.5", "val_fraction=0",
                          f"out={tmp_path / 'run'}"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_distill_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, -2.0]])
    teacher = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.05, 0.8, 0.1, 0.05]])
    t = 2.0
    soft = teacher ** (1 / t) / (teacher ** (1 / t)).sum(1, keepdim=True)  # softmax(log p / T)
    per = -(soft * F.log_softmax(logits / t, 1)).sum(1)
    assert torch.allclose(distill_cross_entropy(logits, teacher, t), t * t * per.mean())
    w = torch.tensor([1.0, 3.0])
    assert torch.allclose(distill_cross_entropy(logits, teacher, t, w), t * t * (per[0] + 3 * per[1]) / 4)
    # at T = 1 against one-hot probabilities it is the plain cross-entropy, weighted as F.cross_entropy weights it
    onehot = torch.eye(4)[[0, 1]]
    cw = torch.tensor([0.5, 2.0, 1.0, 1.0])
    y = torch.tensor([0, 1])
    assert torch.allclose(distill_cross_entropy(logits, onehot, 1.0, cw[y]), F.cross_entropy(logits, y, weight=cw))


def _data(teacher, labels=(0, 1, 2, 3)):
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (600, 1500, 1024, 800)]
    names, labels = ["a", "b", "c", "d"], np.array(labels)
    return FinetuneData(splits={"train": names, "val": names, "test": []}, train_names=names, normalization=Normalization(0.0, 1.0),
                        signals={"train": signals, "val": signals, "test": []}, labels={"train": labels, "val": labels, "test": labels[:0]},
                        distill_probs=teacher)


TEACHER = np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.2, 0.1, 0.6, 0.1], [0.1, 0.1, 0.4, 0.4]], dtype=np.float32)


def _trainer(tmp_path, *sets, teacher=TEACHER, labels=(0, 1, 2, 3)):
    cfg = _cfg(tmp_path, *sets)
    torch.manual_seed(0)
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH, pooling=cfg.pooling).eval()  # eval: no dropout
    return make_trainer(cfg, _data(teacher, labels), model, torch.device("cpu"), tmp_path, progress=False), model


def test_the_loss_mixes_label_and_teacher_by_the_weight_with_class_weights(tmp_path):
    sets = [f"distill_probs={tmp_path / 't.csv'}", "distill_weight=0.4", "distill_temperature=3", "class_weights=true"]
    trainer, model = _trainer(tmp_path, *sets, labels=(0, 0, 0, 1))  # N N N A: the class weights differ
    batch = next(iter(trainer.make_batches(0)))
    x, y, p = batch  # the items carry the teacher's probabilities last, in the record's order
    order = [int(np.flatnonzero((TEACHER == row).all(1))[0]) for row in p.numpy()]  # which record each item is (rows differ)
    assert p.dtype == torch.float32 and sorted(order) == [0, 1, 2, 3]
    assert y.tolist() == [[0, 0, 0, 1][i] for i in order]
    loss, n = trainer.step_fn(model, batch)
    with torch.no_grad():
        logits = model(x).float()
    cw = torch.tensor([4 / (4 * 3), 4 / (4 * 1), 4 / 4, 4 / 4])  # inverse frequency: N 1/3, A 1 (absent classes count 1)
    want = 0.6 * F.cross_entropy(logits, y, weight=cw) + 0.4 * distill_cross_entropy(logits, p, 3.0, cw[y])
    assert n == 4 and torch.allclose(loss, want, atol=1e-6)
    unweighted_term = 0.6 * F.cross_entropy(logits, y, weight=cw) + 0.4 * distill_cross_entropy(logits, p, 3.0)
    assert not torch.allclose(loss, unweighted_term, atol=1e-4)  # the distillation term is class-weighted too
    assert not torch.allclose(loss, F.cross_entropy(logits, y, weight=cw), atol=1e-3)  # the teacher changes it
    # a teacher that is the labels themselves, at T = 1, leaves the plain loss
    (tmp_path / "same").mkdir()
    same, model2 = _trainer(tmp_path / "same", f"distill_probs={tmp_path / 't.csv'}", "distill_weight=0.4",
                            teacher=np.eye(4, dtype=np.float32))
    b2 = next(iter(same.make_batches(0)))
    l2, _ = same.step_fn(model2, b2)
    with torch.no_grad():
        assert torch.allclose(l2, F.cross_entropy(model2(b2[0]).float(), b2[1]), atol=1e-6)
    (tmp_path / "off").mkdir()
    plain, _ = _trainer(tmp_path / "off", teacher=None, labels=(0, 0, 0, 1))
    x0, y0 = next(iter(plain.make_batches(0)))  # off: the items are as before, the same crops
    assert torch.equal(x0, x) and torch.equal(y0, y)


def test_masked_pooling_and_mixup_carry_the_teacher_too(tmp_path):
    """Items (crop, label, valid, teacher): mixup mixes both targets' losses with one pairing."""
    trainer, model = _trainer(tmp_path, f"distill_probs={tmp_path / 't.csv'}", "distill_weight=0.25", "pooling=masked", "mixup=0.2",
                              "class_weights=false")
    batch = next(iter(trainer.make_batches(0)))
    assert len(batch) == 4 and batch[2].shape == (4, 2) and batch[3].shape == (4, 4)
    _, y, _, p = batch
    loss, n, logits, lam, perm = step_and_mixed_logits(trainer, model, batch, 0.2)

    def mix(t, tp):
        return 0.75 * F.cross_entropy(logits, t) + 0.25 * distill_cross_entropy(logits, tp, 1.0)

    want = lam * mix(y, p) + (1 - lam) * mix(y[perm], p[perm])
    assert n == 4 and torch.allclose(loss, want, atol=1e-6)


def test_teacher_from_evaluate_then_a_distilled_student_end_to_end(shared_data, tmp_path):
    """The documented chain on real records: a teacher run, `ecgtl evaluate --records SPLITS:train`, a student that reads its
    predictions.csv."""
    folder = tmp_path / "training2017"
    folder.mkdir()
    names = write_cinc_subset(shared_data, folder, 24, "REFERENCE-v3.csv")
    splits = tmp_path / "splits.json"
    save_splits(splits, {"train": names[:16], "val": names[16:20], "test": names[20:]}, note="test_distillation")
    common = [f"splits={splits}", "fs=50", "crop_seconds=20.48", "hop_seconds=10.24", f"model.width={WIDTH}", "epochs=1",
              "batch_size=8", "eval_batch_size=8", "bootstrap=0", "optim.warmup_epochs=0"]

    def finetune(out, *extra):
        argv = ["finetune", "--data", str(folder), "--out", str(out), "--no-progress"]
        for s in (*common, *extra):
            argv += ["--set", s]
        return cli(argv)

    assert finetune(tmp_path / "teacher") == 0
    assert cli(["evaluate", "--checkpoint", str(tmp_path / "teacher"), "--data", str(folder), "--records", f"{splits}:train",
                "--out", str(tmp_path / "teacher-train"), "--bootstrap", "0", "--no-progress", "--workers", "0"]) == 0
    probs = tmp_path / "teacher-train" / "predictions.csv"
    assert finetune(tmp_path / "student", f"distill_probs={probs}", "distill_weight=0.5", "distill_temperature=2") == 0
    card = json.loads((tmp_path / "student" / "model.json").read_text())
    assert card["config"]["distill_probs"] == str(probs) and card["config"]["distill_weight"] == 0.5
    pinned = (tmp_path / "student" / "distill_probs.sha256").read_text()
    # the teacher file changed since the run started: its resume (here: 2 epochs) is refused before training
    probs.write_text(probs.read_text().replace("0.", "0.0", 1))
    with pytest.raises(ConfigError, match="the teacher's probabilities changed since the run in .*student started"):
        run_finetune(load_config(FinetuneConfig, "cpu", "finetune", [f"data={folder}", f"out={tmp_path / 'student'}", *common,
                                                                     f"distill_probs={probs}", "distill_weight=0.5",
                                                                     "distill_temperature=2", "epochs=2"]))
    assert (tmp_path / "student" / "distill_probs.sha256").read_text() == pinned
    # a student whose records the teacher never saw is refused, naming the file
    other = tmp_path / "other.json"
    save_splits(other, {"train": names[4:20], "val": names[:4], "test": names[20:]}, note="test_distillation")
    with pytest.raises(DataError, match=r"predictions\.csv: 4 of the 16 training records have no probabilities here"):
        run_finetune(load_config(FinetuneConfig, "cpu", "finetune", [f"data={folder}", f"out={tmp_path / 'bad'}", *common,
                                                                     f"splits={other}", f"distill_probs={probs}", "distill_weight=0.5"]))
