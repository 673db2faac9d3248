"""``ci``: a defense's CI check in one command: run the small sd-mini suite, render the report, compare with
the reference entries, exit 1 on a regression.

    python -m benchmark ci --plugin my_defense.py --defense my-defense --against negative-prompt
    tox -e ci-defense -- --plugin my_defense.py --defense my-defense --against negative-prompt

(``python -m reports.ci`` is the same command under its earlier name.)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark.cli._common import EXIT_USER_ERROR, quiet_library_progress
from reports import REFERENCE_ENTRIES

log = logging.getLogger("benchmark.ci")

HELP = "a defense's CI check: run the CI suite, report, compare with the reference entries; exit 1 on a regression"
DESCRIPTION = (
    "Run the small sd-mini suite on your defense, render its report, and compare it with the reference entries. "
    "Without --against the defense is compared with its own reference entries (commit them once with "
    "--update-references, then CI catches regressions); with it, with a baseline's entries (\"not worse than the "
    "negative prompt on any attack, utility within 2%%\"). The undefended rows are compared too: if they fail, the "
    "model or the harness changed, not the defense. The run directory, its report and compare.txt stay under "
    "--out for the CI job to keep as artifacts.")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("ci", help=HELP, description=DESCRIPTION)
    parser.add_argument("--defense", required=True, help="defense(s) to check, comma-separated")
    parser.add_argument("--plugin", action="append", default=[], help="a .py file registering your defense")
    parser.add_argument("--attack", default="all", help="attacks (default: all)")
    parser.add_argument("--suite", default="ci", help="suite to run (default: ci, 20 prompts per sd-mini task)")
    parser.add_argument("--max-prompts", type=int, help="override the suite's attack prompts per task")
    parser.add_argument("--option", action="append", default=[], help="component option, as for `run`")
    parser.add_argument("--references", type=Path, default=REFERENCE_ENTRIES, help="reference entries folder "
                        "(default: reports/leaderboard)")
    parser.add_argument("--against", help="baseline defense of the references the defense is held to")
    parser.add_argument("--utility-tolerance", type=float, default=0.02,
                        help="relative utility drop tolerated (default 0.02 = 2%%)")
    parser.add_argument("--asr-margin", type=float, default=0.0,
                        help="ASR increase (0..1) tolerated even when significant (default 0)")
    parser.add_argument("-o", "--out", default="runs", help="where this command writes: the store root for the "
                        "run (default: runs/)")
    parser.add_argument("--skip-contracts", action="store_true",
                        help="do not check the plugin's components against their contracts before the benchmark")
    parser.add_argument("--update-references", action="store_true",
                        help="write the run's entries into --references instead of comparing")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    from benchmark.harness.ci import CiCheck, check_plugin_contracts, run_check
    from benchmark.harness.contracts import ContractViolation
    from reports.compare import exit_code

    quiet_library_progress()
    if args.plugin and not args.skip_contracts:
        try:
            for line in check_plugin_contracts(args.plugin, args.suite):
                log.info("contract kept: %s", line)
        except ContractViolation as error:  # the plugin breaks its contract: a regression, not bad input
            print(f"error: {error}", file=sys.stderr)
            return 1
    check = CiCheck(defense=args.defense, attack=args.attack, suite=args.suite, plugins=args.plugin,
                    options=args.option, max_prompts=args.max_prompts, references=args.references,
                    against=args.against, utility_tolerance=args.utility_tolerance, asr_margin=args.asr_margin,
                    out=args.out, update_references=args.update_references)
    try:
        outcome = run_check(check)
    except (ValueError, FileNotFoundError) as error:  # references that cannot be read or compared
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    for line in outcome.failures:
        print(f"failed cell: {line}", file=sys.stderr)
    if outcome.comparison is None:
        log.info("wrote %d reference entries under %s", outcome.entries_written, args.references)
        print(outcome.run_dir)
        return 0
    print(outcome.text, end="")
    print(outcome.run_dir)
    return exit_code(outcome.comparison)


