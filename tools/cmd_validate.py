"""``portrait validate SHOT.yaml [SHOT.yaml ...]``: check shot files, change nothing.

Prints one ``FILE:LINE: key.path: message`` line per problem (every problem, not just the
first) and exits 2 if any file has one; prints ``ok: FILE`` for each valid file and exits 0
when all are valid. It only reads: no output folder, cache or log is created.
"""
from __future__ import annotations

import argparse

from engine.shot import validate_shot


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check shot YAML files (prints FILE:LINE: key: problem; writes nothing)",
        description="Check shot YAML files. Prints one 'FILE:LINE: key.path: message' line per "
                    "problem (all of them) and exits 2 if any file has one; prints 'ok: FILE' "
                    "per valid file and exits 0 otherwise. Reads only: writes nothing.")
    parser.add_argument("shots", nargs="+", metavar="SHOT.yaml", help="shot config file(s)")
    parser.add_argument("--no-file-checks", action="store_true",
                        help="do not check that referenced media and model files exist "
                             "(types, ranges and rules are still checked)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.shots:
        problems = validate_shot(path, check_files=not args.no_file_checks)
        for problem in problems:
            print(problem, flush=True)
        if problems:
            failed = True
        else:
            print(f"ok: {path}", flush=True)
    return 2 if failed else 0
