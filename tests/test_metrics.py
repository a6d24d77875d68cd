"""Tests of ecgtl.evaluate.metrics: hand-computed cases, agreement with scikit-learn, bootstrap."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn import metrics as skm

from ecgtl.constants import CINC_CLASSES
from ecgtl.evaluate.metrics import (
    UndefinedMetricWarning,
    accuracy,
    auroc,
    bootstrap_ci,
    bootstrap_difference_ci,
    challenge_f1,
    classification_report,
    confusion_matrix,
    f1_per_class,
    fmt,
    format_report,
    macro_f1,
)

K = len(CINC_CLASSES)
SEEDS = [0, 1, 2, 3, 4]

# A confusion matrix written out by hand (rows = true, cols = predicted), n = 20:
#
#   true \ pred   N   A   O   ~  | row total
#   N             5   0   1   0  |  6
#   A             1   3   0   0  |  4
#   O             1   1   4   1  |  7
#   ~             0   0   1   2  |  3
#   col total     7   4   6   3  | 20
#
# F1_k = 2 C[k,k] / (row_k + col_k)   (official CinC 2017 scorer: F1n = 2*Nn / (sum(Nx) + sum(xN)))
#   N: 2*5 / (6 + 7) = 10/13     A: 2*3 / (4 + 4) = 3/4
#   O: 2*4 / (7 + 6) =  8/13     ~: 2*2 / (3 + 3) = 2/3
# macro-F1     = (10/13 + 3/4 + 8/13 + 2/3) / 4
# challenge F1 = (10/13 + 3/4 + 8/13) / 3 = 37/52
# accuracy     = (5 + 3 + 4 + 2) / 20 = 7/10
HAND_CM = np.array([[5, 0, 1, 0], [1, 3, 0, 0], [1, 1, 4, 1], [0, 0, 1, 2]])
HAND_F1 = [Fraction(10, 13), Fraction(3, 4), Fraction(8, 13), Fraction(2, 3)]


def labels_from_confusion(cm: np.ndarray) -> tuple[list[int], list[int]]:
    y_true, y_pred = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            y_true += [i] * int(cm[i, j])
            y_pred += [j] * int(cm[i, j])
    return y_true, y_pred


def random_case(seed: int, n: int = 300, absent_pred: int | None = None, absent_true: int | None = None):
    """CinC-like class mix, probabilities that are informative but imperfect (with some ties)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(K, size=n, p=[0.59, 0.09, 0.28, 0.04])
    if absent_true is not None:
        y[y == absent_true] = (absent_true + 1) % K
    logits = rng.normal(size=(n, K))
    logits[np.arange(n), y] += 1.5
    logits = np.round(logits, 1)  # ties in the scores, to exercise the AUROC tie rule
    if absent_pred is not None:
        logits[:, absent_pred] = -np.inf  # this class is never predicted
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs, probs.argmax(axis=1)


# --------------------------------------------------------------------------- hand-computed


def test_hand_confusion_matrix_and_f1s():
    y_true, y_pred = labels_from_confusion(HAND_CM)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), HAND_CM)
    np.testing.assert_allclose(f1_per_class(y_true, y_pred, K), [float(f) for f in HAND_F1], rtol=0, atol=1e-15)
    assert macro_f1(y_true, y_pred) == pytest.approx(float(sum(HAND_F1) / 4), abs=1e-15)
    assert challenge_f1(y_true, y_pred) == pytest.approx(float(Fraction(37, 52)), abs=1e-15)
    assert accuracy(y_true, y_pred) == pytest.approx(0.7, abs=1e-15)


def test_official_formula_equals_precision_recall_f1():
    # 2 TP / (row total + column total) == 2 P R / (P + R), class by class.
    y_true, y_pred = labels_from_confusion(HAND_CM)
    f1 = f1_per_class(y_true, y_pred, K)
    for k in range(K):
        tp = HAND_CM[k, k]
        precision = Fraction(int(tp), int(HAND_CM[:, k].sum()))
        recall = Fraction(int(tp), int(HAND_CM[k, :].sum()))
        official = Fraction(2 * int(tp), int(HAND_CM[k, :].sum() + HAND_CM[:, k].sum()))
        assert official == 2 * precision * recall / (precision + recall) == HAND_F1[k]
        assert f1[k] == pytest.approx(float(official), abs=1e-15)


