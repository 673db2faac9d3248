"""The undefended model: the reference row of every leaderboard."""

from __future__ import annotations

from pathlib import Path

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind
from benchmark.api.registry import DEFENSES


@DEFENSES.register("none")
class NoDefense(Defense):
    """The undefended base model (the reference row)."""

    kind = DefenseKind.NONE

    def apply(self, model, task, artifact_dir: Path) -> DefendedPipeline:
        return DefendedPipeline(model, self, task)
