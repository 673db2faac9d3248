"""The architecture contract: layers, no cycles, and a light `benchmark list` (see pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def test_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(REPO / ".venv" / "bin" / "lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_listing_imports_no_torch():
    code = ("import sys, runpy; sys.argv = ['benchmark', 'list']; "
            "from benchmark.cli import main; main(['list']); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'onnxruntime') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("kind,folder,body", [
    ("defenses", "defenses", '''
from benchmark.api import DEFENSES, DefendedPipeline, Defense, DefenseKind


@DEFENSES.register("example-defense-probe")
class ExampleDefense(Defense):
    """An example defense found by reading its folder."""

    kind = DefenseKind.INFERENCE_TIME

    def apply(self, model, task, artifact_dir):
        return DefendedPipeline(model, self, task)
'''),
    ("attacks", "attacks", '''
from benchmark.api import ATTACKS, Attack, AttackOutput


@ATTACKS.register("example-attack-probe")
class ExampleAttack(Attack):
    """An example attack found by reading its folder."""

    def run(self, prompts, ctx):
        return [AttackOutput(p.id, p.text) for p in prompts]
'''),
    ("judges", "benchmark/judges", '''
from benchmark.api import JUDGES, Judge


@JUDGES.register("example-judge-probe")
class ExampleJudge(Judge):
    """An example judge found by reading its folder."""
'''),
    ("tasks", "benchmark/tasks", '''description: An example task found by reading its folder
concept_words: [arrow]
attack_prompts: mini-object-attack
benign_prompts: mini-object-benign
judge: {name: mini-detector, options: {label: "object:arrow"}}
utility_judge: clip-mini
'''),
])
def test_a_new_builtin_file_is_listed_without_editing_another(kind, folder, body):
    suffix = ".yaml" if kind == "tasks" else ".py"
    stem = f"example_{kind}_probe" if suffix == ".py" else "example-task-probe"
    path = REPO / folder / f"{stem}{suffix}"
    assert not path.exists()
    path.write_text(body.lstrip())
    try:
        result = subprocess.run([sys.executable, "-m", "benchmark", "list", kind], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        expected = {"defenses": "example-defense-probe", "attacks": "example-attack-probe",
                    "judges": "example-judge-probe", "tasks": "example-task-probe"}[kind]
        line = next(line for line in result.stdout.splitlines() if expected in line)
        assert "example" in line.lower() and "found by reading its folder" in line
    finally:
        path.unlink()
