"""The recipe variants files (issue 8) hold valid overrides: a typo found here, not minutes into a GPU session."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecgtl.config import FinetuneConfig, load_config
from ecgtl.models import is_model

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "reports" / "recipe-ablation" / "variants.yaml", ROOT / "reports" / "recipe-ablation-gpu" / "variants.yaml"]
VARIANTS = [(f, name, spec) for f in FILES for name, spec in yaml.safe_load(f.read_text()).items()]


@pytest.mark.parametrize("path, name, spec", VARIANTS, ids=[f"{p.parent.name}:{n}" for p, n, _ in VARIANTS])
def test_every_variant_is_a_valid_config_of_a_registered_model(path, name, spec):
    assert set(spec) == {"set"}, f"{path}: {name}: only a list of --set overrides"
    cfg = load_config(FinetuneConfig, "cpu", "finetune", list(spec["set"]))  # the cpu preset + the overrides
    assert is_model(cfg.model.name), f"{path}: {name}: unknown model {cfg.model.name}"


def _recipe(c: FinetuneConfig) -> tuple:
    return (c.model.name, c.model.width, c.model.drop_rate, c.fs, c.crop_seconds, c.optim.lr, c.optim.weight_decay, c.batch_size,
            c.epochs, c.class_weights, c.sampling)


def test_the_gpu_preset_is_the_screened_variant_it_was_chosen_from():
    """The gpu preset is w1-stem4-lr of the GPU screening (chosen on validation, session 10), setting for setting."""
    gpu = load_config(FinetuneConfig, "gpu", "finetune")
    spec = yaml.safe_load(FILES[1].read_text())["w1-stem4-lr"]
    assert _recipe(load_config(FinetuneConfig, "cpu", "finetune", list(spec["set"]))) == _recipe(gpu)
    assert (gpu.optim.lr, gpu.batch_size) != (load_config(FinetuneConfig, "cpu", "finetune").optim.lr,
                                              load_config(FinetuneConfig, "cpu", "finetune").batch_size)


def _metrics(run: Path, curve: list[float]) -> None:
    run.mkdir(parents=True)
    rows = ["round,val_macro_f1"] + [f"{i + 1},{v}" for i, v in enumerate(curve)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "results.json").write_text("{}")


def test_convergence_pairs_runs_by_seed_and_uses_a_fixed_level(tmp_path):
    from script_loader import load_script

    ablation = load_script("recipe_ablation")
    fast = [0.6] * 5 + [0.69] * 10 + [0.72] * 15  # ahead early, reaches 0.70 at epoch 16, best 0.72
    slow = [0.3] * 5 + [0.71] * 10 + [0.8] * 15  # behind early, reaches 0.70 at epoch 6, best 0.80
    _metrics(tmp_path / "pre-seed0", fast)
    _metrics(tmp_path / "base-seed0", slow)
    _metrics(tmp_path / "pre-seed1", fast)  # no base-seed1: seed 1 is not a pair
    lines = ablation.convergence_lines([("pre", "base")], tmp_path)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| pre") or line.startswith("| base")}
    assert sum(line.startswith("| pre ") for line in lines) == 1  # seed 0 only
    assert rows["pre"] == ["pre", "0", "0.600", "0.690", "0.720", "16", "0.720", "-0.080"]
    assert rows["base"] == ["base", "0", "0.300", "0.710", "0.800", "6", "0.800", ""]
    assert lines[-1] == "- pre minus base, best epoch, 1 seed pairs: -0.080 on average (higher in 0, lower in 1)."
    # a share of each run's own best would call "pre" the faster one (95% of 0.72 at epoch 6); the fixed level does not


def test_subset_splits_leave_out_each_stratified_fold_once_and_keep_the_validation_records(tmp_path):
    from ecgtl.data.splits import load_splits, save_splits
    from script_loader import load_script

    ablation = load_script("recipe_ablation")
    classes = ["N"] * 60 + ["A"] * 20 + ["O"] * 15 + ["~"] * 5
    names = [f"A{i:05d}" for i in range(len(classes))]
    (tmp_path / "REFERENCE.csv").write_text("".join(f"{n},{c}\n" for n, c in zip(names, classes)))
    labels = dict(zip(names, classes))
    val = names[::10]
    train = [n for n in names if n not in val]
    selection = save_splits(tmp_path / "selection-splits.json", {"train": train, "val": val, "test": []})
    paths = ablation.subset_splits(selection, 5, tmp_path, tmp_path)
    assert [p.name for p in paths] == [f"selection-kfold5-{i}.json" for i in range(5)]
    left_out = []
    for p in paths:
        s = load_splits(p)
        assert s["val"] == sorted(val) and set(s["train"]) < set(train) and not s["test"]
        out = sorted(set(train) - set(s["train"]))
        assert len(out) == len(train) // 5
        assert sum(labels[n] == "A" for n in out) in (3, 4)  # stratified: 18 AF training records over 5 folds
        left_out += out
    assert sorted(left_out) == sorted(train)  # every training record is left out exactly once
    first = paths[0].read_bytes()
    ablation.subset_splits(selection, 5, tmp_path, tmp_path)  # made once: an existing file is kept as it is
    assert paths[0].read_bytes() == first
