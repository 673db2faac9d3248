"""The stages of a run, one module each: prepare -> attack -> generate -> judge -> report.

Each stage writes one artifact per cell into the content-addressed :class:`benchmark.store.CellStore`
and skips cells whose artifact exists; :class:`StageCounter` tells the CLI how many were cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageCounter:
    stage: str
    computed: int = 0
    cached: int = 0
    # out-of-memory halvings of this stage's batches ({"what", "from", "to"}; benchmark.api.memory)
    backoffs: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.stage}: {self.computed} computed, {self.cached} cached"
        if self.backoffs:
            text += f", batch halved {len(self.backoffs)}x on out-of-memory (to {self.backoffs[-1]['to']})"
        return text
