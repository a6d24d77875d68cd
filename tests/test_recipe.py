"""Pieces of the fine-tuning recipe on their own: augmentation of ECG crops and class-bias calibration."""

from __future__ import annotations

import numpy as np
import pytest

from ecgtl.data.augment import EcgAugment
from ecgtl.evaluate.calibration import apply_class_bias, fit_class_bias
from ecgtl.evaluate.metrics import macro_f1

FS = 125.0


def _ecg(seconds=30, seed=0):
    """A spiky ECG-like signal: one 'QRS' a second, normalised to std 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, int(seconds * FS)).astype(np.float32)
    x[:: int(FS)] += 8
    return (x - x.mean()) / x.std()


def test_all_zero_is_the_identity_and_draws_nothing():
    aug, x = EcgAugment(fs=FS), _ecg()
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    assert not aug.active
    np.testing.assert_array_equal(aug(aug.stretch_record(x, rng), rng), x)
    assert rng.bit_generator.state == state


def test_same_generator_state_same_augmentation():
    aug, x = EcgAugment(fs=FS, scale=0.2, flip=0.5, wander=0.5, noise=0.1, stretch=0.1), _ecg()
    a = aug(aug.stretch_record(x, np.random.default_rng(3)), np.random.default_rng(4))
    b = aug(aug.stretch_record(x, np.random.default_rng(3)), np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


def test_each_augmentation_does_what_it_says():
    x, rng = _ecg(), np.random.default_rng(0)
    scales = [np.abs(EcgAugment(fs=FS, scale=0.2)(x, rng)).max() / np.abs(x).max() for _ in range(200)]
    assert 0.8 <= min(scales) < 0.85 and 1.15 < max(scales) <= 1.2
    flips = [EcgAugment(fs=FS, flip=0.3)(x, rng)[0] * x[0] < 0 for _ in range(2000)]
    assert 0.25 < np.mean(flips) < 0.35
    wandered = EcgAugment(fs=FS, wander=1.0)(x, rng) - x
    spectrum = np.abs(np.fft.rfft(wandered))
    freqs = np.fft.rfftfreq(len(wandered), 1 / FS)
    assert freqs[spectrum.argmax()] <= 0.55 and np.abs(wandered).max() <= 1.0 + 1e-6  # slow, bounded
    noisy = [np.std(EcgAugment(fs=FS, noise=0.3)(x, rng) - x) for _ in range(200)]
    assert max(noisy) < 0.32 and np.mean(noisy) == pytest.approx(0.15, abs=0.03)
    lengths = [len(EcgAugment(fs=FS, stretch=0.1).stretch_record(x, rng)) / len(x) for _ in range(200)]
    assert 0.9 <= min(lengths) < 0.92 and 1.08 < max(lengths) <= 1.1


@pytest.mark.parametrize("bad", [{"scale": 1.0}, {"flip": 1.5}, {"noise": -0.1}, {"stretch": -0.1}, {"fs": 0.0}])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "fs" not in bad else "fs"):
        EcgAugment(**{"fs": FS, **bad})


def _imbalanced(n, seed):
    """Probabilities of an imbalanced 4-class problem whose argmax is not the macro-F1-best decision."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, n, p=[0.6, 0.1, 0.27, 0.03])
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 1.6
    logits[:, 3] -= 1.2
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def test_class_bias_fitted_on_validation_raises_macro_f1_on_other_records():
    val_p, val_y = _imbalanced(3000, 0)
    test_p, test_y = _imbalanced(3000, 1)
    bias, fitted = fit_class_bias(val_p, val_y)
    before_val, before_test = macro_f1(val_y, val_p.argmax(1), 4), macro_f1(test_y, test_p.argmax(1), 4)
    after_test = macro_f1(test_y, apply_class_bias(test_p, bias), 4)
    assert bias[0] == 0 and bias.any()  # class 0 is the reference
    assert fitted > before_val + 0.02 and after_test > before_test + 0.01  # and it carries over to unseen records


def test_a_calibrated_model_keeps_zero_biases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    p = np.full((400, 4), 0.1)
    p[np.arange(400), y] = 0.7  # already perfect: nothing to gain
    bias, score = fit_class_bias(p, y)
    assert score == 1.0 and not bias.any()


def test_crop_dataset_augments_reproducibly_and_only_when_asked():
    from ecgtl.data.cinc_dataset import CincCropDataset

    signals = [_ecg(20, seed=s) for s in range(4)]
    plain = CincCropDataset(signals, ["N", "A", "O", "~"], crop_samples=1000, seed=3, augment=EcgAugment(fs=FS))
    assert plain.augment is None  # all-zero augmentation: the plain crops, same random stream
    reference = CincCropDataset(signals, ["N", "A", "O", "~"], crop_samples=1000, seed=3)
    assert all(torch_equal(plain[i][0], reference[i][0]) for i in range(4))
    aug = CincCropDataset(signals, ["N", "A", "O", "~"], crop_samples=1000, seed=3,
                          augment=EcgAugment(fs=FS, scale=0.2, noise=0.1, wander=0.3, stretch=0.1))
    a, b = aug[2], aug[2]
    assert a[1] == 2 and a[0].shape == (1, 1000) and torch_equal(a[0], b[0])  # same (seed, epoch, item): same input
    assert not torch_equal(a[0], reference[2][0])
    aug.set_epoch(1)
    assert not torch_equal(aug[2][0], a[0])  # a new epoch draws new augmentations


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_shift_moves_front_padding_behind_a_short_record():
    """``augment.shift``: a record shorter than the crop no longer always ends at its last sample; ``valid`` follows."""
    from ecgtl.data.cinc_dataset import CincCropDataset

    x = _ecg(2) + 5.0  # 2 s, never zero: padding and record are told apart
    n, crop = len(x), 1000
    aug = EcgAugment(fs=FS, shift=1.5)
    ds = CincCropDataset([x] * 300, ["N"] * 300, crop_samples=crop, seed=0, augment=aug, return_valid=True)
    moved = []
    for i in range(300):
        item, _, valid = ds[i]
        item = item.numpy()[0]
        lo, hi = int(valid[0]), int(valid[1])
        assert hi - lo == n and (item[:lo] == 0).all() and (item[hi:] == 0).all()  # only zeros outside valid
        np.testing.assert_array_equal(item[lo:hi], x)  # the record itself, unchanged
        moved.append(crop - hi)
    most = min(crop - n, round(1.5 * FS))
    assert min(moved) == 0 and max(moved) == most and len(set(moved)) > most // 2  # uniform over [0, most]
    rng = np.random.default_rng(0)
    assert EcgAugment(fs=FS, shift=1.0).draw_shift(0, rng) == 0  # no padding (a long record): nothing moves
    state = rng.bit_generator.state
    assert EcgAugment(fs=FS).draw_shift(500, rng) == 0 and rng.bit_generator.state == state  # off: no number drawn
    with pytest.raises(ValueError, match="augment.shift"):
        EcgAugment(fs=FS, shift=-1.0)
