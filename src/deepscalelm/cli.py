"""The ``dslm`` command: a thin dispatcher over `deepscalelm.commands`.

Each subcommand lives in its own module under ``deepscalelm.commands`` with ``register(subparsers)``
(adds its parser and sets ``func``). Modules import torch lazily inside their ``run`` so that
``dslm predict`` starts fast. A `ValueError` (bad input) or `DSLMError` prints one line
``dslm <command>: error: ...`` and exits with status 2; any other exception (a bug, or an
operating-system error such as a full disk) prints one line naming its type and exits with status 1.
``--debug`` (before or after the subcommand) prints the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from .errors import DSLMError

# subcommand modules in the order `dslm --help` lists them; a module missing here is skipped
COMMANDS = ("predict", "validate", "check", "apply", "train", "sweep", "sample", "eval", "export", "finetune")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dslm",
        description="Signal propagation and DeepScaleLM for deep transformers: predict, validate, "
                    "measure and train.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"deepscalelm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.commands.{name}":
                continue
            raise
        module.register(sub)
    for subparser in sub.choices.values():  # `dslm train ... --debug` works too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error")
    return parser


class _ConsoleHandler(logging.Handler):
    """Messages of the library's loggers as plain lines: INFO to stdout, WARNING and above to stderr.

    Writes to the current ``sys.stdout``/``sys.stderr`` at each call (so redirections and test
    capture see them).
    """

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a closed stream must not crash the command
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Show the ``deepscalelm`` loggers' messages on the console (once per process)."""
    lib = logging.getLogger("deepscalelm")
    if not any(isinstance(h, _ConsoleHandler) for h in lib.handlers):
        lib.addHandler(_ConsoleHandler())
    lib.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dslm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _report(args, exc)


def _report(args: argparse.Namespace, exc: Exception) -> int:
    """Print `exc` as one line (or its traceback with --debug); the exit status: 2 for bad input."""
    if args.debug:
        traceback.print_exc()
    if isinstance(exc, (ValueError, DSLMError)):
        print(f"dslm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    text = " ".join(str(exc).split()) or "(no message)"
    hint = "" if args.debug else " (run again with --debug for the traceback)"
    print(f"dslm {args.command}: error: {type(exc).__name__}: {text}{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
