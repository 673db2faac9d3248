"""``merge``: the records and leaderboard of a multi-process run whose workers have finished."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.api.errors import RunFailedError
from benchmark.cli._common import (
    EXIT_FAILED_CELLS,
    existing_folder,
    print_summary,
    quiet_library_progress,
    report_incomplete,
)

HELP = "write the records and leaderboard of a multi-process run whose workers have finished"
DESCRIPTION = ("Read every cell of RUN_DIR's config (RUN_DIR/config.yaml) from the store (RUN_DIR's parent) and "
               "write records.parquet and the leaderboards exactly as a one-process run writes them. Computes "
               "nothing: exit 4 with the missing cells listed when some worker has not finished (rerun the run's "
               "command to compute them).")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("merge", help=HELP, description=DESCRIPTION)
    parser.add_argument("run_dir", type=Path, help="the run directory (its name is printed and logged by `run`)")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    from benchmark.harness.runner import RunIncompleteError
    from benchmark.harness.scale import merge as merge_run

    run_dir = existing_folder(args.run_dir, "RUN_DIR")
    quiet_library_progress()
    try:
        summary = merge_run(run_dir)
    except RunFailedError as failed:
        print(failed.summary.markdown)
        print(f"error: {len(failed.failures)} cell(s) failed (details: {failed.summary.run_dir / 'failures.json'})",
              file=sys.stderr)
        return EXIT_FAILED_CELLS
    except RunIncompleteError as incomplete:
        return report_incomplete(incomplete)
    return print_summary(summary)
