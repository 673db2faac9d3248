"""``transfer``: the transfer matrix, prompts found against one defense replayed on the others."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli._common import EXIT_FAILED_CELLS, existing_folder, quiet_library_progress
from benchmark.harness.config import split_names

HELP = "transfer matrix: prompts found against one defense, replayed on the others"
DESCRIPTION = (
    "Export every (task, defense, attack) cell of SOURCE_RUN, replay each export on the target defenses and on its "
    "own (a round trip that must give the source's ASR), one run per cell in SOURCE_RUN's store, with the exported "
    "seeds and guidance (cached: a rerun computes nothing), and write transfer.csv (long form), transfer.md and "
    "heatmaps: rows = the defense the prompts were found against, columns = the defense they were replayed on, "
    "cells = ASR with n and 95% Wilson interval; the diagonal is the attack's ASR in SOURCE_RUN. Definitions: "
    "reports/transfer.py.")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("transfer", help=HELP, description=DESCRIPTION)
    parser.add_argument("source_run", type=Path, help="a run with attacks against several defenses")
    parser.add_argument("--to", action="append", help="target defense(s), comma-separated (default: the source "
                        "run's defenses)")
    parser.add_argument("--task", action="append", help="only these task(s)")
    parser.add_argument("--defense", action="append", help="only the prompts found against these defense(s)")
    parser.add_argument("--attack", action="append", help="only these attack(s)")
    parser.add_argument("-o", "--out", "--output", dest="out", type=Path,
                        help="where this command writes: the matrix's folder (default: SOURCE_RUN/transfer); the "
                        "replay runs go to SOURCE_RUN's store")
    parser.add_argument("--device", help="device of the replays (default: the source run's)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    from benchmark.harness.transfer import run_transfer
    from reports.transfer import render_markdown

    source = existing_folder(args.source_run, "SOURCE_RUN")
    quiet_library_progress()
    result = run_transfer(source, args.out or source / "transfer", targets=split_names(args.to),
                          tasks=split_names(args.task), defenses=split_names(args.defense),
                          attacks=split_names(args.attack), device=args.device, plots=not args.no_plots)
    print(render_markdown(result.matrix))
    for line in result.failures:
        print(f"error: replay cell failed: {line}", file=sys.stderr)
    print(result.files[0].parent)
    return EXIT_FAILED_CELLS if result.failures else 0
