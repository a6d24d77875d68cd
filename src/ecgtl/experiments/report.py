"""``ecgtl report RESULTS.csv``: the experiment grid's results table as Markdown and PNG figures.

Everything comes from the table alone (its schema: :mod:`ecgtl.experiments.results`), so the
report can be regenerated at any time, from any copy of the table, without the run folders.

A comparison is a set of rows that differ in one axis only (model, pretext, pre-training patient
fraction, sampling rate, label fraction); a pre-trained run and a random-init run are *paired* by
fine-tuning seed (and split seed). The default setting is the most common sampling rate, the
largest label fraction (1.0) and, for each pretext, its largest pre-training patient fraction.
The ``blocks`` column only explains what is missing; the axis values decide what is compared.

Sections, each written only when the table has its rows (else a line says what is missing):
Q1 (1-D: each pretext vs random init), Q2 (the 2-D STFT arm beside the 1-D one), Q3 (macro-F1
vs pre-training patient fraction), label efficiency, sampling-rate sweep, extra test sets, the
published numbers beside ours, and a summary written from the numbers.

Statistics: mean +- sample std over seeds; the mean paired difference (pre-trained - random) with
a bootstrap 95% interval (seed pairs resampled 10,000 times, fixed RNG seed); a paired t-test
and a Wilcoxon signed-rank test over seed pairs. A difference is called significant only when
the t-test gives p < 0.05, the interval excludes 0 and, with 6 or more pairs (fewer cannot reach
0.05), the Wilcoxon test agrees. Numbers are cut (not rounded) to 3 decimals.
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ecgtl.constants import CINC_CLASSES
from ecgtl.errors import DataError
from ecgtl.evaluate.metrics import fmt  # scores are cut, never rounded up (re-exported for the scripts)
from ecgtl.experiments.results import CLASS_COLUMN, SCORES, TIMING_COLUMNS, TRAINING, parse_curve, read_results
from ecgtl.fileio import atomic_write

RANDOM = "none"
INPUT_1D, INPUT_2D = "1d", "2d_stft"
#: the order pretexts are listed in (others follow, sorted)
PRETEXT_ORDER = ("beat", "rhythm", "heart_rate", "future", "heart_rate@cinc", "future@cinc")
#: columns without which no section can be written
REQUIRED = ("run_id", "arch", "input", "pretext", "patient_fraction", "fs", "label_fraction", "seed", "test_macro_f1")
CURVE_COLUMN = "val_macro_f1_curve"
NUMERIC = [c for c in SCORES + TRAINING if not c.endswith("_curve")]
EXTRA = re.compile(r"^extra_(.+)_(macro|challenge)_f1$")

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
ALPHA = 0.05
#: fewer seed pairs than this: no test (a p-value of 2 pairs says nothing useful)
MIN_PAIRS_FOR_TEST = 3
#: the exact two-sided Wilcoxon p is at least 2 / 2**n: it cannot fall under 0.05 with fewer than 6 pairs
MIN_PAIRS_FOR_WILCOXON = 6


class Published(NamedTuple):
    source: str
    model: str
    setting: str
    f1: float
    std: float | None
    per_class: tuple[float, float, float, float] | None  # F1 of N, A, O, ~


_PAPER = "Weimann & Conrad 2021"
_REPRO = "2024 reproduction"
#: Published test macro-F1 over the 4 classes (mean +- std over runs), theirs, on their own test splits.
#: Copied from the "Published results" of the project's reference protocol (shared/reference/paper-protocol.md):
#: Weimann, K., Conrad, T.O.F., Transfer learning for ECG classification, Sci Rep 11, 5251 (2021), and the 2024
#: reproduction github.com/myles-i/DLH_TransferLearning (TensorFlow; 2-D spectrogram extension, data-size ablation).
PUBLISHED: tuple[Published, ...] = (
    Published(_PAPER, "1-D ResNet-18v2", "random init", 0.731, 0.019, (0.898, 0.711, 0.701, 0.613)),
    Published(_PAPER, "1-D ResNet-18v2", "beat, frame 512", 0.769, 0.011, (0.911, 0.760, 0.758, 0.647)),
    Published(_PAPER, "1-D ResNet-18v2", "beat, frame 2048", 0.779, 0.014, (0.915, 0.777, 0.763, 0.661)),
    Published(_PAPER, "1-D ResNet-18v2", "beat, frame 4096", 0.768, 0.010, (0.908, 0.764, 0.754, 0.646)),
    Published(_REPRO, "1-D ResNet-18v2", "random init", 0.702, 0.030, (0.881, 0.647, 0.686, 0.595)),
    Published(_REPRO, "1-D ResNet-18v2", "beat, 1% of patients", 0.754, 0.011, (0.899, 0.728, 0.729, 0.661)),
    Published(_REPRO, "1-D ResNet-18v2", "beat, 10% of patients", 0.765, 0.012, (0.904, 0.745, 0.735, 0.675)),
    Published(_REPRO, "1-D ResNet-18v2", "beat, 20% of patients", 0.765, 0.014, (0.901, 0.760, 0.741, 0.658)),
    Published(_REPRO, "1-D ResNet-18v2", "beat, 100% of patients", 0.773, 0.012, (0.904, 0.751, 0.750, 0.688)),
    Published(_REPRO, "2-D ResNet-18, spectrograms", "random init", 0.715, None, None),
    Published(_REPRO, "2-D ResNet-18, spectrograms", "beat, 1% of patients", 0.754, None, None),
    Published(_REPRO, "2-D ResNet-18, spectrograms", "beat, 10% of patients", 0.762, None, None),
    Published(_REPRO, "2-D ResNet-18, spectrograms", "beat, 20% of patients", 0.769, None, None),
    Published(_REPRO, "2-D ResNet-18, spectrograms", "beat, 88% of patients", 0.765, None, None),
)
#: Same source: the other published facts the report quotes.
PUBLISHED_NOTES = (
    "The paper's headline: pre-training improves test macro-F1 by up to 6.57% (0.779 vs 0.731); its four pretext "
    "tasks land between 0.758 and 0.779 (ResNet-18v2).",
    "The 2024 reproduction: pre-trained runs stopped earlier, after about 57 epochs vs 71 from random init.",
)
#: Same source: the scale of the published runs (11,000 patients x 50 segments x 1,048,577 samples at 250 Hz = ~640,000 h).
PUBLISHED_SCALE = (
    "pre-training on Icentia11k, 11,000 patients (about 58 hours of single-lead ECG each, about 640,000 hours in all; "
    "about 4,096 frames sampled per patient), 1-D ResNet-18v2 at full width (64 to 512 filters), fine-tuning at 250 Hz, "
    "10 runs per setting, up to 200 epochs with early stopping (patience 50), on their own 80/20 test split "
    "(the 2024 reproduction: batch 512, about 14 GPU-hours on one V100 for all patients)"
)


# --- the table ----------------------------------------------------------------------------


class Model(NamedTuple):
    arch: str
    input: str

    @property
    def label(self) -> str:
        return f"{self.arch} ({self.input})"


@dataclass(frozen=True)
class Run:
    """One row of the table, typed; ``values`` holds the numeric columns (NaN where empty)."""

    run_id: str
    line: int
    model: Model
    pretext: str
    patient_fraction: float | None
    fs: float
    label_fraction: float
    seed: int
    split_seed: str
    blocks: tuple[str, ...]
    values: dict = field(hash=False, compare=False)
    curve: tuple[float, ...] = ()

    @property
    def pair(self) -> tuple[int, str]:
        """What pairs a pre-trained run with a random-init one: the same fine-tuning seed and split."""
        return (self.seed, self.split_seed)

    @property
    def setting(self) -> tuple:
        return (self.model, self.pretext, self.patient_fraction, self.fs, self.label_fraction)

    def value(self, column: str) -> float:
        return self.values.get(column, math.nan)


def load_runs(path: str | Path) -> tuple[list[Run], list[str]]:
    """The typed rows of a results table and its columns; a :class:`DataError` naming the file for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such results table (run `ecgtl experiment` first, or give the path of its results.csv)")
    rows = read_results(path)
    if not rows:
        raise DataError(path, "the results table has no runs yet")
    columns = [c for c in rows[0] if c is not None]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(path, f"not a complete experiment results table: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    numeric = [c for c in NUMERIC if c in columns] + [c for c in columns if EXTRA.match(c)]
    runs = []
    for i, row in enumerate(rows):
        line = i + 2  # the header is line 1
        rid = row.get("run_id") or f"(no run_id, line {line})"
        where = f"line {line} (run {rid})"
        if None in row or any(row.get(c) is None for c in columns):
            raise DataError(path, f"{where}: the row does not have as many fields as the header")

        def number(column: str, required: bool = False) -> float:
            text = (row.get(column) or "").strip()
            if not text:
                if required:
                    raise DataError(path, f"{where}: column {column} is empty")
                return math.nan
            try:
                value = float(text)
            except ValueError:
                raise DataError(path, f"{where}: column {column}: {text!r} is not a number") from None
            if required and not math.isfinite(value):
                raise DataError(path, f"{where}: column {column}: {text!r} is not a finite number")
            return value

        def word(column: str) -> str:
            text = (row.get(column) or "").strip()
            if not text:
                raise DataError(path, f"{where}: column {column} is empty")
            return text

        pretext = word("pretext")
        fs, label_fraction, seed = number("fs", True), number("label_fraction", True), number("seed", True)
        if fs <= 0 or not 0 < label_fraction <= 1 or not seed.is_integer():
            raise DataError(path, f"{where}: fs {row['fs']!r}, label_fraction {row['label_fraction']!r} and seed {row['seed']!r} "
                            "must be a positive rate, a fraction in (0, 1] and an integer")
        pf = number("patient_fraction")
        if pretext == RANDOM or math.isnan(pf):
            pf = None  # random init has no pre-training data
        elif not 0 < pf <= 1:
            raise DataError(path, f"{where}: column patient_fraction: {row['patient_fraction']!r} is not a fraction in (0, 1]")
        try:
            curve = tuple(parse_curve(row.get(CURVE_COLUMN) or ""))
        except ValueError:
            raise DataError(path, f"{where}: column {CURVE_COLUMN} is not a ';'-separated list of numbers") from None
        values = {c: number(c, required=c == "test_macro_f1") for c in numeric}
        runs.append(Run(run_id=rid, line=line, model=Model(word("arch"), word("input")), pretext=pretext, patient_fraction=pf,
                        fs=fs, label_fraction=label_fraction, seed=int(seed), split_seed=(row.get("split_seed") or "").strip(),
                        blocks=tuple(b for b in re.split(r"[;,]", row.get("blocks") or "") if b), values=values, curve=curve))
    return runs, columns


class Table:
    """The runs indexed by setting, and the default setting the questions are asked at."""

    def __init__(self, path: Path, runs: list[Run], columns: list[str]):
        self.path, self.runs, self.columns = path, runs, columns
        self._cells: dict[tuple, dict[tuple, Run]] = {}
        for r in runs:
            cell = self._cells.setdefault(r.setting, {})
            if r.pair in cell:
                o = cell[r.pair]
                raise DataError(path, f"runs {o.run_id} (line {o.line}) and {r.run_id} (line {r.line}) have the same arch, pretext, "
                                "patient fraction, fs, label fraction and seed: one run per setting and seed expected")
            cell[r.pair] = r
        fs_count = Counter(r.fs for r in runs)
        self.fs0 = max(fs_count, key=lambda f: (fs_count[f], f))  # the most common rate (ties: the higher)
        self.lf0 = max(r.label_fraction for r in runs)
        self.models = sorted({r.model for r in runs}, key=lambda m: (m.input != INPUT_1D, m.input, m.arch))
        self.blocks = Counter(b for r in runs for b in r.blocks)

    def cell(self, model: Model, pretext: str, fs: float, lf: float, pf: float | None | str = "largest") -> tuple[float | None, dict]:
        """(patient fraction, {pair: run}) of one setting; ``pf="largest"``: the largest fraction run at that setting."""
        if pretext == RANDOM:
            pf = None
        elif pf == "largest":
            options = [k[2] for k in self._cells if k[0] == model and k[1] == pretext and k[3] == fs and k[4] == lf]
            if not options:
                return None, {}
            pf = max(options, key=lambda p: (p is not None, p or 0.0))
        return pf, self._cells.get((model, pretext, pf, fs, lf), {})

    def pretexts(self, model: Model) -> list[str]:
        found = {r.pretext for r in self.runs if r.model == model and r.pretext != RANDOM}
        return [p for p in PRETEXT_ORDER if p in found] + sorted(found - set(PRETEXT_ORDER))

    def values(self, model: Model, pretext: str, axis: str) -> list[float]:
        """The values of ``axis`` ("fs", "label_fraction" or "patient_fraction") run for ``model`` and ``pretext``, the other axes at their defaults."""
        out = set()
        for r in self.runs:
            if r.model != model or r.pretext != pretext:
                continue
            if axis == "fs" and r.label_fraction == self.lf0:
                out.add(r.fs)
            elif axis == "label_fraction" and r.fs == self.fs0:
                out.add(r.label_fraction)
            elif axis == "patient_fraction" and r.fs == self.fs0 and r.label_fraction == self.lf0 and r.patient_fraction is not None:
                out.add(r.patient_fraction)
        return sorted(out)

    def has_block(self, name: str) -> str:
        n = self.blocks.get(name, 0)
        return f"the table has {n} rows of grid block `{name}`" if n else f"the table has no rows of grid block `{name}`"


# --- statistics ---------------------------------------------------------------------------


@dataclass
class Paired:
    """Pre-trained vs random-init values of one column, paired by seed."""

    pairs: list
    pre: np.ndarray
    rnd: np.ndarray
    only_pre: list = field(default_factory=list)  # seeds without a partner (left out)
    only_rnd: list = field(default_factory=list)
    ci: tuple[float, float] | None = None
    p_t: float = math.nan
    p_w: float = math.nan
    note: str = ""
    key: tuple = ()  # (column, (pre-trained run, random-init run) ids): the same comparison met in two sections

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def mean_diff(self) -> float:
        return float(np.mean(self.pre - self.rnd)) if self.n else math.nan

    @property
    def tested(self) -> bool:
        return self.n >= MIN_PAIRS_FOR_TEST and math.isfinite(self.p_t)

    @property
    def significant(self) -> bool:
        return bool(self.tested and self.p_t < ALPHA and self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)
                    and (self.n < MIN_PAIRS_FOR_WILCOXON or self.p_w < ALPHA))


