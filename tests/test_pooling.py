"""Length-aware global pooling (issue 8): ``pooling: masked`` averages the last feature map only over the
time steps that cover real signal, not over a short record's zero padding.

The datasets say where the real signal is in each input (``valid = (start, end)``), the 1-D ResNets pool
over the steps whose centre lies in it, the card records the mode, and every inference path (fine-tuning's
validation and test, the Classifier behind evaluate/predict, ONNX export) gives the model the same ranges.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cinc_subset import write_cinc_subset
from ecgtl.cli import main as cli
from ecgtl.config import FinetuneConfig, load_config
from ecgtl.constants import CINC_CLASSES
from ecgtl.data.augment import EcgAugment
from ecgtl.data.cinc_dataset import (
    CincCropDataset,
    CincPaperDataset,
    CincWindowDataset,
    aggregate_windows,
    window_valid_range,
)
from ecgtl.data.splits import save_splits
from ecgtl.data.transforms import take_window, window_starts
from ecgtl.errors import ConfigError, DataError
from ecgtl.evaluate.inference import Classifier, RecordIndexDataset, inference_dataset, model_pooling, predict_dataset
from ecgtl.models import create_model
from ecgtl.models.card import model_from_card, read_card, save_weights, write_card
from ecgtl.models.resnet1d import masked_mean, valid_feature_steps

WIDTH = 0.0625


def _model(name: str = "resnet18_preact", seed: int = 0, pooling: str = "mean") -> torch.nn.Module:
    """A tiny model in eval mode whose batch norm does real arithmetic (running statistics away from (0, 1))."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=4, width=WIDTH, pooling=pooling)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _manual_steps(start: int, end: int, steps: int, stride: int = 32) -> list[int]:
    """The steps whose centre ``stride * j`` lies in ``[start, end)``, by a plain loop."""
    return [j for j in range(steps) if start <= stride * j < end]


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", ["resnet18_postact", "resnet18_preact", "resnet50_preact"])
@pytest.mark.parametrize("length", [1024, 1000, 777])
def test_masked_pooling_without_padding_is_the_plain_mean(name, length):
    model = _model(name)
    x = torch.randn(3, 1, length)
    full = torch.tensor([[0, length]] * 3)
    with torch.no_grad():
        plain, masked = model(x), model(x, full)
        torch.testing.assert_close(model.forward_features(x, full), model.forward_features(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(masked, plain, rtol=1e-6, atol=1e-6)
    assert valid_feature_steps(full, -(-length // 32), 32).all()  # every step of an unpadded input counts


def test_feature_steps_are_those_whose_centre_is_real_signal():
    steps = 32  # a 1,000-sample input: ceil(1000 / 32)
    cases = [(300, 1000), (0, 1000), (320, 1000), (321, 1000), (0, 640), (0, 641), (990, 1000), (100, 700)]
    valid = torch.tensor(cases)
    mask = valid_feature_steps(valid, steps, 32)
    for row, (start, end) in zip(mask, cases):
        assert row.nonzero().flatten().tolist() == _manual_steps(start, end, steps), (start, end)
    # no centre inside the range: the one step nearest to its middle still counts (never an empty mean)
    tiny = valid_feature_steps(torch.tensor([[5, 20], [40, 60], [0, 0], [1100, 1200]]), steps, 32)
    assert [r.nonzero().flatten().tolist() for r in tiny] == [[0], [2], [0], [31]]  # 50 is nearer 64 than 32


@pytest.mark.parametrize("name", ["resnet18_postact", "resnet18_preact_stem4"])
def test_the_centre_of_a_step_is_the_centre_of_its_receptive_field(name):
    """Step ``j`` of the last feature map depends on input samples symmetric around ``feature_stride * j`` (32, or 64)."""
    model = _model(name)
    x = torch.randn(1, 1, 8192, requires_grad=True)
    maps = model.forward_feature_maps(x)
    for j in (40, 100):
        (grad,) = torch.autograd.grad(maps[0, :, j].sum(), x, retain_graph=True)
        support = (grad[0, 0].abs() > 0).nonzero().flatten()
        assert int(support.min() + support.max()) == 2 * model.feature_stride * j


def test_padded_input_pools_exactly_the_real_signals_steps():
    model = _model()
    torch.manual_seed(1)
    length, pad = 2048, 640  # 20 steps of front padding
    signal = torch.randn(1, 1, length - pad)
    padded = torch.cat([torch.zeros(1, 1, pad), signal], dim=-1)
    valid = torch.tensor([[pad, length]])
    with torch.no_grad():
        maps = model.forward_feature_maps(padded)  # (1, C, 64)
        keep = _manual_steps(pad, length, maps.shape[-1])
        assert keep == list(range(20, 64))
        manual = maps[0][:, keep].double().mean(dim=-1)
        features = model.forward_features(padded, valid)
        torch.testing.assert_close(features[0].double(), manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(padded, valid), model.head(features))
        assert not torch.allclose(features, model.forward_features(padded), atol=1e-3)  # the padding did count before
        # the kept steps are the unpadded signal's own steps (a shift by 20 steps), away from the padding's edge
        alone = model.forward_feature_maps(signal)  # (1, C, 44)
        reach = 12  # steps within the receptive field (~330 samples) of the edge differ
        torch.testing.assert_close(maps[..., 20 + reach :], alone[..., reach:], rtol=1e-4, atol=1e-4)


def test_masked_pooling_of_the_stride4_stem_keeps_the_steps_centred_on_real_signal():
    """resnet18_preact_stem4 (one step per 64 samples): the steps whose centre 64 * j is in ``valid``."""
    model = _model("resnet18_preact_stem4")
    length, pad = 2048, 640  # 10 steps of front padding at stride 64
    padded = torch.cat([torch.zeros(1, 1, pad), torch.randn(1, 1, length - pad)], dim=-1)
    with torch.no_grad():
        maps = model.forward_feature_maps(padded)  # (1, C, 32)
        keep = _manual_steps(pad, length, maps.shape[-1], stride=64)
        assert keep == list(range(10, 32))
        torch.testing.assert_close(model.forward_features(padded, torch.tensor([[pad, length]]))[0].double(),
                                   maps[0][:, keep].double().mean(dim=-1), rtol=1e-5, atol=1e-6)


def test_masked_pooling_with_the_conv2d_layout_matches_the_1d_layout():
    model = _model()
    layout2d = _model()
    layout2d.use_conv2d_layout()
    x = torch.randn(4, 1, 1500)
    x[1, :, :700] = 0
    valid = torch.tensor([[0, 1500], [700, 1500], [0, 900], [1490, 1500]])
    with torch.no_grad():
        torch.testing.assert_close(layout2d(x, valid), model(x, valid), rtol=1e-4, atol=1e-5)
        assert layout2d.forward_feature_maps(x).shape == model.forward_feature_maps(x).shape  # (B, C, T') after squeeze


def test_masked_pooling_trains():
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH, pooling="masked").train()
    x = torch.randn(4, 1, 512)
    loss = model(x, torch.tensor([[0, 512], [200, 512], [400, 512], [0, 512]])).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18_preact_2d", "resnet18_postact_2d_stft"])
def test_2d_models_refuse_masked_pooling(name):
    with pytest.raises(ConfigError, match="pooling=masked applies to 1-D models"):
        create_model(name, num_classes=4, width=WIDTH, pooling="masked")
    model = create_model(name, num_classes=4, width=WIDTH)
    with pytest.raises(ConfigError, match="pooling=masked"):
        model.set_pooling("masked")
    assert model.pooling == "mean"
    x = torch.randn(2, 1, 64, 64) if "stft" not in name else torch.randn(2, 1, 1024)
    with pytest.raises(ValueError, match="1-D models"):
        model(x, torch.tensor([[0, 10], [0, 10]]))
    with pytest.raises(ConfigError, match="pooling must be one of mean, masked, max"):
        create_model("resnet18_preact", pooling="attention")


@pytest.mark.parametrize("name", ["resnet18_preact", "resnet18_preact_stem4", "resnet18_preact_2d_stft"])
def test_max_pooling_takes_each_features_largest_step(name):
    """``pooling: max``: the head sees each feature's maximum over the last feature map (time, and frequency in
    2-D), so a burst in one part of a long input is not averaged away; the same parameters as mean pooling."""
    mean_model, max_model = _model(name), _model(name, pooling="max")
    assert max_model.pooling == "max"
    max_model.load_state_dict(mean_model.state_dict())
    x = torch.randn(3, 1, 2048)
    with torch.no_grad():
        maps = max_model.forward_feature_maps(x).flatten(2)
        pooled = max_model.forward_features(x)
        torch.testing.assert_close(pooled, maps.max(dim=-1).values)
        torch.testing.assert_close(mean_model.forward_features(x), maps.mean(dim=-1))
        assert not torch.allclose(pooled, maps.mean(dim=-1))
        torch.testing.assert_close(max_model(x), max_model.head(pooled))
    with pytest.raises(ValueError, match="masked pooling"):
        max_model(x, torch.tensor([[0, 2048]] * 3))


def test_max_pooling_trains_and_its_card_round_trips(tmp_path):
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH, pooling="max").train()
    model(torch.randn(4, 1, 512)).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    folder = _card(tmp_path / "max", "max")
    assert read_card(folder / "model.json")["pooling"] == "max"
    assert model_from_card(folder / "model.json")[0].pooling == "max" and Classifier(folder, device="cpu").pooling == "max"


def test_masked_mean_is_a_weighted_mean():
    maps = torch.arange(12, dtype=torch.float32).reshape(1, 2, 6)
    mask = torch.tensor([[False, False, True, True, True, False]])
    assert masked_mean(maps, mask).tolist() == [[3.0, 9.0]]


# ----------------------------------------------------------------------------- the datasets
def _signals():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) + 1.0 for n in (300, 1000, 2500, 999)]  # no exact zeros in a record


