"""``scripts/mixed_ensembles.py``: members combined as mean probabilities vs geometric mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from script_loader import load_script


@pytest.fixture(scope="module")
def mixed():
    return load_script("mixed_ensembles")


# one record, two members: the mean of probabilities says N (0.4905 vs 0.305), the geometric mean
# says A (one member gives N only 0.001, which a product punishes and a sum does not)
M1 = np.array([[0.98, 0.01, 0.005, 0.005]])
M2 = np.array([[0.001, 0.6, 0.394, 0.005]])


def test_the_geometric_mean_can_overrule_one_confident_member(mixed):
    assert np.mean([M1, M2], axis=0).argmax(1).tolist() == [0]
    assert mixed.geometric_labels([M1, M2]).tolist() == [1]
    # zeros are clipped, not -inf: a member with a 0 probability still leaves a finite score
    assert mixed.geometric_labels([np.array([[0.0, 1.0, 0.0, 0.0]]), np.array([[0.5, 0.5, 0.0, 0.0]])]).tolist() == [1]


def test_the_combination_table_scores_each_variant_with_two_or_more_members(mixed):
    y = np.array([1, 0, 0, 1, 2, 3, 2, 3])
    good = np.eye(4)[y] * 0.9 + 0.025
    wrong_first = good.copy()
    wrong_first[0] = M1[0]  # member 1 puts record 0 (label A) in N, confidently
    second = good.copy()
    second[0] = M2[0]
    runs = {"v": [Path("v-seed0"), Path("v-seed1")], "single": [Path("single-seed0")]}
    read = {Path("v-seed0"): (None, y, wrong_first), Path("v-seed1"): (None, y, second), Path("single-seed0"): (None, y, good)}
    lines = mixed.combination_table(runs, read, y)
    rows = [line for line in lines if line.startswith("| v |")]
    assert len(rows) == 1 and not any(line.startswith("| single |") for line in lines)  # one member: nothing to combine
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "2"
    arith, geo = float(cells[2]), float(cells[3])
    assert geo == 1.0 and arith < 1.0  # the geometric mean gets record 0 right, the mean of probabilities does not
    assert cells[4].startswith("+")
    assert lines[-1].startswith("Over the 1 variants") and "higher for 1, lower for 0" in lines[-1]
