"""Per-class decision biases fitted on validation data, for the macro-F1 the study reports.

A model trained with cross-entropy ranks classes well (AUROC) but its argmax is not the
decision that maximises macro-F1 when classes are imbalanced (the noisy class: 3% of CinC
2017). :func:`fit_class_bias` finds additive biases on the log-probabilities by coordinate
ascent over a grid, on the *validation* records only; :func:`apply_class_bias` turns
probabilities into the biased decision. The biases live in the model card (``class_bias``)
and every inference path applies them.
"""

from __future__ import annotations

import numpy as np

from ecgtl.evaluate.metrics import macro_f1

__all__ = ["apply_class_bias", "biased_probabilities", "biased_scores", "fit_class_bias"]

DEFAULT_GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 2)  # log-probability offsets


def biased_scores(probs: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``log p + bias`` per class (the argmax is the decision); ``bias=None`` gives ``log p``."""
    scores = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    return scores if bias is None else scores + np.asarray(bias, dtype=np.float64)


def biased_probabilities(probs: np.ndarray, bias) -> np.ndarray:
    """``softmax(log p + bias)``: probabilities whose argmax is the biased decision (``bias`` None or empty: ``probs``)."""
    if bias is None or len(bias) == 0:
        return probs
    scores = biased_scores(probs, bias)
    scores -= scores.max(1, keepdims=True)
    e = np.exp(scores)
    return (e / e.sum(1, keepdims=True)).astype(np.asarray(probs).dtype)


def apply_class_bias(probs: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Class decisions (int64) of ``probs`` (n, classes) under ``bias``."""
    return biased_scores(probs, bias).argmax(1)


def fit_class_bias(probs: np.ndarray, y_true: np.ndarray, grid: np.ndarray = DEFAULT_GRID, sweeps: int = 3) -> tuple[np.ndarray, float]:
    """Biases (classes,) maximising macro-F1 of ``apply_class_bias(probs, bias)`` against ``y_true``; returns (bias, macro-F1).

    Coordinate ascent: each class's bias in turn takes the grid value that helps most, for
    ``sweeps`` passes; ties keep the smaller offset (0 first), so with no gain the bias stays 0.
    The first class is the reference (its bias stays 0: only differences matter).
    """
    probs, y_true = np.asarray(probs), np.asarray(y_true)
    n_classes = probs.shape[1]
    bias = np.zeros(n_classes)
    best = macro_f1(y_true, apply_class_bias(probs, bias), n_classes)
    order = sorted(grid, key=abs)
    for _ in range(sweeps):
        improved = False
        for c in range(1, n_classes):
            for value in order:
                trial = bias.copy()
                trial[c] = value
                score = macro_f1(y_true, apply_class_bias(probs, trial), n_classes)
                if score > best + 1e-12:
                    best, bias, improved = score, trial, True
        if not improved:
            break
    return bias, float(best)