def _check_valid(x: torch.Tensor, valid: torch.Tensor, length: int):
    lo, hi = valid.tolist()
    assert 0 <= lo <= hi <= length and valid.dtype == torch.int64
    assert torch.all(x[0, :lo] == 0) and torch.all(x[0, hi:] == 0) and torch.all(x[0, lo:hi] != 0)


def test_datasets_say_where_the_real_signal_is_only_when_asked():
    signals, labels = _signals(), ["N", "A", "O", "~"]
    for plain, told in [(CincCropDataset(signals, labels, 1000, seed=3), CincCropDataset(signals, labels, 1000, seed=3, return_valid=True)),
                        (CincPaperDataset(signals, labels, 1000), CincPaperDataset(signals, labels, 1000, return_valid=True)),
                        (CincWindowDataset(signals, labels, 1000, 500), CincWindowDataset(signals, labels, 1000, 500, return_valid=True))]:
        assert len(plain) == len(told)
        for i in range(len(plain)):
            item, extra = plain[i], told[i]
            assert len(item) == 2 and len(extra) == 3  # callers that do not ask see the items as before
            assert torch.equal(item[0], extra[0]) and item[1] == extra[1]
            _check_valid(extra[0], extra[2], 1000)
            if hasattr(told, "valid_range"):
                assert told.valid_range(i) == tuple(extra[2].tolist())
    crop = CincCropDataset(signals, labels, 1000, return_valid=True)
    assert crop[0][2].tolist() == [700, 1000] and crop[1][2].tolist() == [0, 1000] and crop[2][2].tolist() == [0, 1000]
    windows = CincWindowDataset(signals, labels, 1000, 500, return_valid=True)
    assert windows.valid.tolist()[:2] == [[700, 1000], [0, 1000]]
    assert windows.valid[windows.record_index == 3].tolist() == [[1, 1000]]  # 999 samples: one sample of padding in front
    batch = next(iter(torch.utils.data.DataLoader(windows, batch_size=4)))
    assert batch[2].shape == (4, 2)  # the models' valid argument
    assert window_valid_range(100, -30, 50) == (30, 50) and window_valid_range(100, 80, 50) == (0, 20)
    assert window_valid_range(100, 200, 50) == (0, 0)


