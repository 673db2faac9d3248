"""``python -m benchmark``: one module per command, each declaring its arguments beside its handler.

Examples::

    python -m benchmark run --defense saferedir --attack all
    python -m benchmark run --model tiny-random --task toy --defense none,negative-prompt --out /tmp/runs
    python -m benchmark run --suite smoke
    python -m benchmark list defenses
    python -m benchmark report runs/<run-id>
    python -m benchmark compare reports/leaderboard runs/<run-id>
    python -m benchmark ci --plugin my_defense.py --defense my-defense --against negative-prompt

  several processes (one store, same records as one process; see README "Several GPUs or a cluster"):
    torchrun --nproc-per-node 2 -m benchmark run --defense esd-u,uce --attack all
    python -m benchmark run --defense esd-u --executor slurm --workers 32 --slurm-partition gpu
    python -m benchmark merge runs/<run-id>

Every command: ``-o/--out`` is where it writes (run, ci: the store root; report, transfer: the output folder;
export: the file or folder). Exit codes (the same for every command):
  0 done (compare, ci: no regression)   1 a regression (compare, ci)   2 bad input (one line saying what to fix)
  3 some cells failed (the rest is kept)   4 a multi-process run is incomplete   70 a bug (traceback printed)
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from benchmark.api.errors import UserError
from benchmark.cli import ci, compare, export, merge, report, run, transfer
from benchmark.cli import list as list_command
from benchmark.cli._common import EXIT_BUG, EXIT_USER_ERROR, quiet_libraries
from benchmark.cli.report import print_suite_source
from benchmark.cli.run import config_from_args

__all__ = ["build_parser", "config_from_args", "main", "print_suite_source"]

# In the order `--help` lists them.
COMMANDS = (run, list_command, report, compare, export, transfer, merge, ci)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="unlearn-arena: attack concept-unlearning defenses of text-to-image diffusion models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks of bad input")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    try:
        return args.handler(args)
    except UserError as error:  # bad input: one line, exit 2
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception:  # a bug: the traceback, and an exit code no other outcome uses
        if args.verbose:
            raise
        traceback.print_exc()
        print("error: this is a bug in unlearn-arena (or in a plugin named in the traceback); please report it "
              "with the traceback above", file=sys.stderr)
        return EXIT_BUG
