"""Reference leaderboard entries: one JSON file per (model, task, defense, attack), RobustBench style.

Layout: ``<root>/<model>/<task>/<defense>/<attack>.json``. An entry holds the attack's metrics, the
defense's benign utility and cost (the same in every entry of that defense and run), the per-prompt
outcomes (which prompt ids were attacked and which were broken) so that the worst-case ASR over any set of
entries and a per-prompt comparison can be recomputed, and where it came from (run, commit, command).
Entries load back into the long form (:func:`load_entries`) and render through the same code as a run.

A cell whose attack raised is stored as failed: the entry's ``status`` is ``failed`` and its ``asr`` metric
has no value (``"status": "failed"``, n = its prompts); loading it back keeps it failed, and so is the
defense's worst-case ASR over entries that include it. Entries without ``status`` (older ones) are ``ok``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import yaml

from benchmark.store import atomic_write_text
from reports.board import (
    BENIGN_COLUMNS,
    BROKEN_COLUMNS,
    FAILED,
    NO_ATTACK,
    OK,
    Results,
    ResultsFormatError,
    ResultsNotFoundError,
    board_frame,
    row_failed,
)
from reports.leaderboard import robustness_rows

SCHEMA = "unlearn-arena/leaderboard-entry/1"
ATTACK_METRICS = ("asr", "attack_failures", "truncated_prompts", "attack_seconds_per_prompt",
                  "attack_queries_per_prompt")


def _safe(name: str) -> str:
    """A path component from a registry name (model paths and odd characters become '_'; no leading dot, so
    never '.' or '..')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_").lstrip(".") or "_"


def entry_path(root: Path, model: str, task: str, defense: str, attack: str) -> Path:
    return Path(root) / _safe(model) / _safe(task) / _safe(defense) / f"{_safe(attack)}.json"


def _num(value):
    """JSON has no NaN: missing numbers are null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metric(row: dict) -> dict:
    metric = {"value": _num(row["value"]), "n": int(row["n"]), "ci_low": _num(row["ci_low"]),
              "ci_high": _num(row["ci_high"])}
    if row_failed(row):
        metric["status"] = FAILED
    return metric


def command_line(provenance: dict) -> str:
    """The command that made the run, as a user would type it: ``python -m <module> ...``, with paths
    inside the repository made relative and other absolute paths cut to ``.../<name>`` (entries are
    committed; machine paths must not be)."""
    root = Path(__file__).resolve().parents[1]

    def relative(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute() and root in path.parents:
            return path.relative_to(root).as_posix()
        if path.is_absolute():
            return f".../{path.name}"
        return arg

    argv = [relative(str(a)) for a in provenance.get("command") or []]
    if argv and argv[0].endswith(".py") and not Path(argv[0]).is_absolute():
        module = Path(argv[0]).with_suffix("")
        parts = module.parent.parts if module.name == "__main__" else module.parts
        argv = ["python", "-m", ".".join(parts)] + argv[1:]
    return " ".join(argv)


def make_entries(results: Results) -> dict[tuple[str, str, str, str], dict]:
    """(model, task, defense, attack) -> entry dict, from a loaded run."""
    if results.kind != "run":
        raise ResultsFormatError("entries are written from a run directory, not from other entries")
    board, records = results.board, results.records
    config = yaml.safe_load(results.config_text) if results.config_text else {}
    git = results.provenance.get("git", {})
    origin = {"run_id": results.source.name, "commit": git.get("commit"), "dirty": git.get("dirty"),
              "created_utc": results.provenance.get("created_utc"),
              "command": command_line(results.provenance), "packages": results.provenance.get("packages", {})}
    keys = records.drop_duplicates(["model", "task", "defense"]).set_index(["model", "task", "defense"])
    attack_rows = records[records["role"] == "attack"]
    prompt_sets = attack_rows.drop_duplicates("task").set_index("task")["prompt_set"].to_dict()
    entries = {}
    for (model, task, defense, attack), outcome in results.broken.groupby(
            ["model", "task", "defense", "attack"], sort=False):
        rows = board[(board["model"] == model) & (board["task"] == task) & (board["defense"] == defense)]
        metrics = {r["metric"]: _metric(r) for r in rows[rows["attack"] == attack].to_dict("records")
                   if r["metric"] in ATTACK_METRICS}
        defense_metrics = {r["metric"]: _metric(r) for r in rows[rows["attack"] == NO_ATTACK].to_dict("records")}
        key_row = keys.loc[(model, task, defense)]
        failed = metrics.get("asr", {}).get("status") == FAILED
        entries[(model, task, defense, attack)] = {
            "schema": SCHEMA,
            "status": FAILED if failed else OK,
            "model": model, "model_key": str(key_row.get("model_key", "")),
            "task": task, "defense": defense, "defense_key": str(key_row.get("defense_key", "")),
            "attack": attack,
            "judge": results.judges.get(task, ""),
            "defense_options": (config.get("defense_options") or {}).get(defense, {}),
            "attack_options": (config.get("attack_options") or {}).get(attack, {}),
            "sampler": config.get("sampler", {}),
            "prompts": {"set": prompt_sets.get(task, ""), "ids": [str(p) for p in outcome["prompt_id"]],
                        "broken": [str(p) for p in outcome.loc[outcome["hit"], "prompt_id"]]},
            "metrics": metrics,
            "defense_metrics": defense_metrics,
            "benign_scores": _benign(results, model, task, defense),
            "source": origin,
        }
    return entries


def _benign(results: Results, model: str, task: str, defense: str) -> dict[str, dict[str, float]]:
    """metric -> {benign prompt id: score}: lets ``compare`` pair a run's benign prompts with these."""
    b = results.benign
    rows = b[(b["model"] == model) & (b["task"] == task) & (b["defense"] == defense)]
    return {metric: {str(r.prompt_id): float(r.score) for r in group.itertuples()}
            for metric, group in rows.groupby("metric")}


