"""A defense's CI check: run the small sd-mini suite, render the report, compare with the reference entries.

The command is ``python -m benchmark ci`` (:mod:`benchmark.cli.ci`, which prints and sets the exit code);
this module does the work. Without ``against`` the defense is compared with its own reference entries
(commit them once with ``update_references``, then CI catches regressions); with it, with a baseline's
entries ("not worse than the negative prompt on any attack, utility within 2%"). Either way the undefended
rows are compared too: if they fail, the model or the harness changed, not the defense. The run directory,
its report and the comparison (``compare.txt``) stay in the store for the CI job to keep as artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmark.api.attack import AttackContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.errors import RunFailedError
from benchmark.api.model import get_model_spec
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS, SUITES, TASKS, load_plugin
from benchmark.harness.config import config_from_command, load_suite_file
from benchmark.harness.contracts import check_attack, check_defense, check_judge
from benchmark.harness.runner import execute
from benchmark.store import atomic_write_text
from reports import REFERENCE_ENTRIES
from reports.build import build_report
from reports.compare import CompareOptions, compare, render
from reports.entries import write_entries
from reports.results import load, load_run

log = logging.getLogger("benchmark.ci")



@dataclass
class CiCheck:
    """One CI check: which defenses, against which references, held to what."""

    defense: str  # comma-separated
    attack: str = "all"
    suite: str = "ci"
    plugins: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # --option assignments
    max_prompts: int | None = None
    references: Path = REFERENCE_ENTRIES
    against: str | None = None
    utility_tolerance: float = 0.02
    asr_margin: float = 0.0
    out: str = "runs"
    update_references: bool = False


@dataclass
class CiOutcome:
    """What the check found: the run, the cells that failed, and the comparison (None when the references were
    written instead) or the number of entries written."""

    run_dir: Path
    failures: list[str]
    comparison: Any = None
    text: str = ""
    entries_written: int = 0


def run_check(check: CiCheck) -> CiOutcome:
    """Run the suite, render its report, then compare with (or write) the reference entries."""
    flags = {"defenses": [check.defense], "attacks": [check.attack], "out": check.out,
             "plugins": check.plugins or None, "max_prompts": check.max_prompts or None}
    failures: list[str] = []
    try:
        summary = execute(config_from_command(check.suite, flags, {}, check.options))
    except RunFailedError as failed:  # the leaderboard marks the failed cells; the comparison fails on them
        summary, failures = failed.summary, list(failed.failures)
    results = load_run(summary.run_dir)
    build_report(results, summary.run_dir / "report")
    log.info("report: %s", summary.run_dir / "report" / "report.html")
    if check.update_references:
        paths = write_entries(results, check.references)
        return CiOutcome(summary.run_dir, failures, entries_written=len(paths))
    against = {}
    if check.against:
        against = {name: check.against for name in check.defense.split(",") if name not in ("none", check.against)}
    comparison = compare(load(check.references), results,
                         CompareOptions(asr_margin=check.asr_margin, utility_tolerance=check.utility_tolerance,
                                        against=against))
    text = render(comparison, str(check.references), str(summary.run_dir))
    atomic_write_text(summary.run_dir / "compare.txt", text)
    return CiOutcome(summary.run_dir, failures, comparison=comparison, text=text)


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
        images = [Image.new("RGB", (defaults_size := int(model.defaults.height), defaults_size), colour)
                  for colour in ("red", "green", "blue")]
        kept += [str(check_judge(name, images, ["a red image", "a green image", "a blue image"]))
                 for name in mine["judge"]]
    return kept
