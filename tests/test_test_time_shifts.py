"""Test-time shifts (issue 8): a classifier also reads each window some samples later and averages.

Tiny random cards: arithmetic and refusals, not skill."""

from __future__ import annotations

import numpy as np
import pytest

from cinc_subset import tiny_card
from ecgtl.errors import ConfigError
from ecgtl.evaluate.inference import Classifier, check_test_time_shifts

FS = 100.0  # the tiny card's rate; its windows are 1,024 samples, its hop 512


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    """A synthetic ECG-like trace in mV at FS: a 1.2 Hz train of narrow peaks over noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    return (np.exp(-((t % 0.83) - 0.4) ** 2 / 0.0005) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    return tiny_card(tmp_path_factory.mktemp("tts") / "run", fs=FS, seed=3)


def test_no_shift_is_the_plain_classifier_bit_for_bit(card):
    x = [_signal(30), _signal(8, seed=1)]
    np.testing.assert_array_equal(Classifier(card, device="cpu", shifts=[0]).predict_proba(x, FS),
                                  Classifier(card, device="cpu").predict_proba(x, FS))


def test_a_short_record_shifted_reads_as_zeros_appended_after_it(card):
    """A record shorter than the window is zero-padded in front; shifted by k, k of those zeros move behind it."""
    plain = Classifier(card, device="cpu")
    x = plain.preprocess([_signal(7.5)], FS)[0]  # 750 samples < 1,024
    per_shift = []
    for k in (0, 8, 24):
        runner = plain.runner()
        moved = np.concatenate([x, np.zeros(k, x.dtype)])
        runner.add(moved, plain.input_starts(moved.shape[0]))
        per_shift.append(plain.probabilities(runner)[0])
    shifted = Classifier(card, device="cpu", shifts=(0, 8, 24))
    runner = shifted.runner()
    runner.add(x, shifted.input_starts(x.shape[0]))
    np.testing.assert_allclose(shifted.probabilities(runner)[0], np.mean(per_shift, axis=0), atol=1e-6)
    assert np.abs(per_shift[0] - per_shift[1]).max() > 1e-5  # the shift is seen: the test can fail


def test_every_window_of_a_long_record_is_read_at_every_shift(card):
    clf = Classifier(card, device="cpu", shifts=(0, 16))
    base = Classifier(card, device="cpu").input_starts(3000)
    starts = clf.input_starts(3000)
    assert len(starts) == 2 * len(base) and set(starts) == set(base) | set(base + 16)
    runner = clf.runner()
    runner.add(clf.preprocess([_signal(30)], FS)[0], starts)
    assert runner.n_inputs == 2 * len(base)


def test_bad_shifts_are_refused_naming_the_card(card):
    for bad, message in [([], "1 to 64 sample offsets"), (list(range(65)), "1 to 64 sample offsets"),
                         ([0, 1.5], "whole numbers of samples"), ([0, True], "whole numbers of samples"),
                         ([0, 0], "distinct sample offsets"), ([-1], r"in \[0, 1024\)"), ([1024], r"in \[0, 1024\)")]:
        with pytest.raises(ConfigError, match=message):
            Classifier(card, device="cpu", shifts=bad)
    with pytest.raises(ConfigError, match="model.json"):
        check_test_time_shifts([2000], 1024, card / "model.json")


def test_the_paper_input_takes_no_shifts(tmp_path):
    paper = tiny_card(tmp_path / "paper", fs=FS, input_mode="paper")
    with pytest.raises(ConfigError, match=r"model\.json: test-time shifts apply to sliding windows"):
        Classifier(paper, device="cpu", shifts=(0, 8))
    assert Classifier(paper, device="cpu", shifts=(0,)).shifts == (0,)