def test_crop_valid_range_follows_the_time_stretch():
    signals = _signals()
    aug = CincCropDataset(signals, None, 1000, seed=1, augment=EcgAugment(fs=100, stretch=0.2), return_valid=True)
    for i in range(len(signals)):
        rng = np.random.default_rng([1, 0, i])
        n = len(EcgAugment(fs=100, stretch=0.2).stretch_record(signals[i], rng))
        x, _, valid = aug[i]
        assert valid.tolist() == [max(0, 1000 - n), 1000]
        _check_valid(x, valid, 1000)


# ----------------------------------------------------------------------------- cards and inference
def _card(folder, pooling: str | None, input_mode: str = "crop", architecture: str = "resnet18_preact"):
    folder.mkdir(parents=True, exist_ok=True)
    model = _model(architecture)
    save_weights(model.state_dict(), folder / "best.safetensors")
    extra = {} if pooling is None else {"pooling": pooling}
    write_card(folder / "model.json", folder / "best.safetensors", architecture=architecture, width=WIDTH, num_classes=4,
               classes=list(CINC_CLASSES), fs=100.0, normalization={"mean": 0.0, "std": 0.25}, task="cinc2017",
               input=input_mode, window_samples=1024, hop_samples=512, paper_samples=2048, **extra)
    return folder


