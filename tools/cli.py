"""`portrait` — the command-line entry point.

Each subcommand lives in its own module ``tools/cmd_<name>.py`` exposing
``register(subparsers)``; the module's parser sets ``func(args) -> int``. Errors the user
can cause are :class:`engine.errors.PortraitError`: printed as one ``error: ...`` line,
exit code non-zero. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from engine import __version__
from engine.errors import PortraitError

# Order is the order shown in --help.
SUBCOMMANDS = ("demo", "run", "validate", "track", "train", "bench",
               "submit", "status", "cancel", "retry",
               "drive",
               "render",
               "qc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portrait",
        description="Portrait Engine: personalised neural talking-head rendering for film and VFX.")
    parser.add_argument("--version", action="version", version=f"portrait {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"tools.cmd_{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PortraitError as exc:
        msg = str(exc).strip().splitlines()
        print(f"error: {msg[0] if msg else type(exc).__name__}", file=sys.stderr)
        for extra in msg[1:]:
            print(f"error: {extra}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
