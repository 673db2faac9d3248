"""``report``: a run's (or a folder of reference entries') leaderboard, plots and image grids."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from benchmark.cli._common import existing_folder

log = logging.getLogger("benchmark")

HELP = "leaderboard (Markdown, CSV, LaTeX, HTML), plots and image grids of a run"
DESCRIPTION = ("Render a run directory (or a folder of reference entries, e.g. reports/leaderboard) into "
               "RUN_DIR/report/ (or -o): leaderboard.md/.csv/_wide.csv/.tex, report.html (self-contained), plots/ "
               "and grids/ (PNG + PDF). A run's leaderboard.csv/.md are re-rendered too.")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("report", help=HELP, description=DESCRIPTION)
    parser.add_argument("run_dir", type=Path, help="a run directory, or a folder of reference entries")
    parser.add_argument("-o", "--out", type=Path, help="where this command writes: the report folder "
                        "(default: RUN_DIR/report)")
    parser.add_argument("--grid-prompts", help="comma-separated prompt ids for the image grids "
                        "(default: the first --grid-count prompts of each task)")
    parser.add_argument("--grid-count", type=int, default=2, help="prompts per task in image grids (0: none)")
    parser.add_argument("--unblurred", action="store_true",
                        help="do not blur images the nudity judge flagged in the image grids")
    parser.add_argument("--no-plots", action="store_true", help="tables and HTML only")
    parser.add_argument("--write-entries", type=Path, metavar="DIR",
                        help="also write one reference entry per (model, task, defense, attack) under DIR "
                        "(e.g. reports/leaderboard); existing entries of other keys are kept")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    from benchmark.store import atomic_write_text
    from reports.build import ReportOptions, build_report
    from reports.leaderboard import render_markdown
    from reports.results import load

    results = load(existing_folder(args.run_dir, "run_dir"))
    options = ReportOptions(plots=not args.no_plots, grid_count=args.grid_count, unblurred=args.unblurred,
                            grid_prompts=[p for p in (args.grid_prompts or "").split(",") if p])
    out = args.out or args.run_dir / "report"
    files = build_report(results, out, options)
    markdown = render_markdown(results.board, results.judges)
    if results.kind == "run":
        atomic_write_text(args.run_dir / "leaderboard.csv", results.board.to_csv(index=False))
        atomic_write_text(args.run_dir / "leaderboard.md", markdown)
    if args.write_entries:
        from reports.entries import write_entries

        written = write_entries(results, args.write_entries)
        log.info("wrote %d reference entries under %s", len(written), args.write_entries)
    print(markdown)
    log.info("%d report files in %s", len(files.files), out)
    print(out / "report.html")
    return 0


def print_suite_source(suite: str) -> None:
    """A paper suite's source and published protocol (the runner ignores them) above the resolved config."""
    from reports.published import suite_source

    source = suite_source(suite)
    if source:
        print("# source (not a run key: where the published numbers come from, and their protocol)")
        print(yaml.safe_dump({"source": source}, sort_keys=False, allow_unicode=True, width=110))
