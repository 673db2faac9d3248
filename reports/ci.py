"""A defense's CI check in one command: run the small sd-mini suite, render the report, compare with the
reference entries, exit non-zero on a regression.

    python -m reports.ci --plugin my_defense.py --defense my-defense --against negative-prompt
    tox -e ci-defense -- --plugin my_defense.py --defense my-defense --against negative-prompt

Without ``--against`` the defense is compared with its own reference entries (commit them once with
``--update-references``, then CI catches regressions); with it, with a baseline's entries ("not worse than
the negative prompt on any attack, utility within 2%"). Either way the undefended rows are compared too:
if they fail, the model or the harness changed, not the defense. The run directory, its report and the
comparison (``compare.txt``) are left under ``--out`` for the CI job to keep as artifacts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmark.store import atomic_write_text

log = logging.getLogger("reports.ci")

REFERENCES = Path(__file__).resolve().parent / "leaderboard"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reports.ci", description=__doc__.split("\n\n")[0])
    parser.add_argument("--defense", required=True, help="defense(s) to check, comma-separated")
    parser.add_argument("--plugin", action="append", default=[], help="a .py file registering your defense")
    parser.add_argument("--attack", default="all", help="attacks (default: all)")
    parser.add_argument("--suite", default="ci", help="suite to run (default: ci, 20 prompts per sd-mini task)")
    parser.add_argument("--max-prompts", type=int, help="override the suite's attack prompts per task")
    parser.add_argument("--option", action="append", default=[], help="component option, as for `run`")
    parser.add_argument("--references", type=Path, default=REFERENCES, help="reference entries folder")
    parser.add_argument("--against", help="baseline defense of the references the defense is held to")
    parser.add_argument("--utility-tolerance", type=float, default=0.02)
    parser.add_argument("--asr-margin", type=float, default=0.0)
    parser.add_argument("--out", default="runs", help="store root for the run (default: runs/)")
    parser.add_argument("--update-references", action="store_true",
                        help="write the run's entries into --references instead of comparing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    from benchmark.cli import build_parser, config_from_args
    from benchmark.runner import execute
    from reports.build import build_report
    from reports.compare import CompareOptions, compare, exit_code, render
    from reports.entries import write_entries
    from reports.results import load, load_run

    run_argv = ["run", "--suite", args.suite, "--defense", args.defense, "--attack", args.attack, "--out", args.out]
    for plugin in args.plugin:
        run_argv += ["--plugin", plugin]
    for option in args.option:
        run_argv += ["--option", option]
    if args.max_prompts:
        run_argv += ["--max-prompts", str(args.max_prompts)]
    summary = execute(config_from_args(build_parser().parse_args(run_argv)))
    results = load_run(summary.run_dir)
    build_report(results, summary.run_dir / "report")
    log.info("report: %s", summary.run_dir / "report" / "report.html")
    if args.update_references:
        paths = write_entries(results, args.references)
        log.info("wrote %d reference entries under %s", len(paths), args.references)
        print(summary.run_dir)
        return 0
    against = {}
    if args.against:
        against = {name: args.against for name in args.defense.split(",") if name not in ("none", args.against)}
    try:
        comparison = compare(load(args.references), results,
                             CompareOptions(asr_margin=args.asr_margin, utility_tolerance=args.utility_tolerance,
                                            against=against))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = render(comparison, str(args.references), str(summary.run_dir))
    atomic_write_text(summary.run_dir / "compare.txt", text)
    print(text, end="")
    print(summary.run_dir)
    return exit_code(comparison)


if __name__ == "__main__":
    sys.exit(main())