def test_card_round_trip_keeps_the_pooling_and_old_cards_mean(tmp_path):
    masked = _card(tmp_path / "masked", "masked")
    assert read_card(masked / "model.json")["pooling"] == "masked"
    model, card = model_from_card(masked / "model.json")
    assert model.pooling == "masked" and Classifier(masked, device="cpu").pooling == "masked"
    old = _card(tmp_path / "old", None)  # written before the field existed
    assert "pooling" not in read_card(old / "model.json")
    assert model_from_card(old / "model.json")[0].pooling == "mean" and Classifier(old, device="cpu").pooling == "mean"
    assert model_from_card(_card(tmp_path / "mean", "mean") / "model.json")[0].pooling == "mean"
    # a backbone's pooling changes nothing in the weights: a masked card loads into a fresh head, as --init does
    backbone, _ = model_from_card(masked / "model.json", num_classes=4, reset_head=True)
    assert backbone.head.out_features == 4
    with pytest.raises(ValueError, match="pooling must be one of"):
        _card(tmp_path / "bad", "attention")
    stft = tmp_path / "stft"  # a hand-made card claiming masked pooling for a 2-D model: refused on reading
    stft.mkdir()
    save_weights(create_model("resnet18_preact_2d_stft", num_classes=4, width=WIDTH).state_dict(), stft / "best.safetensors")
    write_card(stft / "model.json", stft / "best.safetensors", architecture="resnet18_preact_2d_stft", width=WIDTH,
               num_classes=4, fs=100.0, normalization={"mean": 0.0, "std": 0.25}, task="cinc2017", pooling="masked")
    with pytest.raises(DataError, match="pooling=masked applies to 1-D models"):
        model_from_card(stft / "model.json")


def _manual_probabilities(clf: Classifier, signals, fs) -> np.ndarray:
    """Record by record: the card's windows, each with the samples that are the record's, through model(x, valid)."""
    out = []
    for x in clf.preprocess(signals, fs):
        starts = clf.input_starts(len(x))
        windows = torch.from_numpy(np.stack([take_window(x, int(s), clf.input_samples) for s in starts]))[:, None]
        valid = torch.tensor([window_valid_range(len(x), int(s), clf.input_samples) for s in starts])
        with torch.no_grad():
            probs = torch.softmax(clf.model(windows, valid), dim=1).double().mean(0)
        out.append(probs.numpy())
    return np.stack(out)


