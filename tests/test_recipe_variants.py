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


def test_the_gpu_screening_holds_the_gpu_presets_model():
    gpu = load_config(FinetuneConfig, "gpu", "finetune")
    screened = [load_config(FinetuneConfig, "cpu", "finetune", list(spec["set"])) for p, _, spec in VARIANTS if p == FILES[1]]
    assert any((c.model.name, c.model.width, c.fs) == (gpu.model.name, gpu.model.width, gpu.fs) for c in screened)
