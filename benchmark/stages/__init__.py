"""The stages of a run, one module each: prepare -> attack -> generate -> judge -> report.

Each stage writes one artifact per cell into the content-addressed :class:`benchmark.store.CellStore`
and skips cells whose artifact exists; :class:`StageCounter` tells the CLI how many were cached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StageCounter:
    stage: str
    computed: int = 0
    cached: int = 0

    def __str__(self) -> str:
        return f"{self.stage}: {self.computed} computed, {self.cached} cached"
