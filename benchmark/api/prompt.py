"""The prompt record every loader returns, and the error every loader raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.api.errors import DataFileError


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set.

    ``id`` is stable across runs (the file's case number or row index), so cell keys do not move when a
    file is re-ordered. ``seed`` and ``guidance`` are the evaluation seed and guidance scale the source
    file prescribes (UnlearnDiff / I2P style), or None to use the run's defaults.
    """

    id: str
    text: str
    seed: int | None = None
    guidance: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class PromptFileError(DataFileError):
    """Malformed prompt input; the message names the file and (1-based) line."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
