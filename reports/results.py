"""What every report reads: the long-form board plus per-prompt outcomes, from a run or from entries.

A run directory (``records.parquet``) and a folder of reference entries (``*.json``, see
:mod:`reports.entries`) load into the same :class:`Results`, so tables, plots and ``compare`` run the same
code on both.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pandas as pd

from benchmark.metrics import Estimate
from reports.board import (
    BENIGN_COLUMNS,
    BROKEN_COLUMNS,
    NO_ATTACK,
    Results,
    ResultsNotFoundError,
    board_frame,
    board_row,
    estimate_of,
)
from reports.entries import load_entries
from reports.leaderboard import broken_prompts, compute_leaderboard, judge_descriptions
from reports.quality import quality_rows

__all__ = ["BENIGN_COLUMNS", "BROKEN_COLUMNS", "Results", "benign_scores", "estimate_of", "load", "load_run",
           "prepare_rows"]

log = logging.getLogger(__name__)


def prepare_rows(records: pd.DataFrame, store_root: Path) -> list[dict]:
    """Defense preparation seconds, read from each defense artifact's ``prepared.json`` (the prepare stage
    writes it; the time is the original build's, also when this run found the artifact cached)."""
    rows = []
    if "defense_key" not in records:
        return rows
    keys = records.dropna(subset=["defense_key"]).drop_duplicates(["model", "task", "defense"])
    for row in keys.itertuples(index=False):
        key = str(row.defense_key)
        done = store_root / "cells" / "prepare" / key[:2] / key / "prepared.json"
        if not done.is_file():
            log.debug("no prepare record at %s", done)
            continue
        seconds = json.loads(done.read_text()).get("prepare_seconds")
        if seconds is None:
            continue
        rows.append(board_row(row.model, row.task, row.defense, NO_ATTACK, "prepare_seconds",
                              Estimate(float(seconds), 1, math.nan, math.nan)))
    return rows


def benign_scores(records: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, defense, benign prompt): the mean utility-judge score of its images."""
    rows = records[(records["role"] == "benign") & (records["judge_role"] == "utility")].dropna(subset=["score"])
    if rows.empty:
        return pd.DataFrame(columns=BENIGN_COLUMNS)
    means = rows.groupby(["model", "task", "defense", "prompt_id"], sort=False)["score"].mean().reset_index()
    means["prompt_id"] = means["prompt_id"].astype(str)
    return means.assign(metric="clip_score")[BENIGN_COLUMNS]


def load_run(run_dir: Path) -> Results:
    run_dir = Path(run_dir)
    records_path = run_dir / "records.parquet"
    if not records_path.is_file():
        raise ResultsNotFoundError(f"{records_path} not found: pass a run directory written by `benchmark run`")
    records = pd.read_parquet(records_path)
    store_root = run_dir.resolve().parent  # run directories live directly under the store root (--out)
    board = compute_leaderboard(records)
    extra = prepare_rows(records, store_root) + quality_rows(records, store_root)  # FD / KID / CMMD
    if extra:
        board = pd.concat([board, board_frame(extra)], ignore_index=True)
    provenance = {}
    if (run_dir / "provenance.json").is_file():
        provenance = json.loads((run_dir / "provenance.json").read_text())
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    return Results(source=run_dir, kind="run", board=board, broken=broken_prompts(records)[BROKEN_COLUMNS],
                   benign=benign_scores(records),
                   judges=judge_descriptions(records), provenance=provenance, config_text=config_text,
                   records=records, store_root=store_root)


def load(path: Path) -> Results:
    """A run directory, or a folder (searched recursively) of reference entries."""
    path = Path(path)
    if (path / "records.parquet").is_file():
        return load_run(path)
    if path.is_dir() and any(path.rglob("*.json")):
        return load_entries(path)
    raise ResultsNotFoundError(f"{path} is neither a run directory (no records.parquet) nor a folder of "
                            "reference entries (*.json): pass runs/<run-id> or reports/leaderboard")
