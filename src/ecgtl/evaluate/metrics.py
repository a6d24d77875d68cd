"""Classification metrics of the study: 4-class macro-F1, CinC 2017 challenge F1, AUROC, bootstrap CIs.

Labels are integers ``0 .. K-1``; for PhysioNet/CinC 2017 ``K = 4`` in the order of
:data:`ecgtl.constants.CINC_CLASSES` = ``("N", "A", "O", "~")``. Pure numpy: inputs may be
lists, numpy arrays or anything ``np.asarray`` accepts (CPU tensors included).

Conventions (the ones a reader of a results table needs):

* Confusion matrix ``C``: rows = true class, columns = predicted class.
* F1 of class ``k`` is ``2 C[k,k] / (row_k + col_k) = 2 TP / (2 TP + FP + FN)``. This is the
  formula of the official CinC 2017 scorer (``score2017.m``: ``F1n = 2*Nn / (sum(Nx) + sum(xN))``)
  and equals the harmonic mean of precision and recall whenever those are defined.
* ``zero_division``: a class that is neither true nor predicted for any record has ``0 / 0``.
  As in scikit-learn (``f1_score(..., labels=range(K), zero_division=0)``) its F1 is 0 by
  default and it *counts* in the macro mean; ``zero_division=1.0`` gives it 1, and
  ``zero_division=np.nan`` gives NaN and leaves it out of the mean (scikit-learn >= 1.3).
  A class that is predicted but never true (or the reverse) has F1 = 0 whatever the setting.
  On the CinC test splits every class is present, so this only matters for tiny subsets.
* **macro-F1** (the study's headline, Weimann & Conrad 2021): mean F1 of all 4 classes.
  **challenge F1** (official CinC 2017 score): mean F1 of N, A, O; noisy excluded.
  They are different numbers: always report both and name the split.
* AUROC: one-vs-rest per class from predicted probabilities (ties count 1/2, as in
  ``sklearn.metrics.roc_auc_score``); NaN, with an :class:`UndefinedMetricWarning`, for a class
  with no positive (or no negative) record in ``y_true``.
* Bootstrap: percentile intervals over records resampled with replacement (not stratified).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import Any

import numpy as np

from ecgtl.constants import CINC_CLASS_NAMES, CINC_CLASSES

__all__ = [
    "fmt",
    "UndefinedMetricWarning",
    "confusion_matrix",
    "f1_per_class",
    "macro_f1",
    "challenge_f1",
    "accuracy",
    "auroc",
    "bootstrap_ci",
    "bootstrap_difference_ci",
    "classification_report",
    "format_report",
]

NUM_CINC_CLASSES = len(CINC_CLASSES)
CHALLENGE_CLASSES = (0, 1, 2)  # N, A, O: the classes the official CinC 2017 score averages
_PROB_SUM_ATOL = 1e-2  # loose enough for float16 softmax outputs, tight enough to catch logits
_MAX_BOOT_ELEMENTS = 1 << 22  # resampled indices held at once (32 MiB of int64)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for these inputs (e.g. AUROC of a class absent from ``y_true``)."""


# --------------------------------------------------------------------------- validation


def _as_labels(y: Any, name: str) -> np.ndarray:
    """1-D int64 label array; integral floats (e.g. from a float tensor) are accepted."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        hint = " (got class scores? pass probs.argmax(axis=1))" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must be a 1-D sequence of integer labels, got shape {arr.shape}{hint}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: metrics need at least one record")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels, got non-integral values")
    return arr.astype(np.int64, copy=False)


def _check_range(y: np.ndarray, name: str, num_classes: int) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} has labels in [{lo}, {hi}], outside 0..{num_classes - 1} (num_classes={num_classes})")


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _labels_pair(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    num_classes = _check_num_classes(num_classes)
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    _check_range(t, "y_true", num_classes)
    _check_range(p, "y_pred", num_classes)
    return t, p


def _as_probs(probs: Any, n: int) -> np.ndarray:
    """(n, K) float64 probabilities: finite, in [0, 1], rows summing to 1 (softmax outputs)."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"probs must have shape (n_records, num_classes >= 2), got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"y_true and probs differ in length: {n} vs {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("probs must lie in [0, 1]: pass softmax probabilities, not logits")
    row_sums = arr.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _PROB_SUM_ATOL:
        raise ValueError(
            f"probs rows must sum to 1 (softmax over classes); row {worst} sums to {row_sums[worst]:.6g}"
        )
    return arr


