"""The one command line: ``ecgtl <command> ...``.

Each command lives next to the code it drives and registers its options through an
``add_parser(subparsers)`` function that sets ``func``. :data:`COMMANDS` lists them with
their one-line help, so ``ecgtl --help`` needs no import, and a run imports only the module
of the command given: ``download`` and ``prepare`` never load PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ecgtl import __version__
from ecgtl.errors import EcgtlError

#: command -> (module with ``add_parser``, one-line help); a module may register several commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("ecgtl.data.download.cli", "download PhysioNet databases (verified, resumable)"),
    "prepare": ("ecgtl.data.prepare", "build the pre-training store (memory-mapped signals + beat arrays)"),
    "pretrain": ("ecgtl.train.pretrain", "pre-train a backbone on the store (beat, rhythm, heart_rate, future)"),
    "finetune": ("ecgtl.train.finetune", "fine-tune on PhysioNet/CinC 2017 (random init or a pre-trained backbone)"),
    "evaluate": ("ecgtl.evaluate.commands", "score a model on a folder in the CinC 2017 layout"),
    "predict": ("ecgtl.evaluate.commands", "classify recordings (WFDB, CinC .mat, CSV, NumPy)"),
    "export": ("ecgtl.evaluate.commands", "export a model to ONNX, checked with onnxruntime"),
    "ensemble": ("ecgtl.evaluate.ensemble", "save several fine-tuned models as one, with biases fitted on their average"),
    "experiment": ("ecgtl.experiments.runner", "run the study's grid (pretext x architecture x data x labels x rate x seeds), resumable"),
    "report": ("ecgtl.experiments.report", "Markdown + figures from an experiment's results table"),
    "pipeline": ("ecgtl.pipeline", "the main job: data -> the experiment grid -> its report (resumable)"),
}


class _Subcommands:
    """What a module's ``add_parser`` receives: argparse's subparsers, with each command's help from :data:`COMMANDS`."""

    def __init__(self, subparsers):
        self._subparsers = subparsers

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("help", COMMANDS[name][1])
        return self._subparsers.add_parser(name, **kwargs)


def _command_of(argv: list[str]) -> str | None:
    """The command named in ``argv``: the first word that is not an option (the top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the named command's module is imported (the others are listed by name)."""
    parser = argparse.ArgumentParser(prog="ecgtl", description="Transfer learning for ECG classification "
                                     "(pre-train on Icentia11k, fine-tune on PhysioNet/CinC 2017).")
    parser.add_argument("--version", action="version", version=f"ecgtl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_of(argv) if argv is not None else None
    wanted = {module for module, _ in COMMANDS.values()} if argv is None else {COMMANDS[chosen][0]} if chosen in COMMANDS else set()
    loaded: set[str] = set()
    for name, (module, help) in COMMANDS.items():
        if module not in wanted:
            sub.add_parser(name, help=help, add_help=False)  # listed in --help; never parsed
        elif module not in loaded:
            importlib.import_module(module).add_parser(_Subcommands(sub))
            loaded.add(module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EcgtlError as err:
        print(f"ecgtl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecgtl {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ecgtl experiment cpu --dry-run | head`: the reader has gone, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
