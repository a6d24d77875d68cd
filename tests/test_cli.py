"""The command line: every command is listed and parses, and a command imports only its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecgtl.cli import COMMANDS, build_parser, main


def _modules_loaded_by(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom ecgtl.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(m for m in sys.modules if m == 'torch' or m.startswith('ecgtl.'))))" % argv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().splitlines()[-1].split())


def test_help_lists_every_command_without_importing_any(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.split("COMMAND\n", 2)[-1].splitlines() if line.startswith("    ") and line.split()]
    assert [n for n in listed if n in COMMANDS] == list(COMMANDS)
    loaded = _modules_loaded_by(["--help"])
    assert "torch" not in loaded and not {m for m, _ in COMMANDS.values()} & loaded, loaded


@pytest.mark.parametrize("command, torch_free", [("download", True), ("prepare", True), ("predict", False)])
def test_a_command_imports_only_its_own_module(command, torch_free):
    loaded = _modules_loaded_by([command, "--help"])
    assert COMMANDS[command][0] in loaded
    # the data commands share the data layer (prepare reads download's patient ranges); the others are heavier
    others = {m for m, _ in COMMANDS.values() if m != COMMANDS[command][0] and not m.startswith("ecgtl.data.")}
    assert not others & loaded, others & loaded
    assert ("torch" not in loaded) == torch_free


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_its_own_options(command, capsys):
    parser = build_parser()  # all modules: what the docs are made from
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: ecgtl {command}" in text and "--" in text.split("options:")[-1]


def test_an_unknown_command_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrian"])
    assert exit_.value.code == 2
    assert "invalid choice: 'pretrian'" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "presets"), [("finetune", "cpu, gpu, paper"), ("pretrain", "cpu, paper")])
def test_the_help_names_the_commands_own_presets(command, presets, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert f"preset name ({presets}) or YAML path" in " ".join(capsys.readouterr().out.split())
