"""The one command line: ``ecgtl <command> ...``.

Each command lives next to the code it drives and registers itself here through an
``add_parser(subparsers)`` function that sets ``func``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ecgtl import __version__
from ecgtl.errors import EcgtlError


def build_parser() -> argparse.ArgumentParser:
    from ecgtl import pipeline
    from ecgtl.data import download, prepare
    from ecgtl.evaluate import commands as evaluate_commands
    from ecgtl.train import finetune, pretrain

    parser = argparse.ArgumentParser(prog="ecgtl", description="Transfer learning for ECG classification "
                                     "(pre-train on Icentia11k, fine-tune on PhysioNet/CinC 2017).")
    parser.add_argument("--version", action="version", version=f"ecgtl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (download, prepare, pretrain, finetune, evaluate_commands, pipeline):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
