"""What every report reads: the long-form board plus per-prompt outcomes, from a run or from entries.

A run directory (``records.parquet``) and a folder of reference entries (``*.json``, see
:mod:`reports.entries`) load into the same :class:`Results`, so tables, plots and ``compare`` run the same
code on both.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.metrics import Estimate
from benchmark.records import LEADERBOARD_COLUMNS
from reports.leaderboard import NO_ATTACK, broken_prompts, compute_leaderboard, judge_descriptions

log = logging.getLogger(__name__)

BROKEN_COLUMNS = ["model", "task", "defense", "attack", "prompt_id", "hit"]
BENIGN_COLUMNS = ["model", "task", "defense", "metric", "prompt_id", "score"]


@dataclass
class Results:
    source: Path
    kind: str  # "run" or "entries"
    board: pd.DataFrame  # long form, LEADERBOARD_COLUMNS
    broken: pd.DataFrame  # BROKEN_COLUMNS: per prompt, broken or not
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
        rows.append({"model": row.model, "task": row.task, "defense": row.defense, "attack": NO_ATTACK,
                     "metric": "prepare_seconds", "value": float(seconds), "n": 1,
                     "ci_low": math.nan, "ci_high": math.nan})
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
        raise FileNotFoundError(f"{records_path} not found: pass a run directory written by `benchmark run`")
    records = pd.read_parquet(records_path)
    store_root = run_dir.resolve().parent  # run directories live directly under the store root (--out)
    board = compute_leaderboard(records)
    extra = prepare_rows(records, store_root)
    if extra:
        board = pd.concat([board, pd.DataFrame(extra, columns=LEADERBOARD_COLUMNS)], ignore_index=True)
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
        from reports.entries import load_entries

        return load_entries(path)
    raise FileNotFoundError(f"{path} is neither a run directory (no records.parquet) nor a folder of "
                            "reference entries (*.json): pass runs/<run-id> or reports/leaderboard")


def estimate_of(board: pd.DataFrame, model: str, task: str, defense: str, attack: str,
                metric: str) -> Estimate | None:
    hit = board[(board["model"] == model) & (board["task"] == task) & (board["defense"] == defense)
                & (board["attack"] == attack) & (board["metric"] == metric)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return Estimate(float(row["value"]), int(row["n"]), float(row["ci_low"]), float(row["ci_high"]))
