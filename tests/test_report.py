"""``ecgtl report``: a results table in, report.md and figures out, with the right numbers and plain verdicts."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest

from ecgtl.cli import main
from ecgtl.errors import DataError
from ecgtl.experiments.report import PUBLISHED, fmt, fmt_p, paired_test, write_report
from ecgtl.experiments.results import write_results

ARCH_1D, ARCH_2D = "resnet18_preact", "resnet18_preact_2d_stft"
RANDOM_F1 = [0.700, 0.712, 0.695]  # random init, seeds 0, 1, 2
BEAT_GAIN = [0.051, 0.048, 0.051]  # a clear effect: mean +0.050, all seeds agree
RHYTHM_GAIN = [0.010, -0.012, 0.003]  # no effect: mean +0.000333


def _row(arch, pretext, seed, f1, pf=1.0, fs=250, lf=1.0, blocks="q1", extra=None):
    pf = None if pretext == "none" else pf
    rid = f"{arch}-{pretext}-pf{pf}-fs{fs}-lf{lf}-s{seed}"
    curve = [round(f1 * (1 - 0.5 ** (e + 1)), 5) for e in range(8 + seed)]  # rises to f1; runs of different length
    row = {"run_id": rid, "blocks": blocks, "arch": arch, "input": "2d_stft" if arch == ARCH_2D else "1d", "pretext": pretext,
           "patient_fraction": pf, "fs": fs, "label_fraction": lf, "seed": seed, "split_seed": 0, "finetune_preset": "cpu",
           "val_macro_f1": f1 + 0.01, "test_macro_f1": f1, "test_macro_f1_lo": f1 - 0.02, "test_macro_f1_hi": f1 + 0.02,
           "test_challenge_f1": f1 + 0.04, "test_f1_N": 0.9, "test_f1_A": f1, "test_f1_O": f1 - 0.05, "test_f1_noisy": f1 - 0.1,
           "best_epoch": 6 + seed, "epochs_run": 8 + seed, "epochs_to_95": 5 if pretext == "none" else 3,
           "seconds_to_95": 50.0 if pretext == "none" else 30.0, "train_seconds": 100.0 + seed, "train_records": int(5000 * lf),
           "val_macro_f1_curve": curve, "train_seconds_curve": [10.0] * len(curve)}
    if extra is not None:
        row["extra_ptbxl_macro_f1"] = extra
    return row


def _grid(q2=True, q3=True, labels=True, fs=True, extra=True):
    rows = []
    for s, base in enumerate(RANDOM_F1):
        rows.append(_row(ARCH_1D, "none", s, base, extra=0.5 + s / 100 if extra else None))
        rows.append(_row(ARCH_1D, "beat", s, base + BEAT_GAIN[s], extra=0.6 + s / 100 if extra else None))
        rows.append(_row(ARCH_1D, "rhythm", s, base + RHYTHM_GAIN[s], extra=0.5 + s / 100 if extra else None))
        if q2:
            rows.append(_row(ARCH_2D, "none", s, base - 0.01, blocks="q2"))
            rows.append(_row(ARCH_2D, "beat", s, base + 0.02 + s / 1000, blocks="q2"))
        if q3:
            for pf, gain in ((0.01, 0.01), (0.1, 0.03)):
                rows.append(_row(ARCH_1D, "beat", s, base + gain + [0.004, -0.003, 0.0][s], pf=pf, blocks="q3"))
        if labels:
            for lf in (0.01, 0.1):
                rows.append(_row(ARCH_1D, "none", s, base - 0.2 * (1 - lf), lf=lf, blocks="labels"))
                rows.append(_row(ARCH_1D, "beat", s, base - 0.15 * (1 - lf) + [0.001, 0.0, 0.002][s], lf=lf, blocks="labels"))
        if fs:
            rows.append(_row(ARCH_1D, "none", s, base - 0.03, fs=125, blocks="fs"))
            rows.append(_row(ARCH_1D, "beat", s, base - 0.03 + RHYTHM_GAIN[s], fs=125, blocks="fs"))
    return rows


@pytest.fixture
def full_table(tmp_path):
    path = tmp_path / "grid" / "results.csv"
    path.parent.mkdir()
    write_results(path, _grid())
    return path


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def _table_row(section: str, *cells: str) -> list[str]:
    """The cells of the first Markdown table row starting with ``cells``."""
    for line in section.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if parts[: len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in:\n{section}")


def test_report_of_a_full_grid(full_table):
    path = write_report(full_table, title="Synthetic grid", scale_note="toy scale: 3 seeds, width 0.25")
    out = full_table.parent / "report"
    assert path == out / "report.md"
    for png in ("curves_resnet18_preact.png", "curves_resnet18_preact_2d_stft.png", "patient_fraction.png", "label_fraction.png", "fs.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in path.read_text()
    text = path.read_text()
    assert text.startswith("# Synthetic grid") and "toy scale: 3 seeds, width 0.25" in text
    assert "_Missing" not in text

    q1 = _section(text, "Q1")
    beat = _table_row(q1, "beat", "1", "macro-F1")
    # n, random, pre-trained, difference, CI, Wilcoxon p, t-test p, significant
    assert beat[3] == "3" and beat[4] == "0.702 +- 0.008" and beat[5] == "0.752 +- 0.007"
    assert beat[6] == "+0.050" and beat[7] == "+0.048 to +0.051" and beat[-1] == "yes"
    assert beat[9] == "<0.001"  # t-test: t = 50 with 2 degrees of freedom
    rhythm = _table_row(q1, "rhythm", "1", "macro-F1")
    assert rhythm[6] == "+0.000" and rhythm[-1] == "no" and float(rhythm[9]) > 0.5
    assert _table_row(q1, "beat", "1", "challenge F1")[6] == "+0.050"
    assert q1.count("the Wilcoxon test cannot reach p < 0.05") == 1  # one line under the table, not one per row
    times = _table_row(q1, "beat", "3")  # time to 95%: epochs 5 (random) vs 3, seconds 50 vs 30
    assert times[2:6] == ["5.000 +- 0.000", "3.000 +- 0.000", "50.000 +- 0.000", "30.000 +- 0.000"]

    summary = _section(text, "What it shows")
    beat_line = next(line for line in summary.splitlines() if "resnet18_preact (1d), beat vs random init" in line)
    assert "raised test macro-F1 by 0.050" in beat_line and "; significant (" in beat_line
    rhythm_line = next(line for line in summary.splitlines() if "resnet18_preact (1d), rhythm vs random init" in line)
    assert "not significant" in rhythm_line and "raised" not in rhythm_line
    assert re.search(r"\d+ of \d+ tested comparisons were significant", summary)

    q2 = _section(text, "Q2")
    assert _table_row(q2, "beat", "1", "macro-F1")[6] == "+0.031"  # 0.02 + 0.01 + mean(0, 1, 2) / 1000
    side = _table_row(q2.split("### 1-D and 2-D side by side")[1], "beat")
    assert side[1].endswith("(+0.050*)") and side[2].endswith("(+0.031*)")

    q3 = _section(text, "Q3")
    assert _table_row(q3, "resnet18_preact (1d)", "beat", "0.1")[6] == "+0.030"
    assert _table_row(q3, "resnet18_preact (1d)", "beat", "1")[6] == "+0.050"

    labels = _section(text, "Label efficiency")
    assert _table_row(labels, "resnet18_preact (1d)", "beat", "0.01")[7] == "+0.050"  # 0.198 - 0.1485 + mean(0.001, 0, 0.002)
    fs = _section(text, "Sampling-rate sweep")
    assert "higher on average but not significantly at fs" not in text and "not higher (pre-training did not help) at fs 125 Hz" in text
    assert _table_row(fs, "resnet18_preact (1d)", "beat", "125")[-1] == "no"
    assert _table_row(fs, "resnet18_preact (1d)", "beat", "250")[-1] == "yes"

    extra = _section(text, "Extra test sets")
    assert _table_row(extra, "ptbxl", "resnet18_preact (1d)", "beat", "macro-F1")[7] == "+0.100"

    published = _section(text, "Published numbers beside ours")
    assert "published: Weimann & Conrad 2021" in published and "0.731 +- 0.019" in published and "0.779 +- 0.014" in published
    assert "**ours** (n=3)" in published and "toy scale" in published and "11,000 patients" in published
    assert "fine-tuning at 125, 250 Hz (default 250 Hz)" in published


def test_report_is_reproducible(full_table, tmp_path):
    a = write_report(full_table, tmp_path / "a").read_text()
    b = write_report(full_table, tmp_path / "b").read_text()
    assert a == b  # fixed bootstrap seed: the same table gives the same report


def test_missing_blocks_give_a_line_not_a_crash(tmp_path):
    path = tmp_path / "results.csv"
    write_results(path, _grid(q2=False, q3=False, labels=False, fs=False, extra=False))
    text = write_report(path).read_text()
    for heading in ("Q2", "Q3", "Label efficiency", "Sampling-rate sweep", "Extra test sets"):
        assert "_Missing: " in _section(text, heading), heading
    assert "no runs with input `2d_stft`" in _section(text, "Q2") and "grid block `q3`" in _section(text, "Q3")
    assert "_Missing" not in _section(text, "Q1")

    write_results(path, [r for r in _grid() if r["pretext"] == "none"])  # random init only
    text = write_report(path).read_text()
    assert "_Missing: no pre-trained runs of resnet18_preact (1d)" in _section(text, "Q1")
    assert "resnet18_preact (1d) beside the published numbers: random init 0.702 (published: 0.731" in text

    write_results(path, [r for r in _grid() if r["seed"] == 0])  # one seed: numbers but no test
    text = write_report(path).read_text()
    beat = _table_row(_section(text, "Q1"), "beat", "1", "macro-F1")
    assert beat[6] == "+0.051" and beat[-1] == "no test"
    assert "too few for a meaningful test, so no claim either way" in _section(text, "What it shows")
    assert "No comparison had the 3 seed pairs a test needs" in text


def test_bad_tables_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothing.csv: no such results table"):
        write_report(tmp_path / "nothing.csv")

    rows = _grid()
    path = tmp_path / "no_fs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "fs"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"no_fs\.csv: .*missing column fs"):
        write_report(path)

    path = tmp_path / "bad_value.csv"
    rows[4]["test_macro_f1"] = "abc"
    write_results(path, rows)
    with pytest.raises(DataError, match=rf"bad_value\.csv: line 6 \(run {re.escape(rows[4]['run_id'])}\): column test_macro_f1: 'abc'"):
        write_report(path)

    path = tmp_path / "bad_curve.csv"
    rows = _grid()
    rows[0]["val_macro_f1_curve"] = "0.5;x"
    write_results(path, rows)
    with pytest.raises(DataError, match=r"bad_curve\.csv: line 2 .*val_macro_f1_curve"):
        write_report(path)

    path = tmp_path / "twice.csv"
    rows = _grid()
    rows.append(dict(rows[0], run_id="again"))
    write_results(path, rows)
    with pytest.raises(DataError, match=r"twice\.csv: runs .* and again .* same arch"):
        write_report(path)


def test_numbers_are_cut_not_rounded():
    assert fmt(0.7779) == "0.777" and fmt(-0.0449) == "-0.044" and fmt(0.731) == "0.731"
    assert fmt(0.15 / 3) == "0.050" and fmt(0.05, signed=True) == "+0.050" and fmt(float("nan")) == "n/a"
    assert fmt(0.78355, digits=4) == "0.7835" and fmt(0.5, digits=4) == "0.5000" and fmt(-0.00489, True, digits=4) == "-0.0048"
    assert fmt_p(0.0499) == "0.049" and fmt_p(0.0501) == "0.050" and fmt_p(1e-5) == "<0.001"


def test_paired_statistics():
    few = paired_test([0.8, 0.81], [0.7, 0.7])
    assert few.n == 2 and not few.tested and not few.significant and "too few" in few.note
    assert few.ci == pytest.approx((0.1, 0.11))

    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.8, 10)
    clear = paired_test(base + 0.05 + rng.normal(0, 0.005, 10), base)
    assert clear.significant and clear.p_t < 0.001 and clear.p_w < 0.01 and clear.ci[0] > 0.04
    null = paired_test(base + rng.normal(0, 0.01, 10), base)
    assert null.tested and not null.significant and null.ci[0] < 0 < null.ci[1]


def test_a_finding_says_suggestive_where_only_the_interval_excludes_zero():
    """3 pairs, all higher (the 2-D STFT pair of the cpu grid): the bootstrap interval excludes 0, the t-test does not."""
    from ecgtl.experiments.report import finding

    up = paired_test([0.740, 0.753, 0.748], [0.736, 0.710, 0.720])
    assert up.tested and not up.significant and up.ci[0] > 0 and up.p_t >= 0.05
    text = finding("2-D, beat vs random init", up)
    assert "suggestive, not significant" in text and "no evidence" not in text
    down = paired_test([0.725, 0.685, 0.705], [0.745, 0.760, 0.744])
    assert down.ci[1] < 0 and not down.significant and "a suggestive, not significant loss" in finding("rhythm", down)
    flat = paired_test([0.753, 0.748, 0.754], [0.745, 0.760, 0.744])  # +0.002 on average, the interval across 0
    assert flat.ci[0] < 0 < flat.ci[1] and finding("beat", flat).endswith("no evidence that pre-training helped.")


def test_published_numbers_are_the_protocols():
    paper = {p.setting: p for p in PUBLISHED if p.source.startswith("Weimann")}
    assert paper["random init"].f1 == 0.731 and paper["beat, frame 2048"].f1 == 0.779
    assert len(PUBLISHED) == 14


def test_command_line(full_table, tmp_path, capsys):
    out = tmp_path / "cli-report"
    assert main(["report", str(full_table), "--out", str(out), "--title", "From the CLI", "--scale-note", "tiny"]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    assert (out / "report.md").read_text().startswith("# From the CLI")

    assert main(["report", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such results table" in capsys.readouterr().err


def test_help_and_module_entry_point(full_table, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ecgtl", "report", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: ecgtl report" in done.stdout and "--scale-note" in done.stdout
    code = "import sys, ecgtl.experiments.report; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["False", "False"]  # the report needs neither PyTorch nor, until it draws, matplotlib


def test_a_sweep_finding_separates_suggestive_points_from_plain_ones():
    """The cpu grid's label-fraction pattern: one significant point, two where only the interval excludes 0, one flat, one lower."""
    from ecgtl.experiments.report import sweep_finding

    up = paired_test([0.740, 0.753, 0.748], [0.736, 0.710, 0.720])  # interval above 0, t-test does not reject
    flat = paired_test([0.753, 0.748, 0.754], [0.745, 0.760, 0.744])  # +0.002, interval across 0
    down = paired_test([0.725, 0.685, 0.705], [0.745, 0.760, 0.744])  # interval below 0, t-test does not reject
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.8, 10)
    clear = paired_test(base + 0.05 + rng.normal(0, 0.005, 10), base)
    text = sweep_finding("beat", "label fraction", [(0.01, up), (0.1, clear), (0.25, up), (0.5, down), (1.0, flat)])
    assert "significantly higher than random init at label fraction 0.1;" in text
    assert "higher, suggestive but not significant (the bootstrap interval excludes 0, the tests do not reject) at label fraction 0.01, 0.25;" in text
    assert "lower, suggestive but not significant (the bootstrap interval lies below 0, the tests do not reject) at label fraction 0.5" in text
    assert "higher on average but not significantly at label fraction 1;" in text  # +0.002, the interval across 0
    same = paired_test([0.745, 0.752, 0.751], [0.744, 0.748, 0.755])  # +0.000 after cutting to 3 decimals
    assert sweep_finding("beat", "fs", [(125, same)], " Hz") == "beat: not higher (pre-training did not help) at fs 125 Hz."