def write_entries(results: Results, root: Path) -> list[Path]:
    """Write (or overwrite) one file per entry of the run; entries of other keys are left alone."""
    paths = []
    for (model, task, defense, attack), entry in make_entries(results).items():
        path = entry_path(root, model, task, defense, attack)
        atomic_write_text(path, json.dumps(entry, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def _row(model, task, defense, attack, metric, data: dict) -> dict:
    nan = math.nan
    failed = data.get("status", OK) == FAILED
    return {"model": model, "task": task, "defense": defense, "attack": attack, "metric": metric,
            "value": nan if failed or data.get("value") is None else data["value"], "n": data.get("n", 0),
            "ci_low": nan if failed or data.get("ci_low") is None else data["ci_low"],
            "ci_high": nan if failed or data.get("ci_high") is None else data["ci_high"],
            "status": FAILED if failed else OK}


def entry_failed(entry: dict) -> bool:
    """The entry's attack raised: it has no ASR."""
    return entry.get("status", OK) == FAILED or entry.get("metrics", {}).get("asr", {}).get("status") == FAILED


def read_entry(path: Path) -> dict:
    entry = json.loads(Path(path).read_text())
    if entry.get("schema") != SCHEMA:
        raise ResultsFormatError(f"{path} is not a leaderboard entry (schema {entry.get('schema')!r}, expected {SCHEMA!r})")
    return entry


PUBLISHED_DIR = "published"


def load_entries(root: Path) -> Results:
    """Every entry under ``root`` -> :class:`Results`. The worst-case ASR of a defense is recomputed from
    the per-prompt outcomes of its entries, exactly as a run computes it from its records."""
    root = Path(root)
    # Published papers' numbers (``published/<suite>/``) are read by ``compare --published`` one suite at a
    # time; a folder that holds them beside measured entries renders the measured ones only.
    entries = [read_entry(p) for p in sorted(root.rglob("*.json")) if PUBLISHED_DIR not in p.relative_to(root).parts]
    if not entries:
        raise ResultsNotFoundError(f"no leaderboard entries (*.json) under {root}")
    rows, broken, benign, judges, seen_defense = [], [], [], {}, set()
    failed: dict[tuple[str, str, str, str], int] = {}
    model_keys: dict[str, str] = {}
    sources: dict[str, dict] = {}
    for e in entries:
        model, task, defense, attack = e["model"], e["task"], e["defense"], e["attack"]
        model_keys[model] = e.get("model_key", "")
        if e.get("judge"):
            judges[task] = e["judge"]
        sources[e["source"].get("run_id", "")] = e["source"]
        metrics = dict(e["metrics"])
        if entry_failed(e):
            failed[(model, task, defense, attack)] = len(e["prompts"]["ids"]) or int(metrics.get("asr", {}).get("n", 0))
            metrics["asr"] = {**metrics.get("asr", {"n": failed[(model, task, defense, attack)]}), "status": FAILED}
        for metric, data in metrics.items():
            rows.append(_row(model, task, defense, attack, metric, data))
        if (model, task, defense) not in seen_defense:
            seen_defense.add((model, task, defense))
            for metric, data in e.get("defense_metrics", {}).items():
                rows.append(_row(model, task, defense, NO_ATTACK, metric, data))
            for metric, scores in e.get("benign_scores", {}).items():
                benign += [{"model": model, "task": task, "defense": defense, "metric": metric, "prompt_id": p,
                            "score": v} for p, v in scores.items()]
        hits = set(e["prompts"]["broken"])
        broken += [{"model": model, "task": task, "defense": defense, "attack": attack, "prompt_id": p,
                    "hit": p in hits} for p in e["prompts"]["ids"]]
    broken_frame = pd.DataFrame(broken, columns=BROKEN_COLUMNS)
    worst = [r for r in robustness_rows(broken_frame, failed) if r["metric"] == "worst_case_asr"]
    board = board_frame(rows + worst)
    provenance = {"entries": str(root), "model_keys": model_keys, "sources": list(sources.values())}
    return Results(source=root, kind="entries", board=board, broken=broken_frame,
                   benign=pd.DataFrame(benign, columns=BENIGN_COLUMNS), judges=judges, provenance=provenance)
