"""The CI recipe (`python -m benchmark ci`) end to end on the tiny-random smoke suite: plumbing only (random
weights; the numbers mean nothing), but the same code path as the sd-mini CI suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _ci(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "benchmark", "ci", "--suite", "smoke", "--attack", "none", "--max-prompts", "2", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ci_recipe_writes_references_then_passes_against_them(tmp_path):
    references = tmp_path / "leaderboard"
    store = tmp_path / "runs"
    first = _ci("--defense", "negative-prompt", "--out", str(store), "--references", str(references),
                "--update-references")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(list(references.rglob("*.json"))) == 2  # (toy task) x (none, negative-prompt) x (attack none)

    again = _ci("--defense", "negative-prompt", "--out", str(store), "--references", str(references))
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    run_dir = Path(again.stdout.strip().splitlines()[-1])
    assert (run_dir / "compare.txt").read_text().rstrip().splitlines()[-1].startswith("OK:")
    assert (run_dir / "report" / "report.html").is_file()



BROKEN_PLUGIN = '''
import torch

from benchmark.api import DEFENSES, DefendedPipeline, Defense, DefenseKind


class Leaky(DefendedPipeline):
    def __init__(self, *args):
        super().__init__(*args)
        with torch.no_grad():
            next(self.pipe.unet.parameters()).mul_(1.5)  # an edit that close() never undoes


@DEFENSES.register("leaky-defense")
class LeakyDefense(Defense):
    """A weight edit that forgets to undo itself on the shared pipeline."""

    kind = DefenseKind.WEIGHT_EDIT

    def apply(self, model, task, artifact_dir):
        return Leaky(model, self, task)
'''


def test_ci_recipe_checks_a_plugins_contracts_before_its_benchmark(tmp_path):
    plugin = tmp_path / "leaky.py"
    plugin.write_text(BROKEN_PLUGIN)
    result = _ci("--plugin", str(plugin), "--defense", "leaky-defense", "--out", str(tmp_path / "runs"),
                 "--references", str(tmp_path / "leaderboard"))
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    assert "defense leaky-defense: close() did not restore the shared pipeline (unet)" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was run
