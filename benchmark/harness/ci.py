"""A defense's CI check in one command: run the small sd-mini suite, render the report, compare with the
reference entries, exit non-zero on a regression.

    python -m benchmark ci --plugin my_defense.py --defense my-defense --against negative-prompt
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

import torch

from benchmark.api.attack import AttackContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.errors import RunFailedError, UserError
from benchmark.api.model import get_model_spec
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS, SUITES, TASKS, load_plugin
from benchmark.cli import build_parser, config_from_args, quiet_libraries, quiet_library_progress
from benchmark.harness.config import load_suite_file
from benchmark.harness.contracts import ContractViolation, check_attack, check_defense, check_judge
from benchmark.harness.runner import execute
from benchmark.store import atomic_write_text
from reports.build import build_report
from reports.compare import CompareOptions, compare, exit_code, render
from reports.entries import write_entries
from reports.results import load, load_run

log = logging.getLogger("benchmark.harness.ci")

REFERENCES = Path(__file__).resolve().parent / "leaderboard"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmark ci", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--skip-contracts", action="store_true",
                        help="do not check the plugin's components against their contracts before the benchmark")
    parser.add_argument("--update-references", action="store_true",
                        help="write the run's entries into --references instead of comparing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse(argv)
    quiet_libraries(verbose=False)
    quiet_library_progress()
    if args.plugin and not args.skip_contracts:
        try:
            for line in check_plugin_contracts(args.plugin, args.suite):
                log.info("contract kept: %s", line)
        except (ContractViolation, UserError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    run_argv = ["run", "--suite", args.suite, "--defense", args.defense, "--attack", args.attack, "--out", args.out]
    for plugin in args.plugin:
        run_argv += ["--plugin", plugin]
    for option in args.option:
        run_argv += ["--option", option]
    if args.max_prompts:
        run_argv += ["--max-prompts", str(args.max_prompts)]
    try:
        summary = execute(config_from_args(build_parser().parse_args(run_argv)))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailedError as failed:  # the leaderboard marks the failed cells; compare below fails on them
        summary = failed.summary
        for line in failed.failures:
            print(f"failed cell: {line}", file=sys.stderr)
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


def check_plugin_contracts(plugins: list[str], suite: str) -> list[str]:
    """Run the contracts (benchmark/harness/contracts.py) on every defense, attack and judge the plugin files
    register, on the suite's model and first task, before any benchmark time is spent."""
    for plugin in plugins:
        load_plugin(plugin)
    mine = {kind: [e.name for e in registry.entries() if e.source.startswith("plugin ")]
            for kind, registry in (("defense", DEFENSES), ("attack", ATTACKS), ("judge", JUDGES))}
    if not any(mine.values()):
        return []
    suite_data = load_suite_file(SUITES.get(suite) if suite in SUITES else suite)
    spec = get_model_spec(suite_data.get("model", "sd-mini"))
    task = TASKS.get((suite_data.get("tasks") or list(spec.default_tasks))[0])
    model = spec.load(torch.device("cpu"), torch.float32)
    kept = [str(check_defense(name, model, task)) for name in mine["defense"]]
    if mine["attack"]:
        judge = JUDGES.get(task.judge.name)(device="cpu", **task.judge.options)
        defaults = model.defaults
        ctx = AttackContext(model=model, defended=DefendedPipeline(model, None, task), task=task, judge=judge,
                            sampler={"num_inference_steps": defaults.num_inference_steps,
                                     "guidance_scale": defaults.guidance_scale, "height": defaults.height,
                                     "width": defaults.width, "seed": 0})
        prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=3)
        kept += [str(check_attack(name, ctx, prompts)) for name in mine["attack"]]
    if mine["judge"]:
        from PIL import Image

        images = [Image.new("RGB", (defaults_size := int(model.defaults.height), defaults_size), colour)
                  for colour in ("red", "green", "blue")]
        kept += [str(check_judge(name, images, ["a red image", "a green image", "a blue image"]))
                 for name in mine["judge"]]
    return kept


if __name__ == "__main__":
    sys.exit(main())