def test_hand_absent_classes_follow_zero_division():
    # true [0, 0, 1, 1], pred [0, 1, 1, 1]; classes 2 and 3 are neither true nor predicted:
    #   F1_0 = 2*1/(2+1) = 2/3, F1_1 = 2*2/(2+3) = 4/5, F1_2 = F1_3 = 0/0 -> zero_division
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    np.testing.assert_allclose(f1_per_class(y_true, y_pred), [2 / 3, 4 / 5, 0, 0])
    assert macro_f1(y_true, y_pred) == pytest.approx((2 / 3 + 4 / 5) / 4)
    np.testing.assert_allclose(f1_per_class(y_true, y_pred, zero_division=1.0), [2 / 3, 4 / 5, 1, 1])
    np.testing.assert_allclose(f1_per_class(y_true, y_pred, zero_division=np.nan), [2 / 3, 4 / 5, np.nan, np.nan])
    assert macro_f1(y_true, y_pred, zero_division=np.nan) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # A class that is true but never predicted (or predicted, never true) is plainly 0.
    assert f1_per_class([0, 2], [0, 0], zero_division=1.0)[2] == 0.0
    assert f1_per_class([0, 0], [0, 2], zero_division=1.0)[2] == 0.0


def test_hand_auroc_with_ties():
    # positives score 0.9 and 0.5, negatives 0.5 and 0.1: pairs won 1 + 1 + 1/2 + 1 of 4 -> 7/8.
    y = [1, 1, 0, 0]
    s = np.array([0.9, 0.5, 0.5, 0.1])
    probs = np.stack([1 - s, s], axis=1)
    np.testing.assert_allclose(auroc(y, probs), [7 / 8, 7 / 8])


# --------------------------------------------------------------------------- against scikit-learn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("absent_pred", [None, 1, 3])
def test_matches_sklearn_on_random_data(seed, absent_pred):
    y, _, y_pred = random_case(seed, absent_pred=absent_pred)
    if absent_pred is not None:
        assert absent_pred not in set(y_pred.tolist())
    labels = list(range(K))
    np.testing.assert_array_equal(confusion_matrix(y, y_pred), skm.confusion_matrix(y, y_pred, labels=labels))
    np.testing.assert_allclose(
        f1_per_class(y, y_pred, K), skm.f1_score(y, y_pred, labels=labels, average=None, zero_division=0), atol=1e-12
    )
    assert macro_f1(y, y_pred) == pytest.approx(
        skm.f1_score(y, y_pred, labels=labels, average="macro", zero_division=0), abs=1e-12
    )
    assert accuracy(y, y_pred) == pytest.approx(skm.accuracy_score(y, y_pred), abs=1e-12)