@pytest.mark.parametrize("input_mode", ["crop", "paper"])
def test_classifier_of_a_masked_card_gives_the_manual_masked_probabilities(tmp_path, input_mode):
    rng = np.random.default_rng(4)
    signals = [rng.standard_normal(n) * 0.3 for n in (900, 3000, 6100, 2000)]  # 9-61 s at 100 Hz: short ones are padded
    masked = Classifier(_card(tmp_path / "masked", "masked", input_mode), device="cpu", batch_size=3)
    probs = masked.predict_proba(signals, 100.0)
    np.testing.assert_allclose(probs, _manual_probabilities(masked, signals, 100.0), rtol=1e-5, atol=1e-6)
    mean = Classifier(_card(tmp_path / "mean", None, input_mode), device="cpu", batch_size=3)  # the same weights, old card
    plain = mean.predict_proba(signals, 100.0)
    assert not np.allclose(plain[0], probs[0], atol=1e-4)  # a padded record: the pooling matters
    if input_mode == "crop":  # the 61 s record has no padded window: both poolings agree on it
        np.testing.assert_allclose(plain[2], probs[2], rtol=1e-5, atol=1e-6)


def test_gpu_batching_logic_with_masked_pooling_runs_on_the_cpu(tmp_path):
    """Buffers in rotation and the last batch padded to full size (the CUDA plan), the conv2d layout, bf16 autocast."""
    from ecgtl.evaluate.inference import BatchRunner, InferencePlan

    rng = np.random.default_rng(5)
    signals = [rng.standard_normal(n) * 0.3 for n in (900, 3000, 500, 2000, 1100, 700, 4000)]
    clf = Classifier(_card(tmp_path / "masked", "masked"), device="cpu", conv_layout="2d")
    assert clf.model.conv2d_layout
    reference = _manual_probabilities(clf, signals, 100.0)

    def run(amp_dtype):
        plan = InferencePlan(device=torch.device("cpu"), batch_size=4, amp_dtype=amp_dtype, pin_memory=False, buffers=2,
                             cudnn_benchmark=False, pad_last=True)
        runner = BatchRunner(clf.model, clf.input_samples, plan)
        assert runner.masked  # the model's own pooling
        for x in clf.preprocess(signals, 100.0):
            runner.add(x, clf.input_starts(x.shape[0]))
        assert runner.batches >= 2
        return clf.probabilities(runner)

    np.testing.assert_allclose(run(None), reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(torch.bfloat16), reference, atol=0.05, rtol=0)


class _OtherDataset(torch.utils.data.Dataset):
    """A dataset the fast path does not know: it goes through a DataLoader."""

    def __init__(self, base, with_valid=True):
        self.base = base
        if with_valid:
            self.valid_range = base.valid_range

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i]


def test_predict_dataset_uses_the_models_pooling_on_both_paths():
    signals = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((500, 2048, 3000))]
    model = _model(pooling="masked")
    assert model_pooling(torch.compile(model, backend="eager")) == "masked"  # seen through wrappers
    ds = inference_dataset(signals, "paper", 1024, 512, 2048)
    assert isinstance(ds, RecordIndexDataset)
    fast = predict_dataset(model, ds, 2, torch.device("cpu"))
    slow = predict_dataset(model, _OtherDataset(ds), 2, torch.device("cpu"))
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    manual = []
    for x in signals:
        w = torch.from_numpy(take_window(x, len(x) - 2048, 2048))[None, None]
        with torch.no_grad():
            manual.append(torch.softmax(model(w, torch.tensor([window_valid_range(len(x), len(x) - 2048, 2048)])), 1)[0].numpy())
    np.testing.assert_allclose(fast, np.stack(manual), rtol=1e-5, atol=1e-6)
    as_mean = predict_dataset(model, ds, 2, torch.device("cpu"), pooling="mean")
    assert not np.allclose(as_mean[0], fast[0], atol=1e-4)
    with pytest.raises(ConfigError, match="valid_range"):
        predict_dataset(model, _OtherDataset(ds, with_valid=False), 2, torch.device("cpu"))
    windows = inference_dataset(signals, "crop", 1024, 512, 2048)
    assert [window_starts(len(s), 1024, 512).size for s in signals] == np.bincount(windows.record_index).tolist()
    per_window = predict_dataset(model, _OtherDataset(windows), 4, torch.device("cpu"))  # one row per window there
    np.testing.assert_allclose(predict_dataset(model, windows, 4, torch.device("cpu")),
                               aggregate_windows(per_window, windows.record_index), rtol=1e-5, atol=1e-6)


