"""``--json FILE`` / ``--csv FILE`` handling shared by the commands that write records."""

from __future__ import annotations

import argparse
import sys


def write_tables(obj, args: argparse.Namespace) -> bool:
    """Write ``obj.to_json`` / ``obj.to_csv`` to the files named by ``--json`` / ``--csv``.

    A target of ``-`` prints to standard output. Returns True when something went to standard
    output (the caller then skips its human-readable table so the output stays machine-readable).
    """
    wrote_stdout = False
    for kind in ("json", "csv"):
        target = getattr(args, kind)
        if target:
            text = getattr(obj, f"to_{kind}")(None if target == "-" else target)
            if target == "-":
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                wrote_stdout = True
    return wrote_stdout
