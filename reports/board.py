"""The data every report reads: the long-form board, per-prompt outcomes, and how a failed cell is marked.

This module is the bottom of the ``reports`` package: it imports no other report module, and every other
one may import it (:mod:`reports.results` loads runs and entries into :class:`Results`,
:mod:`reports.entries` writes and reads entries, the renderers draw them).

A (model, task, defense, attack) cell whose attack raised (records with ``attack_status == "error"``) has no
score: its ASR row, and the defense's worst-case ASR, have ``status`` ``failed``, a NaN value and interval,
and n = the prompts that were to be attacked. Every other row has ``status`` ``ok``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.api.errors import DataFileError, UserError
from benchmark.metrics import Estimate
from benchmark.records import LEADERBOARD_COLUMNS

ALL_ATTACKS = "*"  # the attack of metrics over all attacks (worst-case ASR)
NO_ATTACK = "-"  # the attack of metrics not about an attack (benign utility, cost)
OK = "ok"
FAILED = "failed"
CELL_KEYS = ["model", "task", "defense", "attack"]



class ResultsNotFoundError(UserError, FileNotFoundError):
    """A path that holds neither a run nor reference entries (the CLI prints it and exits 2)."""


class ResultsFormatError(DataFileError):
    """A run or entry file the reports cannot read (the CLI prints it and exits 2)."""


BROKEN_COLUMNS = ["model", "task", "defense", "attack", "prompt_id", "hit"]
BENIGN_COLUMNS = ["model", "task", "defense", "metric", "prompt_id", "score"]


def board_row(model, task, defense, attack, metric, estimate: Estimate, status: str = OK) -> dict:
    """One long-form row (:data:`benchmark.records.LEADERBOARD_COLUMNS`)."""
    return {"model": model, "task": task, "defense": defense, "attack": attack, "metric": metric,
            "value": estimate.value, "n": estimate.n, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
            "status": status}


def failed_row(model, task, defense, attack, metric, n: int) -> dict:
    """A metric that has no value because an attack raised: NaN value and interval, n prompts."""
    return board_row(model, task, defense, attack, metric, Estimate(math.nan, int(n), math.nan, math.nan), FAILED)


def board_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)


def row_failed(row) -> bool:
    """Whether a board row (a dict or a frame row) is marked failed; boards without a status are ok."""
    status = row.get("status", OK) if hasattr(row, "get") else OK
    return isinstance(status, str) and status == FAILED


def failed_cells(board: pd.DataFrame) -> set[tuple[str, str, str, str]]:
    """(model, task, defense, attack) of every failed ASR row of a board."""
    if "status" not in board:
        return set()
    rows = board[(board["metric"] == "asr") & (board["status"] == FAILED)]
    return {tuple(map(str, key)) for key in rows[CELL_KEYS].itertuples(index=False)}


@dataclass
class Results:
    """A run directory or a folder of reference entries, loaded (:func:`reports.results.load`)."""

    source: Path
    kind: str  # "run" or "entries"
    board: pd.DataFrame  # long form, LEADERBOARD_COLUMNS
    broken: pd.DataFrame  # BROKEN_COLUMNS: per prompt, broken or not (a failed cell's prompts: not broken)
    benign: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BENIGN_COLUMNS))  # per benign
    # prompt: its utility score (mean over its images), for paired comparisons
    judges: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    config_text: str = ""
    records: pd.DataFrame | None = None
    store_root: Path | None = None  # where records' image paths and prepare artifacts live

    @property
    def model_keys(self) -> dict[str, str]:
        """model -> content key of its weights, when known."""
        if self.records is not None and "model_key" in self.records:
            pairs = self.records.drop_duplicates("model")[["model", "model_key"]]
            return {str(m): str(k) for m, k in pairs.itertuples(index=False)}
        return dict(self.provenance.get("model_keys", {}))

    @property
    def failed_cells(self) -> set[tuple[str, str, str, str]]:
        """(model, task, defense, attack) cells whose attack raised: they have no ASR."""
        return failed_cells(self.board)


def estimate_of(board: pd.DataFrame, model: str, task: str, defense: str, attack: str,
                metric: str) -> Estimate | None:
    """The estimate of one board row; None when the board has no such row or the row is failed."""
    hit = board[(board["model"] == model) & (board["task"] == task) & (board["defense"] == defense)
                & (board["attack"] == attack) & (board["metric"] == metric)]
    if hit.empty or row_failed(hit.iloc[0]):
        return None
    row = hit.iloc[0]
    return Estimate(float(row["value"]), int(row["n"]), float(row["ci_low"]), float(row["ci_high"]))
