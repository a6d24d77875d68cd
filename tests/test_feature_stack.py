"""``scripts/feature_stack.py``: the hand-made features of a record (rhythm from detected beats, signal quality)."""

from __future__ import annotations

import numpy as np
import pytest

from script_loader import load_script


@pytest.fixture(scope="module")
def fs_mod():
    return load_script("feature_stack")


def _ecg(beat_times_s: np.ndarray, fs: float = 300.0, seconds: float = 30.0) -> np.ndarray:
    """Narrow QRS-like spikes (1 mV, 20 ms wide) at ``beat_times_s`` on a quiet baseline."""
    t = np.arange(int(seconds * fs)) / fs
    x = np.zeros_like(t)
    for b in beat_times_s:
        x += np.exp(-0.5 * ((t - b) / 0.008) ** 2) - 0.3 * np.exp(-0.5 * ((t - b - 0.03) / 0.01) ** 2)
    return x + 0.01 * np.random.default_rng(0).standard_normal(t.size)


def test_regular_and_irregular_rhythms_differ_in_rr_features(fs_mod):
    names = fs_mod.FEATURES
    regular = dict(zip(names, fs_mod.record_features(_ecg(np.arange(0.5, 29.5, 0.8)), 300.0)))
    rng = np.random.default_rng(1)
    irregular = dict(zip(names, fs_mod.record_features(_ecg(np.cumsum(rng.uniform(0.45, 1.15, 40))[:38]), 300.0)))
    assert len(fs_mod.FEATURES) == 14 and regular["duration_s"] == pytest.approx(30.0)
    assert regular["beats_per_s"] == pytest.approx(1 / 0.8, rel=0.1)
    assert regular["rr_median_s"] == pytest.approx(0.8, abs=0.02)
    assert regular["rr_cv"] < 0.05 and regular["rr_outlier_share"] == 0.0
    assert irregular["rr_cv"] > 0.15 and irregular["pnn50"] > 0.5 and irregular["rr_outlier_share"] > 0.2


def test_a_flat_record_gives_zero_rhythm_figures_and_full_flat_share(fs_mod):
    f = dict(zip(fs_mod.FEATURES, fs_mod.record_features(np.zeros(3000), 300.0)))
    assert f["beats_per_s"] == 0.0 and f["rr_cv"] == 0.0 and f["flat_share"] == 1.0 and f["amplitude_mv"] == 0.0
    assert all(np.isfinite(v) for v in f.values())
