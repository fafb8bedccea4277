"""The ``dslm`` command: a thin dispatcher over `deepscalelm.commands`.

Each subcommand lives in its own module under ``deepscalelm.commands`` with ``register(subparsers)``
(adds its parser and sets ``func``). Modules import torch lazily inside their ``run`` so that
``dslm predict`` starts fast. A `ValueError` (bad input) or `DSLMError` prints ``dslm: error: ...``
without a traceback and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import DSLMError

# subcommand modules in the order `dslm --help` lists them; a module missing here is skipped
COMMANDS = ("predict", "validate", "check", "apply", "train", "sample", "eval", "finetune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslm",
        description="Signal propagation and DeepScaleLM for deep transformers: predict, validate, "
                    "measure and train.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"deepscalelm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, DSLMError) as exc:
        print(f"dslm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dslm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