@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_zero_division_matches_sklearn(seed, zero_division):
    # Class 3 neither true nor predicted: the case zero_division decides.
    y, _, y_pred = random_case(seed, n=60, absent_pred=3, absent_true=3)
    labels = list(range(K))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.f1_score(y, y_pred, labels=labels, average=None, zero_division=zero_division)
        expected_macro = skm.f1_score(y, y_pred, labels=labels, average="macro", zero_division=zero_division)
    np.testing.assert_allclose(f1_per_class(y, y_pred, K, zero_division=zero_division), expected, atol=1e-12)
    assert macro_f1(y, y_pred, K, zero_division=zero_division) == pytest.approx(expected_macro, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_matches_sklearn(seed):
    y, probs, _ = random_case(seed)
    got = auroc(y, probs)
    expected = [skm.roc_auc_score(y == k, probs[:, k]) for k in range(K)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # and the multi-class one-vs-rest form of scikit-learn
    np.testing.assert_allclose(got, skm.roc_auc_score(y, probs, multi_class="ovr", average=None), atol=1e-12)


def test_auroc_nan_with_reason_for_absent_class():
    y, probs, _ = random_case(0, absent_true=3)
    with pytest.warns(UndefinedMetricWarning, match=r"class '~'.*no record of this class"):
        got = auroc(y, probs, class_names=CINC_CLASSES)
    assert np.isnan(got[3]) and not np.isnan(got[:3]).any()
    np.testing.assert_allclose(got[:3], [skm.roc_auc_score(y == k, probs[:, k]) for k in range(3)], atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_challenge_f1_is_mean_of_n_a_o(seed):
    y, _, y_pred = random_case(seed)
    assert challenge_f1(y, y_pred) == pytest.approx(np.mean(f1_per_class(y, y_pred, K)[:3]), abs=1e-15)
    expected = skm.f1_score(y, y_pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert challenge_f1(y, y_pred) == pytest.approx(expected, abs=1e-12)


def test_accepts_lists_arrays_and_integral_floats():
    y_true, y_pred = labels_from_confusion(HAND_CM)
    expected = macro_f1(y_true, y_pred)
    assert macro_f1(np.array(y_true, dtype=np.int8), np.array(y_pred, dtype=np.float32)) == expected
    assert macro_f1(tuple(y_true), np.array(y_pred)) == expected


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: macro_f1([0, 1, 2], [0, 1]), "differ in length"),
        (lambda: macro_f1([0, 1, 4], [0, 1, 2]), r"outside 0\.\.3"),
        (lambda: macro_f1([0, -1], [0, 1]), "outside"),
        (lambda: macro_f1([0, 1.5], [0, 1]), "non-integral"),
        (lambda: macro_f1([], []), "empty"),
        (lambda: macro_f1(["N", "A"], [0, 1]), "integer class labels"),
        (lambda: macro_f1([0, 1], np.full((2, 4), 0.25)), "argmax"),
        (lambda: macro_f1([0, 1], [0, 1], num_classes=1), "num_classes"),
        (lambda: macro_f1([0, 1], [0, 1], zero_division=0.5), "zero_division"),
        (lambda: auroc([0, 1], np.full((3, 4), 0.25)), "differ in length"),
        (lambda: auroc([0, 1], np.full(4, 0.25)), "shape"),
        (lambda: auroc([0, 1], np.full((2, 4), 0.5)), "sum to 1"),
        (lambda: auroc([0, 1], np.array([[2.0, -1.0], [0.0, 1.0]])), "logits"),
        (lambda: auroc([0, 5], np.full((2, 4), 0.25)), "outside"),
        (lambda: bootstrap_ci(macro_f1, [0, 1], [0, 1], n_boot=0), "n_boot"),
        (lambda: bootstrap_ci(macro_f1, [0, 1], [0, 1], alpha=1.5), "alpha"),
        (lambda: bootstrap_ci(macro_f1, [0, 1], [0, 1, 2]), "y_pred_or_probs"),
        (lambda: classification_report([0, 1], np.full((2, 3), 1 / 3)), "class names"),
    ],
)
def test_invalid_inputs_raise_clear_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    y, probs, y_pred = random_case(0, n=800)
    for fn in (macro_f1, challenge_f1, accuracy):
        low, high = bootstrap_ci(fn, y, y_pred, n_boot=500, seed=7)
        assert low < fn(y, y_pred) < high
        assert bootstrap_ci(fn, y, y_pred, n_boot=500, seed=7) == (low, high)
        assert bootstrap_ci(fn, y, y_pred, n_boot=500, seed=8) != (low, high)
        # probabilities give the same interval as their argmax labels
        assert bootstrap_ci(fn, y, probs, n_boot=500, seed=7) == (low, high)


def test_bootstrap_ci_shrinks_with_more_data():
    widths = []
    for n in (200, 3200):
        y, _, y_pred = random_case(1, n=n)
        low, high = bootstrap_ci(macro_f1, y, y_pred, n_boot=500)
        widths.append(high - low)
    # the width scales like 1/sqrt(n): 16x the data -> about 1/4 the width
    assert widths[1] < 0.5 * widths[0]


def test_bootstrap_vectorised_path_equals_per_replicate_path():
    y, probs, y_pred = random_case(2, n=400)
    fast = bootstrap_ci(macro_f1, y, y_pred, n_boot=200, seed=3)
    slow = bootstrap_ci(lambda t, p: macro_f1(t, p), y, y_pred, n_boot=200, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)
    # the per-replicate path hands probabilities through, e.g. for AUROC
    low, high = bootstrap_ci(lambda t, p: auroc(t, p)[1], y, probs, n_boot=200, seed=3)
    assert low < auroc(y, probs)[1] < high


def test_bootstrap_leaves_out_nan_replicates_with_one_warning():
    # 50 records of class N and 1 of class ~: many resamples miss the ~ record, so its AUROC is NaN there.
    y = np.array([0] * 50 + [3])
    probs = np.full((51, K), 0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low, high = bootstrap_ci(lambda t, p: auroc(t, p)[3], y, probs, n_boot=50)
    assert (low, high) == (0.5, 0.5)  # constant scores: AUROC 1/2 wherever defined
    assert len(caught) == 1 and issubclass(caught[0].category, UndefinedMetricWarning)
    assert "NaN on" in str(caught[0].message)


def test_bootstrap_alpha_sets_the_level():
    y, _, y_pred = random_case(3, n=500)
    low95, high95 = bootstrap_ci(macro_f1, y, y_pred, n_boot=400, alpha=0.05)
    low50, high50 = bootstrap_ci(macro_f1, y, y_pred, n_boot=400, alpha=0.5)
    assert low95 < low50 < high50 < high95


# --------------------------------------------------------------------------- report


def test_classification_report_values_and_json():
    y, probs, y_pred = random_case(5, n=600)
    report = classification_report(y, probs, n_boot=300, seed=1, split="test")
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN, no numpy types
    assert json.loads(text) == report
    assert report["n"] == 600 and report["split"] == "test"
    assert report["classes"] == list(CINC_CLASSES)
    assert report["macro_f1"] == pytest.approx(macro_f1(y, y_pred))
    assert report["challenge_f1"] == pytest.approx(challenge_f1(y, y_pred))
    assert report["accuracy"] == pytest.approx(accuracy(y, y_pred))
    assert list(report["f1"].values()) == pytest.approx(list(f1_per_class(y, y_pred)))
    assert list(report["auroc"].values()) == pytest.approx(list(auroc(y, probs)))
    assert report["confusion_matrix"] == confusion_matrix(y, y_pred).tolist()
    assert list(report["support"].values()) == np.bincount(y, minlength=K).tolist()
    assert report["macro_f1_ci"] == list(bootstrap_ci(macro_f1, y, probs, n_boot=300, seed=1))
    assert report["challenge_f1_ci"] == list(bootstrap_ci(challenge_f1, y, probs, n_boot=300, seed=1))
    assert report["notes"] == []

    text = format_report(report)
    for piece in ("split: test", "macro-F1 (4 classes)", "challenge F1 (N, A, O)", "AUROC", "rows = true"):
        assert piece in text
    assert f"macro-F1 (4 classes)      {fmt(report['macro_f1'], digits=4)}" in text
    # the table cuts like every printed score: a macro-F1 of 0.79306 reads 0.7930, never 0.7931
    shown = format_report({**report, "macro_f1": 0.79306, "macro_f1_ci": [0.75559, 0.82999]})
    assert "0.7930  [0.7555, 0.8299]" in shown and "0.7931" not in shown


def test_classification_report_absent_class_is_json_and_explained():
    y, probs, _ = random_case(6, n=200, absent_pred=3, absent_true=3)
    report = classification_report(y, probs, n_boot=0)
    json.dumps(report, allow_nan=False)
    assert report["auroc"]["~"] is None and report["f1"]["~"] == 0.0
    assert report["macro_f1_ci"] is None and report["challenge_f1_ci"] is None
    assert any("'~'" in note and "AUROC" in note for note in report["notes"])
    assert any("'~'" in note and "zero_division=0" in note for note in report["notes"])
    assert "n/a" in format_report(report)


def test_classification_report_other_class_sets_skip_challenge_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    probs = rng.dirichlet(np.ones(3), size=100)
    report = classification_report(y, probs, class_names=("a", "b", "c"), n_boot=50)
    assert report["challenge_f1"] is None and report["macro_f1_ci"] is not None
    json.dumps(report, allow_nan=False)
    assert "challenge F1 (N, A, O)" not in format_report(report)


def test_paired_bootstrap_difference_matches_a_plain_loop_over_the_same_resamples():
    """metric(a) - metric(b) on each resample of the records, both models on the same resample."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, K, 400)
    a = np.where(rng.random(400) < 0.8, y, rng.integers(0, K, 400))  # about 80% right
    b = np.where(rng.random(400) < 0.85, a, rng.integers(0, K, 400))  # a's errors and more: the two models agree a lot
    got = bootstrap_difference_ci(macro_f1, y, a, b, n_boot=300, seed=5)
    idx = np.random.default_rng(5).integers(0, 400, size=(300, 400))  # the generator's draws for one chunk
    diffs = [macro_f1(y[r], a[r]) - macro_f1(y[r], b[r]) for r in idx]
    np.testing.assert_allclose(got, np.percentile(diffs, [2.5, 97.5]))
    assert got[0] < macro_f1(y, a) - macro_f1(y, b) < got[1] and got[0] > 0  # a is better, and these records show it
    for seed in (5, None):  # a model against itself: every resample is shared, fresh ones too
        assert bootstrap_difference_ci(challenge_f1, y, a, a, n_boot=50, seed=seed) == (0.0, 0.0)
    # paired: narrower than the difference of two independent intervals, whose width is about the root sum of squares
    lo_a, hi_a = bootstrap_ci(macro_f1, y, a, n_boot=300, seed=5)
    lo_b, hi_b = bootstrap_ci(macro_f1, y, b, n_boot=300, seed=5)
    assert got[1] - got[0] < 0.7 * np.hypot(hi_a - lo_a, hi_b - lo_b)  # measured here: 0.062 vs 0.105


def test_paired_bootstrap_difference_refuses_what_it_cannot_do():
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="from_confusion"):
        bootstrap_difference_ci(lambda t, p: 0.0, y, y, y)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_difference_ci(macro_f1, y, y, y[:3])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_difference_ci(macro_f1, y, y, y, n_boot=0)


def test_scores_in_logs_are_cut_never_rounded_up():
    """One formatter for every printed score: 0.79306 shows as 0.7930 (rounding would show 0.7931, a gain that is not there)."""
    from ecgtl.evaluate.metrics import fmt
    from ecgtl.experiments.report import fmt as report_fmt
    from ecgtl.train.engine import _shown

    assert report_fmt is fmt
    assert fmt(0.79306, digits=4) == "0.7930" and fmt(0.99996, digits=4) == "0.9999"
    assert _shown("val_macro_f1", 0.79306) == "0.7930" and _shown("val_auroc_A", 0.99996) == "0.9999"
    assert _shown("val_accuracy", 0.99996) == "0.9999" and _shown("val_majority_accuracy", 0.79306) == "0.7930"
    assert _shown("train_loss", 0.12346) == "0.1235" and _shown("step", 145) == "145"  # losses are not scores


def test_no_score_is_formatted_with_rounding_in_the_sources():
    """A guard over the source text: no f-string in src/ or scripts/ formats an F1, AUROC or accuracy with ``:.Nf``
    (which rounds up); they go through :func:`ecgtl.evaluate.metrics.fmt`. Timings named after a score are not scores."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rounded = re.compile(r"\{([^{}]*(?:f1|auroc|macro|accuracy)[^{}]*):[+ ]?\.\d+f\}", re.IGNORECASE)
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}"
             for folder in ("src", "scripts") for path in sorted((root / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for m in rounded.finditer(line) if "seconds" not in m.group(1)]
    assert not found, "scores formatted with rounding:\n" + "\n".join(found)
    assert rounded.search("{val_f1:.3f}") and rounded.search("{c['macro_f1_cross_fitted']:.4f}")  # the pattern catches them
