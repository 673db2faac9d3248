"""``compare``: two runs, a run with the reference entries, or a run with a paper suite's published numbers."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark.api.errors import UserError
from benchmark.cli._common import existing_folder

HELP = "compare two runs (or a run with the reference entries); exit 1 on a regression"
DESCRIPTION = ("Print every ASR and utility difference between BASE and NEW with its 95% interval. Exit 1 when some "
               "defense's ASR got significantly worse (the Newcombe interval of the increase lies above --asr-margin) "
               "or its benign utility dropped by more than --utility-tolerance (relative) and significantly; exit 0 "
               "otherwise. Definitions: reports/compare.py.")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("compare", help=HELP, description=DESCRIPTION)
    parser.add_argument("base", type=Path, help="run directory or entries folder (e.g. reports/leaderboard)")
    parser.add_argument("new", type=Path, nargs="?", help="run directory or entries folder (omitted with --published)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--asr-margin", type=float, default=0.0,
                        help="ASR increase (0..1) that is tolerated even when significant (default 0)")
    parser.add_argument("--utility-tolerance", type=float, default=0.02,
                        help="relative utility drop tolerated (default 0.02 = 2%%)")
    parser.add_argument("--against", action="append", default=[], metavar="NEW_DEFENSE=BASE_DEFENSE",
                        help="hold a defense of NEW to another defense of BASE, e.g. my-defense=negative-prompt")
    parser.add_argument("--published", metavar="SUITE",
                        help="hold the run BASE to a paper suite's published numbers (e.g. "
                        "paper-unlearndiff-nudity-sd14): per cell reproduced / differs / not run; "
                        "definitions: reports/published.py")
    parser.add_argument("--allow-protocol-mismatch", action="store_true",
                        help="with --published: compare even when the run's protocol (judge preset, prompts, "
                        "steps, ...) differs from the published one; those cells are marked")
    parser.set_defaults(handler=handle)
    return parser


def parse_against(pairs: list[str]) -> dict[str, str]:
    """``NEW_DEFENSE=BASE_DEFENSE`` flags -> {new: base}."""
    against = {}
    for pair in pairs:
        new_name, sep, base_name = pair.partition("=")
        if not sep or not new_name or not base_name:
            raise UserError(f"--against takes NEW_DEFENSE=BASE_DEFENSE, got {pair!r}")
        against[new_name] = base_name
    return against


def handle(args: argparse.Namespace) -> int:
    from reports.compare import CompareOptions, compare, exit_code, render
    from reports.results import load

    if args.published:
        return handle_published(args)
    if args.new is None:
        raise UserError("compare needs BASE and NEW (or one run and --published SUITE)")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    against = parse_against(args.against)
    base, new = load(existing_folder(args.base, "BASE")), load(existing_folder(args.new, "NEW"))
    comparison = compare(base, new, CompareOptions(confidence=args.confidence, asr_margin=args.asr_margin,
                                                   utility_tolerance=args.utility_tolerance, against=against))
    print(render(comparison, str(args.base), str(args.new)), end="")
    return exit_code(comparison)


def handle_published(args: argparse.Namespace) -> int:
    from reports.published import compare_published, exit_code, render
    from reports.results import load

    if args.new is not None:
        raise UserError("--published takes one run: compare RUN --published SUITE")
    comparison = compare_published(load(existing_folder(args.base, "RUN")), args.published,
                                   allow_mismatch=args.allow_protocol_mismatch)
    print(render(comparison, str(args.base)), end="")
    return exit_code(comparison)
