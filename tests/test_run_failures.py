"""Failures are never scores: an attack that raises fails its cell -- the run keeps every other cell, exits
non-zero, the leaderboard shows the cell as failed, and compare refuses to call it a pass. A per-prompt
failure the attack declares counts as not broken; an undeclared one fails the cell."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli

PLUGIN = '''
from benchmark.api import ATTACKS, Attack, AttackOutput


@ATTACKS.register("always-raises")
class AlwaysRaises(Attack):
    """Raises for every prompt (a broken attack)."""

    def run(self, prompts, ctx):
        raise RuntimeError("boom: the attack is broken")


@ATTACKS.register("declared-failure")
class DeclaredFailure(Attack):
    """Fails every other prompt with a reason it declares."""

    failures = {"too-long": "the prompt is longer than the attack can handle"}

    def run(self, prompts, ctx):
        return [AttackOutput(p.id, None, status="failed", reason="too-long") if i % 2 else AttackOutput(p.id, p.text)
                for i, p in enumerate(prompts)]


@ATTACKS.register("undeclared-failure")
class UndeclaredFailure(Attack):
    """Fails a prompt with a reason it never declared (a bug)."""

    def run(self, prompts, ctx):
        return [AttackOutput(p.id, None, status="failed", reason="whatever") for p in prompts]
'''

RUN = ["run", "--model", "tiny-random", "--task", "toy", "--defense", "none,negative-prompt", "--max-prompts", "4",
       "--max-benign", "2", "--steps", "2", "--batch-size", "4"]


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failures")
    plugin = folder / "broken_attacks.py"
    plugin.write_text(PLUGIN)
    result = run_cli(*RUN, "--attack", "none,always-raises,declared-failure,undeclared-failure", "--plugin",
                     str(plugin), "--out", str(folder / "runs"), check=False)
    return folder, result


def test_a_raising_attack_fails_its_cell_and_the_run(failed_run):
    _, result = failed_run
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "always-raises: RuntimeError: boom" in result.stderr
    assert "undeclared-failure" in result.stderr and "undeclared reason" in result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    failures = json.loads((run_dir / "failures.json").read_text())
    assert {(f["defense"], f["attack"]) for f in failures} == {
        (d, a) for d in ("none", "negative-prompt") for a in ("always-raises", "undeclared-failure")}
    assert all("Traceback" in f["traceback"] for f in failures)


def test_other_cells_are_kept_and_failed_cells_show_failed(failed_run):
    _, result = failed_run
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    records = pd.read_parquet(run_dir / "records.parquet")
    concept = records[records.judge_role == "concept"]
    broken = concept[concept.attack == "always-raises"]
    assert len(broken) == 2 * 4 and set(broken.attack_status) == {"error"} and broken.score.isna().all()
    kept = concept[(concept.attack == "none") & (concept.role == "attack")]
    assert len(kept) == 2 * 4 and kept.score.notna().all()
    declared = concept[concept.attack == "declared-failure"]
    assert sorted(declared.attack_status.tolist()) == ["failed"] * 4 + ["ok"] * 4
    board = pd.read_csv(run_dir / "leaderboard.csv")
    asr = board[board.metric == "asr"]
    failed = asr[asr.attack.isin(["always-raises", "undeclared-failure"])]
    assert len(failed) == 4 and set(failed.status) == {"failed"} and failed.value.isna().all()
    ok = asr[asr.attack.isin(["none", "declared-failure"])]
    assert set(ok.status) == {"ok"} and ok.value.notna().all()
    markdown = (run_dir / "leaderboard.md").read_text()
    assert "failed" in markdown


def test_compare_refuses_a_failed_cell(failed_run):
    _, result = failed_run
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    compared = run_cli("compare", str(run_dir), str(run_dir), check=False)
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "failed" in compared.stdout


def test_a_rerun_retries_only_the_failed_cells(failed_run):
    folder, _ = failed_run
    again = run_cli(*RUN, "--attack", "none,always-raises,declared-failure,undeclared-failure", "--plugin",
                    str(folder / "broken_attacks.py"), "--out", str(folder / "runs"), check=False)
    assert again.returncode == 3
    assert "generate: 0 computed" in again.stdout  # every image of the other cells is reused