def bootstrap_ci(diffs: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% interval of the mean of ``diffs``, resampling the pairs with replacement (fixed RNG seed)."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_test(pre, rnd, pairs=None) -> Paired:
    """Mean paired difference, its bootstrap interval and the paired tests of two equally long arrays."""
    pre, rnd = np.asarray(pre, float), np.asarray(rnd, float)
    result = Paired(list(range(len(pre))) if pairs is None else list(pairs), pre, rnd)
    d = pre - rnd
    n = len(d)
    if n >= 2:
        result.ci = bootstrap_ci(d)
    if n < MIN_PAIRS_FOR_TEST:
        result.note = f"{n} seed pair{'' if n == 1 else 's'}: too few for a meaningful test"
    elif np.allclose(d, d[0], rtol=0, atol=1e-12):
        result.note = "all paired differences are equal: no test"
    else:
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result.p_t = float(stats.ttest_rel(pre, rnd).pvalue)
            try:
                result.p_w = float(stats.wilcoxon(d).pvalue)
            except ValueError:
                result.p_w = math.nan
    return result


def compare_cells(pre: dict, rnd: dict, column: str) -> Paired:
    """Pair the runs of two cells by seed on ``column`` (rows where it is empty are left out)."""
    a = {k: r.value(column) for k, r in pre.items() if math.isfinite(r.value(column))}
    b = {k: r.value(column) for k, r in rnd.items() if math.isfinite(r.value(column))}
    keys = sorted(set(a) & set(b))
    result = paired_test([a[k] for k in keys], [b[k] for k in keys], keys)
    result.only_pre, result.only_rnd = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    result.key = (column, tuple((pre[k].run_id, rnd[k].run_id) for k in keys))
    return result


# --- formatting ---------------------------------------------------------------------------


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else fmt(p)  # cut: p < 0.05 exactly when it prints as 0.049 or less


def p_is(p: float) -> str:
    """"p = 0.012" or "p < 0.001"."""
    text = fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"{fmt(ci[0], True)} to {fmt(ci[1], True)}"


def fmt_ms(values) -> str:
    """mean +- sample std (just the value for one run)."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if len(v) == 0:
        return "n/a"
    return fmt(v[0]) if len(v) == 1 else f"{fmt(v.mean())} +- {fmt(v.std(ddof=1))}"


def fmt_axis(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def fmt_seeds(pairs) -> str:
    return ", ".join(str(s) if not split else f"{s} (split {split})" for s, split in pairs)


def verdict(p: Paired) -> str:
    if p.n == 0:
        return "n/a"
    if not p.tested:
        return "no test"
    return "yes" if p.significant else "no"


def _mean(values) -> float:
    """Mean of the finite values; NaN if there is none."""
    v = [x for x in values if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def missing(text: str) -> list[str]:
    return [f"_Missing: {text}._", ""]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


STAT_HEADER = ["n pairs", "random init", "pre-trained", "difference", "95% CI (bootstrap)", "Wilcoxon p", "t-test p", "significant"]


def stat_cells(p: Paired) -> list[str]:
    return [str(p.n), fmt_ms(p.rnd), fmt_ms(p.pre), fmt(p.mean_diff, True), fmt_ci(p.ci), fmt_p(p.p_w), fmt_p(p.p_t), verdict(p)]


WILCOXON_NOTE = (f"With fewer than {MIN_PAIRS_FOR_WILCOXON} seed pairs the Wilcoxon test cannot reach p < {ALPHA} (its smallest "
                 "two-sided p is 2 / 2^n); there the t-test and the interval decide.")


def pairing_notes(label: str, p: Paired) -> list[str]:
    """Lines under a table: seeds left out for want of a partner, why a row has no test."""
    notes = [WILCOXON_NOTE] if MIN_PAIRS_FOR_TEST <= p.n < MIN_PAIRS_FOR_WILCOXON else []
    if p.only_pre:
        notes.append(f"{label}: seeds {fmt_seeds(p.only_pre)} have no random-init partner and are left out")
    if p.only_rnd:
        notes.append(f"{label}: random-init seeds {fmt_seeds(p.only_rnd)} have no pre-trained partner and are left out")
    if p.note:
        notes.append(f"{label}: {p.note}")
    return notes


def finding(subject: str, p: Paired, metric: str = "test macro-F1") -> str:
    """One plain sentence about one comparison, from its numbers."""
    if p.n == 0:
        return f"{subject}: no seed has both a pre-trained and a random-init run with this score, so no comparison."
    d = p.mean_diff
    base = f"random init {fmt(float(np.mean(p.rnd)))} -> pre-trained {fmt(float(np.mean(p.pre)))}, {p.n} seed pair{'' if p.n == 1 else 's'}"
    if not p.tested:
        return f"{subject}: {metric} {fmt(d, True)} ({base}); {p.note or 'no test'}, so no claim either way."
    floor = f" (its smallest possible with {p.n} pairs is {fmt(2 / 2 ** p.n)})" if p.n < MIN_PAIRS_FOR_WILCOXON else ""
    stats_text = f"paired t-test {p_is(p.p_t)}, Wilcoxon {p_is(p.p_w)}{floor}, 95% CI {fmt_ci(p.ci)}"
    if p.significant:
        change = "raised" if d > 0 else "lowered"
        return f"{subject}: pre-training {change} {metric} by {fmt(abs(d))} ({base}); significant ({stats_text})."
    ci_clear = p.ci is not None and (p.ci[0] > 0 or p.ci[1] < 0)  # the interval alone excludes 0, the tests do not
    if d > 0 and fmt(d) != "0.000":
        verdict = ("suggestive, not significant: the bootstrap interval excludes 0 but the tests do not reject "
                   "(with few pairs the interval is unreliable); more seeds would decide" if ci_clear
                   else "no evidence that pre-training helped")
        return f"{subject}: {metric} higher by {fmt(d)} on average ({base}), but not significant ({stats_text}): {verdict}."
    lower = (": the bootstrap interval lies below 0 but the tests do not reject, a suggestive, not significant loss"
             if ci_clear and d < 0 else "")
    return f"{subject}: pre-training did not help: {metric} {fmt(d, True)} ({base}); not significant ({stats_text}){lower}."


def sweep_finding(subject: str, axis: str, points: list[tuple[float, Paired]], unit: str = "") -> str:
    """Where along a sweep pre-training was significantly better, suggestively better (only the interval excludes 0), not better, or untested."""
    up, down = "significantly higher than random init", "significantly lower than random init"
    suggestive_up = "higher, suggestive but not significant (the bootstrap interval excludes 0, the tests do not reject)"
    suggestive_down = "lower, suggestive but not significant (the bootstrap interval lies below 0, the tests do not reject)"
    plain_up, flat, untested = "higher on average but not significantly", "not higher (pre-training did not help)", "too few seeds to test"
    groups = {k: [] for k in (up, suggestive_up, plain_up, flat, suggestive_down, down, untested)}
    for value, p in points:
        if not p.tested:
            key = untested
        elif p.significant:
            key = up if p.mean_diff > 0 else down
        elif p.mean_diff > 0 and fmt(p.mean_diff) != "0.000":
            key = suggestive_up if p.ci is not None and p.ci[0] > 0 else plain_up
        else:
            key = suggestive_down if p.ci is not None and p.ci[1] < 0 else flat
        groups[key].append(fmt_axis(value))
    parts = [f"{k} at {axis} {', '.join(v)}{unit}" for k, v in groups.items() if v]
    return f"{subject}: " + "; ".join(parts) + "."


# --- figures (matplotlib imported only when drawing) -------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(png: Path, title: str, random_runs: list[Run], panels: list[tuple[str, list[Run]]]) -> bool:
    """Validation macro-F1 per epoch: mean line and min-max band over seeds, random init vs each pretext. False if no curves."""
    if not any(r.curve for _, runs in panels for r in runs) and not any(r.curve for r in random_runs):
        return False
    plt = _pyplot()
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (pretext, runs) in zip(axes.flat, panels):
        for label, group, color in (("random init", random_runs, "tab:gray"), (pretext, runs, "tab:blue")):
            curves = [np.asarray(r.curve) for r in group if r.curve]
            if not curves:
                continue
            epochs = np.arange(1, max(map(len, curves)) + 1)
            at = [[c[e - 1] for c in curves if len(c) >= e] for e in epochs]  # runs still training at epoch e
            ax.plot(epochs, [np.mean(v) for v in at], color=color, label=f"{label} (n={len(curves)})")
            ax.fill_between(epochs, [min(v) for v in at], [max(v) for v in at], color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"{pretext} vs random init", fontsize=10)
        ax.set_xlabel("epoch"), ax.set_ylabel("validation macro-F1")
        ax.grid(alpha=0.3), ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, width=max(30, int(11 * 4.6 * cols)))), fontsize=10)  # never wider than the figure
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def plot_sweep(png: Path, xlabel: str, panels: list[tuple[str, list[tuple[str, list[float], list[np.ndarray]]], list[tuple[str, float]]]],
               log_x: bool) -> None:
    """Panels of (title, series, reference lines); a series is (label, x values, arrays of seeds' values): mean with +-std bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, series, hlines) in zip(axes.flat, panels):
        for i, (label, xs, groups) in enumerate(series):
            means = [float(np.mean(g)) for g in groups]
            stds = [float(np.std(g, ddof=1)) if len(g) > 1 else 0.0 for g in groups]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colors[i % len(colors)], label=label)
        for j, (label, y) in enumerate(hlines):
            ax.axhline(y, linestyle="--", color="tab:gray" if len(hlines) == 1 else colors[(len(series) + j) % len(colors)], label=label)
        if log_x:
            ax.set_xscale("log")
            ticks = sorted({x for _, xs, _ in series for x in xs})
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
            ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel), ax.set_ylabel("test macro-F1 (mean +- std over seeds)")
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- sections ------------------------------------------------------------------------------


