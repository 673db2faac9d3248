"""The stages of a run, one module each: prepare -> attack -> generate -> judge -> report.

Each stage writes one artifact per cell into the content-addressed :class:`benchmark.store.CellStore`
and skips cells whose artifact exists; :class:`StageCounter` tells the CLI how many were cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The stages that compute cells, in the order a run meets them (report writes files, not cells).
STAGES = ("prepare", "attack", "generate", "judge")


@dataclass
class StageCounter:
    stage: str
    computed: int = 0
    cached: int = 0
    # out-of-memory halvings of this stage's batches ({"what", "from", "to"}; benchmark.api.memory)
    backoffs: list[dict[str, Any]] = field(default_factory=list)
    # Cost of the stage in this process (benchmark.harness.stages.usage): wall seconds summed over its intervals, peak
    # resident memory and peak CUDA allocation while it ran; None where not measured.
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    cuda_peak_bytes: int | None = None

    def usage(self) -> dict[str, Any]:
        """The stage's counts and cost, as recorded in the run's provenance (``stage_usage``)."""
        mib = 2 ** 20
        return {"computed": self.computed, "cached": self.cached, "seconds": round(self.seconds, 3),
                "peak_rss_mib": None if self.peak_rss_bytes is None else round(self.peak_rss_bytes / mib, 1),
                "cuda_peak_mib": None if self.cuda_peak_bytes is None else round(self.cuda_peak_bytes / mib, 1)}

    def __str__(self) -> str:
        text = f"{self.stage}: {self.computed} computed, {self.cached} cached"
        if self.backoffs:
            text += f", batch halved {len(self.backoffs)}x on out-of-memory (to {self.backoffs[-1]['to']})"
        return text


def cost_line(counters: list[StageCounter]) -> str:
    """One line of the stages' wall time and peak memory in this process, e.g. ``cost: prepare 12.0 s
    (peak RSS 4.10 GiB), ...``."""
    parts = []
    for c in counters:
        part = f"{c.stage} {c.seconds:.1f} s"
        peaks = [f"peak RSS {c.peak_rss_bytes / 2 ** 30:.2f} GiB"] if c.peak_rss_bytes is not None else []
        peaks += [f"peak CUDA {c.cuda_peak_bytes / 2 ** 30:.2f} GiB"] if c.cuda_peak_bytes is not None else []
        parts.append(part + (f" ({', '.join(peaks)})" if peaks else ""))
    return "cost: " + ", ".join(parts)