def _check_zero_division(zero_division: float) -> float:
    zd = float(zero_division)
    if not (zd == 0.0 or zd == 1.0 or math.isnan(zd)):
        raise ValueError(f"zero_division must be 0.0, 1.0 or nan (as in scikit-learn), got {zero_division!r}")
    return zd


# --------------------------------------------------------------------------- from confusion matrices
# These work on one matrix (K, K) or a stack (B, K, K); the bootstrap uses the stacked form.


def _f1_from_confusion(cm: np.ndarray, zero_division: float = 0.0) -> np.ndarray:
    """Per-class F1 = 2 C[k,k] / (row_k + col_k), shape (..., K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # (TP + FN) + (TP + FP)
    out = np.full(denom.shape, zero_division, dtype=np.float64)
    np.divide(2.0 * tp, denom, out=out, where=denom > 0)
    return out


def _mean_ignoring_nan(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis, NaN entries left out; all-NaN -> NaN (without a RuntimeWarning)."""
    valid = ~np.isnan(values)
    count = valid.sum(axis=-1)
    total = np.where(valid, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _macro_f1_from_confusion(cm: np.ndarray, zero_division: float = 0.0) -> np.ndarray:
    return _mean_ignoring_nan(_f1_from_confusion(cm, zero_division))


def _challenge_f1_from_confusion(cm: np.ndarray, zero_division: float = 0.0) -> np.ndarray:
    if cm.shape[-1] != NUM_CINC_CLASSES:
        raise ValueError(
            f"challenge F1 is defined for the {NUM_CINC_CLASSES} CinC 2017 classes {CINC_CLASSES}, "
            f"got {cm.shape[-1]} classes"
        )
    return _mean_ignoring_nan(_f1_from_confusion(cm, zero_division)[..., list(CHALLENGE_CLASSES)])


def _accuracy_from_confusion(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


def _confusion(t: np.ndarray, p: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# --------------------------------------------------------------------------- public metrics


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int = NUM_CINC_CLASSES) -> np.ndarray:
    """Confusion matrix, shape (K, K), int64: ``C[i, j]`` = records of true class i predicted as j."""
    t, p = _labels_pair(y_true, y_pred, num_classes)
    return _confusion(t, p, int(num_classes))


def f1_per_class(
    y_true: Any, y_pred: Any, num_classes: int = NUM_CINC_CLASSES, *, zero_division: float = 0.0
) -> np.ndarray:
    """F1 of each class 0..K-1, shape (K,); equals ``sklearn f1_score(average=None, labels=range(K))``."""
    zd = _check_zero_division(zero_division)
    return _f1_from_confusion(confusion_matrix(y_true, y_pred, num_classes), zd)


def macro_f1(y_true: Any, y_pred: Any, num_classes: int = NUM_CINC_CLASSES, *, zero_division: float = 0.0) -> float:
    """Unweighted mean F1 over all K classes: the study's headline (4-class) metric."""
    zd = _check_zero_division(zero_division)
    return float(_macro_f1_from_confusion(confusion_matrix(y_true, y_pred, num_classes), zd))


def challenge_f1(y_true: Any, y_pred: Any, *, zero_division: float = 0.0) -> float:
    """Official PhysioNet/CinC 2017 score: mean F1 of N, A and O (labels 0, 1, 2); noisy (3) excluded.

    Labels must be the 4 CinC classes 0..3: noisy records still count as false positives or
    false negatives of the other classes.
    """
    zd = _check_zero_division(zero_division)
    return float(_challenge_f1_from_confusion(confusion_matrix(y_true, y_pred, NUM_CINC_CLASSES), zd))


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of records whose predicted label equals the true label."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return float(np.mean(t == p))


# Lets bootstrap_ci compute all replicates at once from a stack of confusion matrices.
# A user-defined metric may opt in the same way: ``fn.from_confusion = lambda cms: ...`` mapping
# (B, K, K) -> (B,). Anything else is called once per replicate.
macro_f1.from_confusion = _macro_f1_from_confusion  # type: ignore[attr-defined]
challenge_f1.from_confusion = _challenge_f1_from_confusion  # type: ignore[attr-defined]
accuracy.from_confusion = _accuracy_from_confusion  # type: ignore[attr-defined]


def _auroc_binary(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC with average ranks for ties (= area under the trapezoidal ROC curve)."""
    n = scores.size
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    group_start = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group_id = np.cumsum(group_start) - 1
    starts = np.flatnonzero(group_start)
    ends = np.r_[starts[1:], n]  # exclusive; the group holds 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group_id]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc(y_true: Any, probs: Any, *, class_names: Sequence[str] | None = None) -> np.ndarray:
    """One-vs-rest AUROC of each class from probabilities ``probs`` (n_records, K), shape (K,).

    Class k scores records by ``probs[:, k]``. A class with no positive record in ``y_true``
    (or with only positive records) has no ROC curve: its entry is NaN and an
    :class:`UndefinedMetricWarning` says which class and why. ``class_names`` only labels
    those warnings.
    """
    t = _as_labels(y_true, "y_true")
    pr = _as_probs(probs, t.size)
    k = pr.shape[1]
    _check_range(t, "y_true", k)
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    out = np.full(k, np.nan)
    for c, reason in enumerate(_auroc_undefined_reasons(t, k)):
        if reason is None:
            out[c] = _auroc_binary(t == c, pr[:, c])
        else:
            message = f"AUROC of class {names[c]!r} is undefined (NaN): {reason}"
            warnings.warn(message, UndefinedMetricWarning, stacklevel=2)
    return out


def _auroc_undefined_reasons(t: np.ndarray, k: int) -> list[str | None]:
    support = np.bincount(t, minlength=k)
    reasons: list[str | None] = []
    for c in range(k):
        if support[c] == 0:
            reasons.append("no record of this class in y_true")
        elif support[c] == t.size:
            reasons.append("every record in y_true is of this class (no negatives)")
        else:
            reasons.append(None)
    return reasons


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_index_chunks(n: int, n_boot: int, seed: int | None):
    """Yield (c, n) arrays of record indices, n_boot rows in all, drawn with replacement.

    The chunking depends only on n and n_boot, so a seed gives the same replicates on every
    path (vectorised or per-replicate).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _MAX_BOOT_ELEMENTS // n))
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        yield rng.integers(0, n, size=(c, n))
        done += c


def _bootstrap_confusions(t: np.ndarray, p: np.ndarray, num_classes: int, n_boot: int, seed: int | None) -> np.ndarray:
    """Confusion matrices of n_boot resamples, shape (n_boot, K, K), via one bincount per chunk."""
    return _bootstrap_confusions_of(t, [p], num_classes, n_boot, seed)[0]


def _bootstrap_confusions_of(t: np.ndarray, preds: Sequence[np.ndarray], num_classes: int, n_boot: int,
                             seed: int | None) -> list[np.ndarray]:
    """One (n_boot, K, K) stack per prediction array, all on the same resamples (indices drawn once per chunk)."""
    kk = num_classes * num_classes
    codes = [t * num_classes + p for p in preds]  # cell of each record in the flattened confusion matrix
    outs = [np.empty((n_boot, num_classes, num_classes), dtype=np.int64) for _ in preds]
    start = 0
    for idx in _bootstrap_index_chunks(t.size, n_boot, seed):
        c = idx.shape[0]
        offsets = (np.arange(c, dtype=np.int64) * kk)[:, None]
        for code, out in zip(codes, outs):
            flat = code[idx] + offsets
            out[start : start + c] = np.bincount(flat.ravel(), minlength=c * kk).reshape(c, num_classes, num_classes)
        start += c
    return outs


def _percentile_interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = stats[~np.isnan(stats)]
    if finite.size == 0:
        message = "bootstrap: the metric is NaN on every replicate; interval is (nan, nan)"
        warnings.warn(message, UndefinedMetricWarning, stacklevel=3)
        return (math.nan, math.nan)
    if finite.size < stats.size:
        warnings.warn(
            f"bootstrap: the metric is NaN on {stats.size - finite.size} of {stats.size} replicates; "
            "the interval uses the others",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    low, high = np.percentile(finite, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return (float(low), float(high))


def _check_boot_args(n_boot: Any, alpha: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: Any,
    y_pred_or_probs: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    *,
    num_classes: int | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` at level ``1 - alpha`` of ``metric_fn``.

    Records are resampled with replacement, ``n_boot`` times, from a generator seeded by
    ``seed`` (same seed and inputs -> same interval).

    * :func:`macro_f1`, :func:`challenge_f1` and :func:`accuracy` (anything with a
      ``from_confusion`` attribute) are computed for all replicates at once from confusion
      matrices: 1,000 replicates of 1,500 records take a few milliseconds. Given
      probabilities (2-D), they use the argmax labels; the number of classes is
      ``probs.shape[1]``, else ``num_classes`` (default 4, the CinC classes).
    * Any other callable is called as ``metric_fn(y_true[idx], y_pred_or_probs[idx])`` once per
      replicate, on the same resamples. Replicates where it returns NaN (e.g. AUROC of a class
      missing from a resample) are left out, with a warning.
    """
    _check_boot_args(n_boot, alpha)
    n_boot = int(n_boot)
    t = _as_labels(y_true, "y_true")
    x = np.asarray(y_pred_or_probs)
    if x.ndim not in (1, 2) or x.shape[0] != t.size:
        raise ValueError(
            "y_pred_or_probs must be labels (n,) or probabilities (n, K) with "
            f"n = len(y_true) = {t.size}, got shape {x.shape}"
        )
    from_confusion = getattr(metric_fn, "from_confusion", None)
    if from_confusion is not None:
        if x.ndim == 2:
            pr = _as_probs(x, t.size)
            if num_classes is not None and int(num_classes) != pr.shape[1]:
                raise ValueError(f"num_classes={num_classes} but probs has {pr.shape[1]} columns")
            k = pr.shape[1]
            p = pr.argmax(axis=1)
        else:
            k = NUM_CINC_CLASSES if num_classes is None else num_classes
            p = x
        t, p = _labels_pair(t, p, k)
        stats = np.asarray(from_confusion(_bootstrap_confusions(t, p, int(k), n_boot, seed)), dtype=np.float64)
    else:
        stats = np.empty(n_boot, dtype=np.float64)
        b = 0
        # A metric undefined on some resamples says so once, in _percentile_interval, not per replicate.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            for idx in _bootstrap_index_chunks(t.size, n_boot, seed):
                for row in idx:
                    stats[b] = float(metric_fn(t[row], x[row]))
                    b += 1
    return _percentile_interval(stats, float(alpha))


def bootstrap_difference_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: Any,
    y_pred_a: Any,
    y_pred_b: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    *,
    num_classes: int = NUM_CINC_CLASSES,
) -> tuple[float, float]:
    """Paired percentile bootstrap interval of ``metric(a) - metric(b)``: two models on the same records.

    Each replicate resamples the records once and scores both label arrays on that resample
    (the same resamples :func:`bootstrap_ci` draws with this ``seed``; ``None``: fresh ones,
    still shared by both), so what the two models
    share cancels, and the interval is narrower than the two intervals apart would suggest.
    An interval that holds 0 says these records cannot tell the two models apart. Only metrics
    with a ``from_confusion`` form (:func:`macro_f1`, :func:`challenge_f1`, :func:`accuracy`);
    ``y_pred_a`` / ``y_pred_b``: labels, shape ``(n,)``.
    """
    _check_boot_args(n_boot, alpha)
    from_confusion = getattr(metric_fn, "from_confusion", None)
    if from_confusion is None:
        raise ValueError("bootstrap_difference_ci needs a metric with a from_confusion form (macro_f1, challenge_f1, accuracy)")
    k = _check_num_classes(num_classes)
    t, a = _labels_pair(y_true, y_pred_a, k)
    t, b = _labels_pair(y_true, y_pred_b, k)
    cm_a, cm_b = _bootstrap_confusions_of(t, [a, b], k, int(n_boot), seed)  # one draw of resamples for both
    stats = np.asarray(from_confusion(cm_a), dtype=np.float64) - np.asarray(from_confusion(cm_b), dtype=np.float64)
    return _percentile_interval(stats, float(alpha))


# --------------------------------------------------------------------------- report


def _is_cinc(class_names: Sequence[str]) -> bool:
    return tuple(class_names) in (CINC_CLASSES, CINC_CLASS_NAMES)


def classification_report(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] = CINC_CLASSES,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    split: str | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-serialisable dict (plain ints, floats, lists, None).

    Predictions are ``probs.argmax(axis=1)``. Keys: ``split``, ``n``, ``classes``, ``macro_f1``,
    ``macro_f1_ci``, ``challenge_f1``, ``challenge_f1_ci``, ``accuracy``, ``f1``, ``auroc``,
    ``support`` (per class, keyed by class name), ``confusion_matrix`` (rows = true, cols =
    predicted), ``bootstrap`` (settings) and ``notes`` (why a value is missing or special).
    Intervals are ``[low, high]`` percentile bootstrap intervals at level ``1 - alpha`` from one
    shared set of ``n_boot`` resamples; ``n_boot=0`` skips them (``None``). The challenge F1 is
    only given for the CinC 2017 class sets (``CINC_CLASSES`` or ``CINC_CLASS_NAMES``); an
    undefined AUROC is ``None``. Name the ``split`` (e.g. ``"test"``): the protocol asks for it.
    """
    names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {names}")
    t = _as_labels(y_true, "y_true")
    pr = _as_probs(probs, t.size)
    k = pr.shape[1]
    if k != len(names):
        raise ValueError(f"probs has {k} columns but {len(names)} class names were given: {names}")
    p = pr.argmax(axis=1)
    t, p = _labels_pair(t, p, k)
    if n_boot != 0:
        _check_boot_args(n_boot, alpha)

    cm = _confusion(t, p, k)
    f1 = _f1_from_confusion(cm)
    support = cm.sum(axis=1)
    notes: list[str] = []
    for c in np.flatnonzero((support == 0) & (cm.sum(axis=0) == 0)):
        notes.append(
            f"class {names[c]!r} is neither true nor predicted for any record: its F1 counts as 0 "
            "in the macro mean (scikit-learn zero_division=0)"
        )
    auc: dict[str, float | None] = {}
    for c, reason in enumerate(_auroc_undefined_reasons(t, k)):
        if reason is None:
            auc[names[c]] = _auroc_binary(t == c, pr[:, c])
        else:
            auc[names[c]] = None
            notes.append(f"AUROC of class {names[c]!r} is undefined: {reason}")

    cinc = _is_cinc(names)
    if not cinc:
        notes.append(f"challenge F1 not computed: it is defined for the CinC 2017 classes {list(CINC_CLASSES)} only")
    macro_ci = challenge_ci = None
    if n_boot:
        cms = _bootstrap_confusions(t, p, k, int(n_boot), seed)
        macro_ci = list(_percentile_interval(_macro_f1_from_confusion(cms), float(alpha)))
        if cinc:
            challenge_ci = list(_percentile_interval(_challenge_f1_from_confusion(cms), float(alpha)))

    return {
        "split": split,
        "n": int(t.size),
        "classes": names,
        "macro_f1": float(_macro_f1_from_confusion(cm)),
        "macro_f1_ci": macro_ci,
        "challenge_f1": float(_challenge_f1_from_confusion(cm)) if cinc else None,
        "challenge_f1_ci": challenge_ci,
        "accuracy": float(_accuracy_from_confusion(cm)),
        "f1": {names[c]: float(f1[c]) for c in range(k)},
        "auroc": auc,
        "support": {names[c]: int(support[c]) for c in range(k)},
        "confusion_matrix": cm.tolist(),
        "bootstrap": {
            "n_boot": int(n_boot),
            "alpha": float(alpha),
            "level": 1.0 - float(alpha),
            "seed": seed,
            "method": "percentile; records resampled with replacement",
        },
        "notes": notes,
    }


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if ci is None else f"[{fmt(ci[0], digits=4)}, {fmt(ci[1], digits=4)}]"


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`classification_report` dict, for the terminal or a log.

    Scores are cut to 4 decimals (:func:`fmt`), never rounded up; the dict keeps the exact values.
    """
    names = report["classes"]
    boot = report.get("bootstrap") or {}
    level = boot.get("level", 0.95)
    lines = [f"split: {report.get('split') or 'unnamed'}   n = {report['n']}"]
    if report.get("macro_f1_ci") is not None:
        lines[0] += (
            f"   {100 * level:g}% CI: percentile bootstrap, {boot.get('n_boot')} resamples, seed {boot.get('seed')}"
        )
    lines.append("")
    summary = [
        (f"macro-F1 ({len(names)} classes)", report["macro_f1"], report.get("macro_f1_ci")),
        ("challenge F1 (N, A, O)", report.get("challenge_f1"), report.get("challenge_f1_ci")),
        ("accuracy", report["accuracy"], None),
    ]
    for label, value, ci in summary:
        if label.startswith("challenge") and value is None:
            continue
        lines.append(f"{label:<24}{fmt(value, digits=4):>8}  {_fmt_ci(ci)}".rstrip())
    lines.append("")

    width = max(7, *(len(n) + 2 for n in names))
    lines.append(f"{'class':<{width}}{'support':>9}{'F1':>9}{'AUROC':>9}")
    for name in names:
        lines.append(
            f"{name:<{width}}{report['support'][name]:>9d}{fmt(report['f1'][name], digits=4):>9}{fmt(report['auroc'][name], digits=4):>9}"
        )
    lines.append("")

    lines.append("confusion matrix (rows = true, columns = predicted)")
    cm = report["confusion_matrix"]
    cell = max(6, max(len(n) for n in names) + 1, *(len(str(v)) + 1 for row in cm for v in row))
    lines.append(" " * width + "".join(f"{n:>{cell}}" for n in names))
    for name, row in zip(names, cm):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))

    notes = report.get("notes") or []
    if notes:
        lines.append("")
    lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines)


def fmt(x: float | None, signed: bool = False, digits: int = 3) -> str:
    """``x`` cut (toward zero, never rounded up) to ``digits`` decimals; "n/a" for a missing value.

    Every score this package prints or writes goes through it, so a log line never shows 0.7931 for
    a macro-F1 of 0.79306 (a gate at +0.01 reads the exact value, not the text).
    """
    if x is None or not math.isfinite(x):
        return "n/a"
    d = Decimal(f"{x:.9f}").quantize(Decimal(1).scaleb(-digits), rounding=ROUND_DOWN)  # 9 decimals first: 0.15 / 3 is 0.050
    text = f"{d:f}"
    return f"+{text}" if signed and not text.startswith("-") else text
