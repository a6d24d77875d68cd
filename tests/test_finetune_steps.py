"""The named steps of ``run_finetune`` on real CinC 2017 records, each on its own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgtl.config import FinetuneConfig, load_config
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.cinc2017 import Cinc2017
from ecgtl.errors import ConfigError
from ecgtl.models import create_model
from ecgtl.models.card import save_weights, write_card
from ecgtl.train.finetune import FinetuneData, build_model, prepare_data, resolve_splits

NAMES = 160  # records read for these tests (the first ones of RECORDS)


@pytest.fixture(scope="module")
def records(cinc_folder):
    cinc = Cinc2017(cinc_folder)
    read, failures = cinc.read_all(progress=False, names=sorted(cinc.labels)[:NAMES])
    assert not failures
    return {r.name: r for r in read}, cinc


def _cfg(tmp_path, *extra):
    return load_config(FinetuneConfig, "cpu", "finetune", [f"out={tmp_path}", "test_fraction=0.25", "val_fraction=0.25", *extra])


def test_splits_are_made_once_then_reused_and_checked(records, tmp_path):
    by_name, cinc = records
    first = resolve_splits(_cfg(tmp_path), tmp_path, by_name, cinc)
    assert sorted(first["train"] + first["val"] + first["test"]) == sorted(by_name)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["meta"]["seed"] == 0 and saved["meta"]["label_file"].endswith("REFERENCE-v3.csv")
    assert resolve_splits(_cfg(tmp_path), tmp_path, by_name, cinc) == first  # reused as made
    moved = json.loads((tmp_path / "splits.json").read_text())
    moved["meta"]["label_file"] = "elsewhere/relative/REFERENCE-v3.csv"  # made from another path to the same labels
    (tmp_path / "splits.json").write_text(json.dumps(moved))
    assert resolve_splits(_cfg(tmp_path), tmp_path, by_name, cinc) == first
    with pytest.raises(ConfigError, match="split_seed"):  # never reused under other split settings
        resolve_splits(_cfg(tmp_path, "split_seed=5"), tmp_path, by_name, cinc)
    fewer = {n: r for n, r in by_name.items() if n != first["test"][0]}
    with pytest.raises(ConfigError, match="1 record"):
        resolve_splits(_cfg(tmp_path), tmp_path, fewer, cinc)


def test_prepared_data_are_resampled_normalised_on_train_and_labelled(records, tmp_path):
    by_name, cinc = records
    cfg = _cfg(tmp_path, "fs=125", "label_fraction=0.5")
    splits = resolve_splits(cfg, tmp_path, by_name, cinc)
    data = prepare_data(cfg, by_name, splits)
    assert isinstance(data, FinetuneData) and set(data.train_names) <= set(splits["train"])
    assert abs(len(data.train_names) - len(splits["train"]) / 2) <= 2
    first = by_name[data.train_names[0]]
    assert len(data.signals["train"][0]) == pytest.approx(len(first.signal) * 125 / first.fs, abs=1)
    train = np.concatenate(data.signals["train"])
    assert abs(train.mean()) < 1e-3 and abs(train.std() - 1) < 1e-3  # normalised on the training records only
    for part in ("train", "val", "test"):
        names = data.train_names if part == "train" else splits[part]
        assert [CINC_CLASSES[i] for i in data.labels[part]] == [by_name[n].label for n in names]


def test_model_is_random_or_the_cards_backbone_with_a_new_head(tmp_path):
    cfg = _cfg(tmp_path, "model.name=resnet18v2", "model.width=0.125")
    model, width = build_model(cfg)
    assert model.model_name == "resnet18_preact" and width == 0.125 and model.head.out_features == 4
    pretext = create_model("resnet18_preact", num_classes=5, width=0.125)
    save_weights(pretext.state_dict(), tmp_path / "backbone.safetensors")
    write_card(tmp_path / "model.json", tmp_path / "backbone.safetensors", architecture="resnet18_preact", width=0.125,
               num_classes=5, fs=250.0, normalization={"mean": 0.0, "std": 1.0})
    model, width = build_model(_cfg(tmp_path, f"init={tmp_path / 'model.json'}"))
    assert width == 0.125 and model.head.out_features == 4
    pre = pretext.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, pre[k]), k


def test_a_backbone_of_another_stride_than_the_configs_model_is_named_in_a_warning(tmp_path, capsys):
    """--init a stride-32 card with the gpu preset's stride-64 model: the card's model is used, and the user is told."""
    backbone = create_model("resnet18_preact", num_classes=5, width=0.125)
    save_weights(backbone.state_dict(), tmp_path / "backbone.safetensors")
    write_card(tmp_path / "model.json", tmp_path / "backbone.safetensors", architecture="resnet18_preact", width=0.125,
               num_classes=5, fs=250.0, normalization={"mean": 0.0, "std": 1.0})
    init = f"init={tmp_path / 'model.json'}"
    model, _ = build_model(_cfg(tmp_path, init, "model.name=resnet18_preact_stem4", "model.width=0.125"))
    assert model.model_name == "resnet18_preact" and model.feature_stride == 32
    assert "warning: the backbone resnet18_preact has a total stride of 32 samples, not the 64" in capsys.readouterr().out
    build_model(_cfg(tmp_path, init, "model.name=resnet34_preact", "model.width=0.125"))  # another depth, the same stride
    out = capsys.readouterr().out
    assert "note: architecture from the card" in out and "total stride" not in out


def test_a_run_folder_of_an_older_version_resumes_but_other_settings_are_refused(tmp_path):
    """A config.yaml written before a field existed, or under a model's older name, is the same run."""
    import yaml

    from ecgtl.config import save_or_check_config
    from ecgtl.models.registry import with_current_model_name

    cfg = _cfg(tmp_path, "model.name=resnet18_preact")
    old = yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(cfg)))
    old["model"]["name"] = "resnet18v2"  # the name before the rename
    del old["optim"]["name"], old["optim"]["momentum"]  # fields added later
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    save_or_check_config(cfg, tmp_path / "config.yaml", canonical=with_current_model_name)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["name"] == "resnet18_preact"
    with pytest.raises(ConfigError, match=r"other settings \(model\)"):
        save_or_check_config(_cfg(tmp_path, "model.name=resnet34_preact"), tmp_path / "config.yaml", canonical=with_current_model_name)


