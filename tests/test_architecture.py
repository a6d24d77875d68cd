"""The layers import one way: every import inside ``src/ecgtl`` (module level or inside a function)
points to the same package or to a lower layer, so no cycle can hide in a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ecgtl"

#: Lowest first. Packages of one layer do not import each other (data and models are independent).
LAYERS = [
    {"ecgtl", "ecgtl.errors", "ecgtl.constants", "ecgtl.fileio", "ecgtl.runtime"},
    {"ecgtl.signal"},  # signal processing on arrays (QRS detection)
    {"ecgtl.tasks"},  # label rules of the pretext tasks and their registry
    {"ecgtl.data", "ecgtl.models", "ecgtl.config"},  # readers, store, sampler | networks, cards | presets
    {"ecgtl.evaluate"},  # metrics, inference, the evaluate / predict / export commands
    {"ecgtl.train"},  # the engine, pre-training, fine-tuning
    {"ecgtl.experiments"},  # comparisons and grids over runs
    {"ecgtl.pipeline"},
    {"ecgtl.cli"},
    {"ecgtl.__main__"},
]


def _unit(module: str) -> str:
    """The layer unit of a module: the longest name listed in LAYERS that is ``module`` or a parent of it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if any(name in layer for layer in LAYERS):
            return name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), is_package, path


def _imports(module: str, is_package: bool, path: Path):
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # "from ecgtl import pipeline" imports ecgtl.pipeline
                yield f"{target}.{alias.name}", node.lineno


def _violations():
    known = {m for m, _, _ in _modules()}
    found = []
    for module, is_package, path in _modules():
        here = _unit(module)
        for target, line in _imports(module, is_package, path):
            if not (target == "ecgtl" or target.startswith("ecgtl.")) or (target not in known and target != "ecgtl"):
                continue  # third-party, or "from ecgtl.x import name" where name is not a module
            there = _unit(target)
            if there != here and _layer(there) >= _layer(here):
                found.append(f"{path.relative_to(SRC.parent)}:{line}: {module} ({here}) imports {target} ({there})")
    return found


def test_imports_point_down_the_layers():
    assert _violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule is live: an import of training from the evaluation layer, even inside a function, is reported."""
    fake = SRC / "evaluate" / "_layer_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, _real=Path.read_text, **k: (
        "def f():\n    from ecgtl.train.engine import Trainer\n" if self == fake else _real(self, *a, **k)))
    monkeypatch.setattr(Path, "rglob", lambda self, pattern, _real=Path.rglob: [*_real(self, pattern), fake]
                        if self == SRC else _real(self, pattern))
    found = _violations()
    assert len(found) == 1 and "ecgtl.evaluate._layer_probe" in found[0] and "ecgtl.train.engine" in found[0], found


def test_download_prepare_and_the_label_rules_load_without_torch():
    """The data commands that need no network weights run without loading PyTorch (a fast command line)."""
    code = "import sys, ecgtl.data.download, ecgtl.data.prepare, ecgtl.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