def test_export_of_a_masked_model_takes_the_valid_ranges(tmp_path):
    from ecgtl.evaluate.commands import run_export

    card = _card(tmp_path / "masked", "masked")
    result = run_export(str(card), str(tmp_path / "model.onnx"))
    assert result["same_predictions"] and result["max_abs_logit_difference"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ecg", "valid"]
    assert session.get_modelmeta().custom_metadata_map["pooling"] == "masked"
    clf = Classifier(card, device="cpu")
    x = np.zeros((2, 1, 1500), np.float32)
    x[0, 0, 600:] = np.random.default_rng(0).standard_normal(900)
    x[1, 0] = np.random.default_rng(1).standard_normal(1500)
    valid = np.array([[600, 1500], [0, 1500]], np.int64)
    with torch.no_grad():
        ref = clf.model(torch.from_numpy(x), torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(session.run(None, {"ecg": x, "valid": valid})[0], ref, rtol=1e-4, atol=1e-4)
    mean_card = _card(tmp_path / "mean", None)  # a mean model keeps its one input
    run_export(str(mean_card), str(tmp_path / "mean.onnx"))
    session = ort.InferenceSession(str(tmp_path / "mean.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ecg"]


def test_export_of_a_max_pooling_model_keeps_one_input_and_its_outputs(tmp_path):
    from ecgtl.evaluate.commands import run_export

    card = _card(tmp_path / "max", "max")
    result = run_export(str(card), str(tmp_path / "max.onnx"))
    assert result["same_predictions"] and result["max_abs_logit_difference"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "max.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ecg"]
    assert session.get_modelmeta().custom_metadata_map["pooling"] == "max"
    x = np.random.default_rng(2).standard_normal((2, 1, 1500)).astype(np.float32)
    clf = Classifier(card, device="cpu")
    with torch.no_grad():
        ref = clf.model(torch.from_numpy(x)).numpy()
        mean_ref = clf.model.head(clf.model.forward_feature_maps(torch.from_numpy(x)).mean(-1)).numpy()
    out = session.run(None, {"ecg": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out, mean_ref, atol=1e-3)  # the export pools with max, not the mean


def test_a_stride4_stem_card_loads_classifies_and_exports_with_its_stride(tmp_path):
    """resnet18_preact_stem4 travels by its architecture name: the card, Classifier and ONNX pool at stride 64."""
    from ecgtl.evaluate.commands import run_export

    card = _card(tmp_path / "stem4", "masked", architecture="resnet18_preact_stem4")
    clf = Classifier(card, device="cpu")
    assert clf.model.model_name == "resnet18_preact_stem4" and clf.model.feature_stride == 64
    result = run_export(str(card), str(tmp_path / "stem4.onnx"))
    assert result["same_predictions"] and result["max_abs_logit_difference"] < 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "stem4.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 1500), np.float32)
    x[0, 0, 700:] = np.random.default_rng(2).standard_normal(800)
    valid = np.array([[700, 1500]], np.int64)
    with torch.no_grad():
        ref = clf.model(torch.from_numpy(x), torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(session.run(None, {"ecg": x, "valid": valid})[0], ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- config and fine-tuning
def test_config_pooling_is_mean_masked_or_max_and_masked_needs_a_1d_model(tmp_path):
    assert load_config(FinetuneConfig, "cpu", "finetune", []).pooling == "mean"  # the presets as they were
    assert load_config(FinetuneConfig, "paper", "finetune", []).pooling == "mean"
    assert load_config(FinetuneConfig, "cpu", "finetune", ["pooling=masked"]).pooling == "masked"
    assert load_config(FinetuneConfig, "cpu", "finetune", ["pooling=max", "model.name=resnet18v2_2d_stft"]).pooling == "max"
    with pytest.raises(ConfigError, match="pooling must be one of mean, masked, max"):
        load_config(FinetuneConfig, "cpu", "finetune", ["pooling=sum"])
    for name in ("resnet18_preact_2d", "resnet18v2_2d_stft", "resnet18_2d"):
        with pytest.raises(ConfigError, match="pooling=masked applies to 1-D models"):
            load_config(FinetuneConfig, "cpu", "finetune", ["pooling=masked", f"model.name={name}"])
    load_config(FinetuneConfig, "cpu", "finetune", ["model.name=resnet18v2_2d_stft"])  # mean pooling: fine


def test_build_model_sets_the_pooling_and_keeps_init_from_a_backbone(tmp_path):
    from ecgtl.train.finetune import build_model

    def cfg(*extra):
        return load_config(FinetuneConfig, "cpu", "finetune", [f"out={tmp_path}", f"model.width={WIDTH}", *extra])

    assert build_model(cfg())[0].pooling == "mean"
    assert build_model(cfg("pooling=masked"))[0].pooling == "masked"
    backbone = create_model("resnet18_preact", num_classes=5, width=WIDTH)  # a pretext model: mean pooling, no field
    save_weights(backbone.state_dict(), tmp_path / "backbone.safetensors")
    write_card(tmp_path / "backbone.json", tmp_path / "backbone.safetensors", architecture="resnet18_preact", width=WIDTH,
               num_classes=5, fs=125.0, normalization={"mean": 0.0, "std": 1.0}, task="beat")
    model, _ = build_model(cfg("pooling=masked", f"init={tmp_path / 'backbone.json'}"))
    assert model.pooling == "masked" and model.head.out_features == 4
    for k, v in backbone.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.state_dict()[k], v), k
    stft = create_model("resnet18_preact_2d_stft", num_classes=5, width=WIDTH)
    save_weights(stft.state_dict(), tmp_path / "stft.safetensors")
    write_card(tmp_path / "stft.json", tmp_path / "stft.safetensors", architecture="resnet18_preact_2d_stft", width=WIDTH,
               num_classes=5, fs=125.0, normalization={"mean": 0.0, "std": 1.0}, task="beat")
    with pytest.raises(ConfigError, match="pooling=masked applies to 1-D models"):
        build_model(cfg("pooling=masked", f"init={tmp_path / 'stft.json'}"))


@pytest.mark.parametrize("pooling", ["mean", "masked"])
def test_training_steps_and_validation_give_the_model_the_valid_ranges(tmp_path, pooling):
    from ecgtl.data.transforms import Normalization
    from ecgtl.train.finetune import FinetuneData, make_trainer

    cfg = load_config(FinetuneConfig, "cpu", "finetune", [f"pooling={pooling}", "fs=50", "crop_seconds=20.48", "hop_seconds=10.24",
                                                          f"model.width={WIDTH}", "epochs=1", "batch_size=4", f"out={tmp_path}",
                                                          "optim.warmup_epochs=0"])
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(n).astype(np.float32) for n in (600, 1500, 1024, 800)]  # 12-30 s at 50 Hz; inputs 1,024
    names, labels = ["a", "b", "c", "d"], np.array([0, 1, 2, 3])
    data = FinetuneData(splits={"train": names, "val": names, "test": []}, train_names=names, normalization=Normalization(0.0, 1.0),
                        signals={"train": signals, "val": signals, "test": []}, labels={"train": labels, "val": labels, "test": labels[:0]})
    model = create_model("resnet18_preact", num_classes=4, width=WIDTH, pooling=pooling)
    seen = []
    pool = model.forward_features

    def spy(x, valid=None):
        seen.append(None if valid is None else sorted(map(tuple, valid.tolist())))
        return pool(x, valid)

    model.forward_features = spy
    trainer = make_trainer(cfg, data, model, torch.device("cpu"), tmp_path, progress=False)
    loss, n = trainer.step_fn(model, next(iter(trainer.make_batches(0))))
    assert n == 4 and torch.isfinite(loss)
    trainer.evaluate(model, 0)
    if pooling == "mean":
        assert seen == [None, None]  # the study's pooling: the model is called as before
    else:  # training crops, then the validation windows (the 30 s record has two)
        assert seen == [[(0, 1024), (0, 1024), (224, 1024), (424, 1024)],
                        [(0, 1024), (0, 1024), (0, 1024), (224, 1024), (424, 1024)]]


N_RECORDS = 48


@pytest.fixture(scope="module")
def small_cinc(shared_data, tmp_path_factory):
    """48 real CinC 2017 records (18-60 s) in the CinC layout, and a split file of 32 / 8 / 8 of them."""
    out = tmp_path_factory.mktemp("cinc") / "training2017"
    out.mkdir()
    names = write_cinc_subset(shared_data, out, N_RECORDS, "REFERENCE-v3.csv")
    splits = out.parent / "splits.json"
    save_splits(splits, {"train": names[:32], "val": names[32:40], "test": names[40:]}, note="test_pooling")
    return out, splits


def test_tiny_finetune_with_masked_pooling_end_to_end(small_cinc, tmp_path):
    folder, splits = small_cinc
    out = tmp_path / "run"
    # 40.96 s inputs at 50 Hz: the 30 s records are a quarter padding, the 60 s ones two windows
    sets = ["pooling=masked", f"splits={splits}", "fs=50", "crop_seconds=40.96", "hop_seconds=20.48", f"model.width={WIDTH}",
            "epochs=2", "batch_size=16", "eval_batch_size=16", "bootstrap=0", "optim.warmup_epochs=0", "calibrate=true"]
    argv = ["finetune", "--data", str(folder), "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert cli(argv) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["pooling"] == "masked" and card["config"]["pooling"] == "masked" and card["window_samples"] == 2048
    # the run's test predictions are the Classifier's (evaluate / predict) on the same records
    clf = Classifier(out, device="cpu")
    assert clf.pooling == "masked" and clf.model.pooling == "masked"
    from ecgtl.data.cinc2017 import Cinc2017

    test_names = json.loads(splits.read_text())["splits"]["test"]
    records, _ = Cinc2017(folder).read_all(progress=False, names=test_names)
    probs = clf.predict_proba([r.signal for r in records], [r.fs for r in records])
    import csv

    with open(out / "predictions_test.csv") as fh:
        rows = {r["record"]: r for r in csv.DictReader(fh)}
    written = np.array([[float(rows[r.name][f"p_{c}"]) for c in CINC_CLASSES] for r in records])
    np.testing.assert_allclose(probs, written, atol=2e-5)
    # and they are the masked ones: the same weights as a mean-pooling model give other probabilities
    short = next(i for i, r in enumerate(records) if len(r.signal) / r.fs < 40.96)
    clf.pooling = "mean"
    assert not np.allclose(clf.predict_proba([records[short].signal], records[short].fs)[0], probs[short], atol=1e-4)
    # export, checked on real records (front-padded to the window, with their valid ranges)
    from ecgtl.evaluate.commands import run_export

    result = run_export(str(out), str(tmp_path / "model.onnx"), verify_data=str(folder), verify_records=8)
    assert result["same_predictions"] and result["max_abs_logit_difference"] < 1e-3 and "real records" in result["checked_on"]