def test_recipe_options_train_and_balanced_sampling_evens_the_classes(records, tmp_path):
    from ecgtl.train.finetune import make_trainer

    by_name, cinc = records
    cfg = _cfg(tmp_path, "fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125", "epochs=1", "batch_size=16",
               "sampling=balanced", "label_smoothing=0.1", "augment.scale=0.2", "augment.noise=0.05", "augment.wander=0.3",
               "augment.stretch=0.1", "augment.flip=0.5", "device=cpu")
    data = prepare_data(cfg, by_name, resolve_splits(cfg, tmp_path, by_name, cinc))
    model, _ = build_model(cfg)
    trainer = make_trainer(cfg, data, model, torch.device("cpu"), tmp_path, progress=False)
    drawn = np.concatenate([y.numpy() for _, y in trainer.make_batches(0)])
    assert len(drawn) == len(data.train_names)
    share = np.bincount(drawn, minlength=4) / len(drawn)
    natural = np.bincount(data.labels["train"], minlength=4) / len(data.labels["train"])
    assert share.min() > 0.1 and natural.max() > 0.5 > share.max()  # N dominates the records, not the draws
    state = trainer.fit()
    assert state.round == 1 and np.isfinite(state.history[0]["train_loss"])


def test_calibrated_card_carries_its_biases_to_every_prediction(records, tmp_path):
    """calibrate=true: biases fitted on validation go into the card; Classifier applies them; the card stays verifiable."""
    import json as _json
    import shutil

    from ecgtl.evaluate.inference import Classifier
    from ecgtl.train.finetune import run_finetune

    by_name, cinc = records
    small = tmp_path / "cinc"  # a CinC folder of the 160 records, so the run takes seconds
    small.mkdir()
    for n in by_name:
        for ext in (".mat", ".hea"):
            shutil.copy(cinc.folder / f"{n}{ext}", small)
    (small / "RECORDS").write_text("\n".join(by_name) + "\n")
    (small / "REFERENCE-v3.csv").write_text("".join(f"{n},{r.label}\n" for n, r in by_name.items()))
    cfg = _cfg(tmp_path / "run", f"data={small}", "fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125",
               "epochs=1", "batch_size=32", "bootstrap=0", "calibrate=true", "device=cpu")
    run_finetune(cfg, progress=False)
    card = _json.loads((tmp_path / "run" / "model.json").read_text())
    assert len(card["class_bias"]) == 4 and card["class_bias"][0] == 0 and any(card["class_bias"])  # it moved a decision
    rows = (tmp_path / "run" / "predictions_test.csv").read_text().splitlines()[1:]
    predicted = {r.split(",")[0]: r.split(",")[2] for r in rows}
    probs = Classifier(tmp_path / "run").predict_proba([by_name[n].signal for n in predicted], 300)  # the card verifies and loads
    assert [CINC_CLASSES[i] for i in probs.argmax(1)] == list(predicted.values())  # the same biased decisions


