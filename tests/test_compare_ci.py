"""The CI recipe (`python -m reports.ci`) end to end on the tiny-random smoke suite: plumbing only (random
weights; the numbers mean nothing), but the same code path as the sd-mini CI suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _ci(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "reports.ci", "--suite", "smoke", "--attack", "none", "--max-prompts", "2", *args],
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