@dataclass
class Contrast:
    """One pretext vs random init for one model at the default setting."""

    model: Model
    pretext: str
    pf: float | None
    pre: dict
    rnd: dict
    macro: Paired
    challenge: Paired


class Report:
    def __init__(self, table: Table, out: Path):
        self.t, self.out = table, out
        self.findings: list[str] = []
        self.figures: list[Path] = []
        self.compared: dict[tuple, Paired] = {}  # every comparison once (Q1's also appears in the sweeps), for the caveat
        self.contrasts: dict[Model, list[Contrast]] = {}

    def _count(self, p: Paired) -> None:
        self.compared[p.key or (id(p),)] = p

    @property
    def tests(self) -> int:
        return sum(p.tested for p in self.compared.values())

    @property
    def significant(self) -> int:
        return sum(p.significant for p in self.compared.values())

    def contrasts_of(self, model: Model, column: str = "test_macro_f1", challenge: str = "test_challenge_f1") -> list[Contrast]:
        t = self.t
        _, rnd = t.cell(model, RANDOM, t.fs0, t.lf0)
        out = []
        for pretext in t.pretexts(model):
            pf, pre = t.cell(model, pretext, t.fs0, t.lf0)
            if pre:
                out.append(Contrast(model, pretext, pf, pre, rnd, compare_cells(pre, rnd, column), compare_cells(pre, rnd, challenge)))
        return out

    # Q1 / Q2
    def pretext_section(self, heading: str, input_: str, name: str) -> list[str]:
        t = self.t
        lines = [f"## {heading}", "", f"Each pretext vs random init (pretext `none`) at the default setting: fs {fmt_axis(t.fs0)} Hz, "
                 f"label fraction {fmt_axis(t.lf0)}, each pretext's largest pre-training patient fraction (column *patient fraction*); "
                 "pairs = the same fine-tuning seed. Difference = pre-trained - random init.", ""]
        models = [m for m in t.models if m.input == input_]
        if not models:
            return lines + missing(f"no runs with input `{input_}` ({t.has_block(name)})")
        for model in models:
            lines += [f"### {model.label}", ""]
            _, rnd = t.cell(model, RANDOM, t.fs0, t.lf0)
            contrasts = self.contrasts_of(model)
            if not rnd or not contrasts:
                what = "random-init (pretext `none`)" if not rnd else "pre-trained"
                lines += missing(f"no {what} runs of {model.label} at fs {fmt_axis(t.fs0)} Hz, label fraction {fmt_axis(t.lf0)} "
                                 f"({t.has_block(name)})")
                continue
            self.contrasts[model] = contrasts
            rows, notes = [], []
            for c in contrasts:
                for metric, p in (("macro-F1", c.macro), ("challenge F1", c.challenge)):
                    if p.n or metric == "macro-F1":
                        rows.append([c.pretext, fmt_axis(c.pf), metric] + stat_cells(p))
                notes += pairing_notes(c.pretext, c.macro)
                self._count(c.macro)
                self.findings.append(finding(f"{model.label}, {c.pretext} vs random init", c.macro))
            lines += md_table(["pretext", "patient fraction", "metric"] + STAT_HEADER, rows) + [""]
            lines += [f"- {n}" for n in dict.fromkeys(notes)] + ([""] if notes else [])
            lines += self.curves(model, rnd, contrasts)
            lines += self.time_table(model, contrasts)
        return lines

    def curves(self, model: Model, rnd: dict, contrasts: list[Contrast]) -> list[str]:
        png = self.out / f"curves_{slug(model.arch)}.png"
        drawn = plot_curves(png, f"{model.label}: validation macro-F1 per epoch (mean, min-max band over seeds)",
                            list(rnd.values()), [(c.pretext, list(c.pre.values())) for c in contrasts])
        if not drawn:
            return missing(f"no validation curves (column {CURVE_COLUMN}) for {model.label}")
        self.figures.append(png)
        return [f"![validation macro-F1 per epoch, {model.label}]({png.name})", "",
                "Curves end where early stopping ended a run; the mean at an epoch is over the runs still training.", ""]

    def time_table(self, model: Model, contrasts: list[Contrast]) -> list[str]:
        t = self.t
        columns = [("epochs_to_95", "epochs to 95% of best"), ("seconds_to_95", "seconds to 95% of best"),
                   ("best_epoch", "best epoch"), ("epochs_run", "epochs run")]
        columns = [(c, label) for c, label in columns if c in t.columns]
        if not columns:
            return missing("no training-time columns (epochs_to_95, seconds_to_95, best_epoch, epochs_run)")
        header = ["pretext", "n pairs"] + [f"{label}: {side}" for _, label in columns for side in ("random", "pre-trained")]
        rows = []
        for c in contrasts:
            keys = c.macro.pairs  # the same paired runs as the scores
            cells = [c.pretext, str(len(keys))]
            for col, _ in columns:
                for cell in (c.rnd, c.pre):
                    values = [cell[k].value(col) for k in keys]
                    found = sum(math.isfinite(v) for v in values)
                    cells.append(fmt_ms(values) + (f" (n={found})" if 0 < found < len(keys) else ""))
            rows.append(cells)
            e_rnd, e_pre = (_mean([cell[k].value("epochs_to_95") for k in keys]) for cell in (c.rnd, c.pre))
            if math.isfinite(e_rnd) and math.isfinite(e_pre):
                faster = "fewer" if e_pre < e_rnd else "more" if e_pre > e_rnd else "as many"
                self.findings.append(f"{model.label}, {c.pretext}: reached 95% of its best validation macro-F1 after {fmt(e_pre)} "
                                     f"epochs on average vs {fmt(e_rnd)} from random init ({faster} epochs; mean over {len(keys)} "
                                     "seed pairs, no test).")
        timing = [label for col, label in columns if col in TIMING_COLUMNS]
        return (["#### Time to 95% of the best validation macro-F1", ""] + md_table(header, rows) + [""]
                + ([f"Seconds depend on the machine: compare them only between runs on the same hardware ({', '.join(timing)})."]
                   if timing else []) + [""])

    def side_by_side(self) -> list[str]:
        models = [m for m in self.contrasts if m.input == INPUT_1D] + [m for m in self.contrasts if m.input == INPUT_2D]
        if not any(m.input == INPUT_1D for m in models) or not any(m.input == INPUT_2D for m in models):
            return []
        pretexts = list(dict.fromkeys(c.pretext for m in models for c in self.contrasts[m]))
        rows = [["none (random init)"] + [fmt_ms([r.value("test_macro_f1") for r in self.contrasts[m][0].rnd.values()]) for m in models]]
        for pretext in pretexts:
            cells = [pretext]
            for m in models:
                c = next((c for c in self.contrasts[m] if c.pretext == pretext), None)
                cells.append("-" if c is None or not c.macro.n else
                             f"{fmt_ms(c.macro.pre)} ({fmt(c.macro.mean_diff, True)}{'*' if c.macro.significant else ''})")
            rows.append(cells)
        return (["### 1-D and 2-D side by side", "", "Test macro-F1, mean +- std over seeds; in brackets the mean paired difference to "
                 "random init, * = significant.", ""] + md_table(["pretext"] + [m.label for m in models], rows) + [""])

    # Q3
    def patient_section(self) -> list[str]:
        t = self.t
        lines = ["## Q3: test macro-F1 vs pre-training patient fraction", "",
                 f"Pre-trained on a fraction of the pre-training patients, fine-tuned at fs {fmt_axis(t.fs0)} Hz and label fraction "
                 f"{fmt_axis(t.lf0)}; the difference is to random init (the dashed line in the figure), paired by seed.", ""]
        rows, panels, notes = [], [], []
        for model in t.models:
            _, rnd = t.cell(model, RANDOM, t.fs0, t.lf0)
            series = []
            for pretext in t.pretexts(model):
                fractions = t.values(model, pretext, "patient_fraction")
                if len(fractions) < 2 or not rnd:
                    continue
                xs, groups, points = [], [], []
                for pf in fractions:
                    _, pre = t.cell(model, pretext, t.fs0, t.lf0, pf)
                    p = compare_cells(pre, rnd, "test_macro_f1")
                    rows.append([model.label, pretext, fmt_axis(pf)] + stat_cells(p))
                    notes += pairing_notes(f"{model.label}, {pretext}, patients {fmt_axis(pf)}", p)
                    self._count(p)
                    points.append((pf, p))
                    xs.append(pf)
                    groups.append(np.array([r.value("test_macro_f1") for r in pre.values()]))
                series.append((pretext, xs, groups))
                self.findings.append(sweep_finding(f"{model.label}, {pretext} by pre-training patient fraction", "patient fraction", points))
            if series:
                ref = float(np.mean([r.value("test_macro_f1") for r in rnd.values()]))
                panels.append((model.label, series, [(f"random init ({fmt(ref)})", ref)]))
        if not rows:
            return lines + missing(f"no pretext with runs at two or more patient fractions next to random-init runs "
                                   f"at fs {fmt_axis(t.fs0)} Hz, label fraction {fmt_axis(t.lf0)} ({t.has_block('q3')})")
        png = self.out / "patient_fraction.png"
        plot_sweep(png, "pre-training patient fraction", panels, log_x=True)
        self.figures.append(png)
        return (lines + md_table(["model", "pretext", "patient fraction"] + STAT_HEADER, rows) + [""]
                + [f"- {n}" for n in dict.fromkeys(notes)] + ([""] if notes else [])
                + [f"![test macro-F1 vs patient fraction]({png.name})", ""])

    # label efficiency / sampling rate
    def sweep_section(self, axis: str) -> list[str]:
        t = self.t
        if axis == "label_fraction":
            heading, what, unit, block, log_x = "Label efficiency: test macro-F1 vs label fraction", "label fraction", "", "labels", True
            fixed = f"fs {fmt_axis(t.fs0)} Hz"
        else:
            heading, what, unit, block, log_x = "Sampling-rate sweep: test macro-F1 vs fs", "fs", " Hz", "fs", False
            fixed = f"label fraction {fmt_axis(t.lf0)}"
        lines = [f"## {heading}", "", f"Pre-trained (each pretext's largest patient fraction) vs random init at each {what}, "
                 f"{fixed}; pairs = the same seed.", ""]
        rows, panels, notes = [], [], []

        def cell(model, pretext, v):
            return t.cell(model, pretext, v, t.lf0) if axis == "fs" else t.cell(model, pretext, t.fs0, v)

        for model in t.models:
            random_values = t.values(model, RANDOM, axis)
            series = []
            for pretext in t.pretexts(model):
                shared = [v for v in t.values(model, pretext, axis) if v in random_values]
                if len(shared) < 2:
                    continue
                xs, groups, points = [], [], []
                for v in shared:
                    pf, pre = cell(model, pretext, v)
                    p = compare_cells(pre, cell(model, RANDOM, v)[1], "test_macro_f1")
                    rows.append([model.label, pretext, fmt_axis(v), fmt_axis(pf)] + stat_cells(p))
                    notes += pairing_notes(f"{model.label}, {pretext}, {what} {fmt_axis(v)}{unit}", p)
                    self._count(p)
                    points.append((v, p))
                    xs.append(v)
                    groups.append(np.array([r.value("test_macro_f1") for r in pre.values()]))
                series.append((pretext, xs, groups))
                self.findings.append(sweep_finding(f"{model.label}, {pretext} by {what}", what, points, unit))
            if series:
                rnd_groups = [np.array([r.value("test_macro_f1") for r in cell(model, RANDOM, v)[1].values()]) for v in random_values]
                panels.append((model.label, [("random init", random_values, rnd_groups)] + series, []))
        if not rows:
            return lines + missing(f"no pretext with runs at two or more values of {what} next to random-init runs at the same values, "
                                   f"{fixed} ({t.has_block(block)})")
        png = self.out / f"{axis}.png"
        plot_sweep(png, what + (f" ({unit.strip()})" if unit else "") + (" (log scale)" if log_x else ""), panels, log_x=log_x)
        self.figures.append(png)
        return (lines + md_table(["model", "pretext", what + (f" ({unit.strip()})" if unit else ""), "patient fraction"] + STAT_HEADER, rows) + [""]
                + [f"- {n}" for n in dict.fromkeys(notes)] + ([""] if notes else [])
                + [f"![test macro-F1 vs {what}]({png.name})", ""])

    # extra test sets
    def extra_section(self) -> list[str]:
        t = self.t
        lines = ["## Extra test sets", "", "Models of the default setting scored on each `--extra-test` folder: pre-trained vs "
                 "random init, paired by seed, as in Q1.", ""]
        names = list(dict.fromkeys(m.group(1) for c in t.columns if (m := EXTRA.match(c)) and m.group(2) == "macro"))
        if not names:
            return lines + missing("no extra_<name>_macro_f1 columns (the grid ran without --extra-test)")
        rows, notes = [], []
        for name in names:
            challenge = f"extra_{name}_challenge_f1"
            for model in t.models:
                for c in self.contrasts_of(model, f"extra_{name}_macro_f1", challenge):
                    if not c.macro.n:
                        continue
                    rows.append([name, model.label, c.pretext, "macro-F1"] + stat_cells(c.macro))
                    if c.challenge.n:
                        rows.append([name, model.label, c.pretext, "challenge F1"] + stat_cells(c.challenge))
                    self._count(c.macro)
                    notes += pairing_notes(f"{name}, {model.label}, {c.pretext}", c.macro)
                    self.findings.append(finding(f"extra test set {name}, {model.label}, {c.pretext} vs random init", c.macro))
        if not rows:
            return lines + missing(f"the extra test columns ({', '.join(names)}) have no pre-trained and random-init runs "
                                   "with scores at the default setting")
        return (lines + md_table(["test set", "model", "pretext", "metric"] + STAT_HEADER, rows) + [""]
                + [f"- {n}" for n in dict.fromkeys(notes)] + ([""] if notes else []))

    # published
    def published_section(self, scale_note: str | None) -> list[str]:
        t = self.t
        header = ["source", "model", "setting", "test macro-F1", "F1 N", "F1 A", "F1 O", "F1 ~"]
        rows = []
        for pub in PUBLISHED:
            f1 = fmt(pub.f1) + (f" +- {fmt(pub.std)}" if pub.std is not None else "")
            rows.append([f"published: {pub.source}", pub.model, pub.setting, f1] + ([fmt(x) for x in pub.per_class] if pub.per_class else [""] * 4))
        class_cols = [f"test_f1_{CLASS_COLUMN[c]}" for c in CINC_CLASSES]

        def ours(model: Model, setting: str, runs: list[Run]) -> list[str]:
            per_class = [fmt(_mean([r.value(c) for r in runs])) for c in class_cols]
            return [f"**ours** (n={len(runs)})", model.label, setting, fmt_ms([r.value("test_macro_f1") for r in runs])] + per_class

        for model in t.models:
            _, rnd = t.cell(model, RANDOM, t.fs0, t.lf0)
            if rnd:
                rows.append(ours(model, "random init", list(rnd.values())))
            best = None
            for pretext in t.pretexts(model):
                pf, pre = t.cell(model, pretext, t.fs0, t.lf0)
                if pre:
                    rows.append(ours(model, f"{pretext}, patient fraction {fmt_axis(pf)}" if pf is not None else pretext, list(pre.values())))
                    mean = _mean([r.value("test_macro_f1") for r in pre.values()])
                    best = max(best or (mean, pretext), (mean, pretext))
            if (level := self.level_finding(model, rnd, best)) is not None:
                self.findings.append(level)
        lines = ["## Published numbers beside ours", "",
                 f"Theirs are marked *published* and were measured on their own test splits; ours are at fs {fmt_axis(t.fs0)} Hz, "
                 f"label fraction {fmt_axis(t.lf0)} (per-class F1: means over seeds). Compare levels loosely, differences within "
                 "one table more firmly.", ""]
        lines += md_table(header, rows) + [""] + [f"- {n}" for n in PUBLISHED_NOTES] + [""]
        lines += ["### Differences of scale", "", self.scale_paragraph(scale_note), ""]
        return lines

    def level_finding(self, model: Model, rnd: dict, best: tuple[float, str] | None) -> str | None:
        """Our levels beside the published ones of the same kind of model (levels only: other splits, other scale)."""
        kind = {INPUT_1D: "1-D ResNet-18v2", INPUT_2D: "2-D ResNet-18, spectrograms"}.get(model.input)
        pubs = [p for p in PUBLISHED if p.model == kind]
        parts = []
        if rnd and pubs:
            theirs = " and ".join(f"{fmt(p.f1)} ({p.source})" for p in pubs if p.setting == "random init")
            parts.append(f"random init {fmt(_mean([r.value('test_macro_f1') for r in rnd.values()]))} (published: {theirs})")
        if best and pubs:
            top = max((p for p in pubs if p.setting != "random init"), key=lambda p: p.f1)
            parts.append(f"best pre-trained mean {fmt(best[0])} ({best[1]}; published best: {fmt(top.f1)}, {top.source}, {top.setting})")
        if not parts:
            return None
        return (f"{model.label} beside the published numbers: " + "; ".join(parts)
                + ". Levels only: their test splits and scale differ from ours.")

    def scale_paragraph(self, scale_note: str | None) -> str:
        t = self.t
        n_seeds = [len(cell) for model in t.models for p in [RANDOM, *t.pretexts(model)] if (cell := t.cell(model, p, t.fs0, t.lf0)[1])]
        seeds = "-" if not n_seeds else str(n_seeds[0]) if min(n_seeds) == max(n_seeds) else f"{min(n_seeds)} to {max(n_seeds)}"
        parts = [f"models {', '.join(m.label for m in t.models)}",
                 f"fine-tuning at {', '.join(fmt_axis(f) for f in sorted({r.fs for r in t.runs}))} Hz (default {fmt_axis(t.fs0)} Hz)",
                 f"{seeds} seeds per setting at the default setting",
                 f"label fractions {', '.join(fmt_axis(x) for x in sorted({r.label_fraction for r in t.runs}))}"]
        pfs = sorted({r.patient_fraction for r in t.runs if r.patient_fraction is not None})
        if pfs:
            parts.append(f"pre-training patient fractions {', '.join(fmt_axis(x) for x in pfs)}")
        epochs = np.array([r.value("epochs_run") for r in t.runs])
        if np.isfinite(epochs).any():
            parts.append(f"{fmt(float(np.nanmean(epochs)))} fine-tuning epochs run on average (at most {fmt_axis(float(np.nanmax(epochs)))})")
        records = np.array([r.value("train_records") for r in t.runs if r.label_fraction == t.lf0])
        if np.isfinite(records).any():
            parts.append(f"{fmt_axis(float(np.nanmax(records)))} training records at label fraction {fmt_axis(t.lf0)}")
        text = f"Published: {PUBLISHED_SCALE}. Ours, from the table: {'; '.join(parts)}."
        if scale_note:
            text += f" Ours, as the grid states its scale: {scale_note.strip()}."
        else:
            text += (" The table does not record the hours of pre-training ECG, the number of pre-training patients or the network "
                     "width; `--scale-note` states them.")
        return text