def test_mixup_mixes_pairs_of_inputs_and_their_losses(records, tmp_path):
    """mixup=alpha: the step's loss is lam * CE(y) + (1 - lam) * CE(y[perm]) on lam * x + (1 - lam) * x[perm];
    with masked pooling the mixed input counts as signal wherever either record is; one epoch trains."""
    import torch.nn.functional as F

    from ecgtl.train.finetune import make_trainer, mixup_pairs

    by_name, cinc = records
    cfg = _cfg(tmp_path, "fs=100", "crop_seconds=20.48", "hop_seconds=10.24", "model.width=0.125", "epochs=1", "batch_size=16",
               "mixup=0.4", "pooling=masked", "class_weights=true", "device=cpu")
    data = prepare_data(cfg, by_name, resolve_splits(cfg, tmp_path, by_name, cinc))
    model, _ = build_model(cfg)
    trainer = make_trainer(cfg, data, model, torch.device("cpu"), tmp_path, progress=False)
    x, y, valid = next(iter(trainer.make_batches(0)))
    model.eval()  # no dropout: the step and the reference see the same function
    torch.manual_seed(5)
    lam, perm = mixup_pairs(len(y), 0.4)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(len(y)))
    mixed_valid = torch.stack([torch.minimum(valid[:, 0], valid[perm, 0]), torch.maximum(valid[:, 1], valid[perm, 1])], 1)
    with torch.no_grad():
        logits = model(lam * x + (1 - lam) * x[perm], mixed_valid).float()
        counts = np.bincount(data.labels["train"], minlength=4).astype(float)
        weight = torch.tensor(counts.sum() / (4 * np.maximum(counts, 1)), dtype=torch.float32)
        want = lam * F.cross_entropy(logits, y, weight=weight) + (1 - lam) * F.cross_entropy(logits, y[perm], weight=weight)
        torch.manual_seed(5)
        got, n = trainer.step_fn(model, (x, y, valid))
        plain = F.cross_entropy(model(x, valid).float(), y, weight=weight)
    assert n == len(y) and float(got) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(got) - float(plain)) > 1e-3  # mixing changed the loss: the test can fail
    state = trainer.fit()
    assert state.round == 1 and np.isfinite(state.history[0]["train_loss"])
    with pytest.raises(ConfigError, match="mixup"):
        _cfg(tmp_path, "mixup=-1")