def write_report(results: str | Path, out: str | Path | None = None, title: str | None = None, scale_note: str | None = None) -> Path:
    """Write ``report.md`` and its PNG figures into ``out`` (default: the table's folder / ``report``); returns report.md's path."""
    results = Path(results)
    runs, columns = load_runs(results)
    table = Table(results, runs, columns)
    out = Path(out) if out is not None else results.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(table, out)

    body = rep.pretext_section("Q1: does pre-training help? (1-D)", INPUT_1D, "q1")
    q2 = rep.pretext_section("Q2: the 2-D STFT arm", INPUT_2D, "q2")
    body += q2 + rep.side_by_side()
    body += rep.patient_section() + rep.sweep_section("label_fraction") + rep.sweep_section("fs") + rep.extra_section()
    body += rep.published_section(scale_note)

    blocks = ", ".join(f"`{b}` {n}" for b, n in sorted(table.blocks.items())) or "none named"
    head = [f"# {title or 'Experiment report'}", "",
            f"Generated by `ecgtl report` from `{results.name}` alone ({len(runs)} fine-tuning runs; rows per grid block: {blocks}). "
            f"Default setting: fs {fmt_axis(table.fs0)} Hz (the most common), label fraction {fmt_axis(table.lf0)}, each pretext's "
            "largest pre-training patient fraction. Numbers are cut, not rounded, to 3 decimals.", ""]
    if scale_note:
        head += [f"Scale: {scale_note.strip()}", ""]
    summary = ["## What it shows", ""] + [f"- {f}" for f in rep.findings]
    if not rep.findings:
        summary.append("- The table has no pre-trained vs random-init comparison yet.")
    if rep.tests:
        summary += ["", f"{rep.significant} of {rep.tests} tested comparisons were significant by the rule below. The p-values are not "
                    "corrected for the number of comparisons, so with many comparisons an isolated significant one is weak evidence.", ""]
    else:
        summary += ["", f"No comparison had the {MIN_PAIRS_FOR_TEST} seed pairs a test needs, so this table supports no claim "
                    "of an effect either way.", ""]
    method = ["## Method", "",
              "- Pairs: a pre-trained run and a random-init run with the same fine-tuning seed (and split seed); seeds without a "
              "partner are left out and named under the table.",
              "- Mean +- std: over seeds (sample std). Difference: mean of the paired differences, pre-trained - random init.",
              f"- 95% CI: percentile bootstrap of the mean paired difference, {BOOTSTRAP_RESAMPLES:,} resamples of the seed pairs, "
              f"RNG seed {BOOTSTRAP_SEED}.",
              f"- Tests over seed pairs: paired t-test and Wilcoxon signed-rank (scipy.stats), none with fewer than "
              f"{MIN_PAIRS_FOR_TEST} pairs. *Significant* means t-test p < {ALPHA} and a CI that excludes 0 and, with "
              f"{MIN_PAIRS_FOR_WILCOXON} or more pairs (fewer cannot reach p < {ALPHA} in the Wilcoxon test), Wilcoxon p < {ALPHA}.",
              "- Numbers are cut toward zero to 3 decimals (never rounded up); a p-value prints as 0.049 or less exactly when it is "
              "below 0.05.", ""]
    text = "\n".join(head + summary + body + method)
    path = out / "report.md"
    atomic_write(path, text.rstrip("\n") + "\n")
    return path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="RESULTS.csv", help="the experiment's results table (written by `ecgtl experiment`)")
    p.add_argument("--out", metavar="DIR", help="folder for report.md and the figures (default: the table's folder/report)")
    p.add_argument("--title", help="the report's title (default: Experiment report)")
    p.add_argument("--scale-note", metavar="TEXT", help="one line on the scale the grid ran at (pre-training hours, patients, "
                   "width, epochs, seeds), quoted beside the published scale")

    def run(args) -> int:
        path = write_report(args.results, args.out, args.title, args.scale_note)
        print(f"report: {path}")
        return 0

    p.set_defaults(func=run)
