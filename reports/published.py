"""``benchmark compare RUN --published SUITE``: a run held to the numbers a paper published.

A paper suite (``benchmark/suites/paper-*.yaml``) carries, besides the run keys, a ``source`` block the
runner ignores: the paper, its table, the upstream code file and commit, the ASR definition and the
``protocol`` the published numbers were measured under. The numbers themselves are reference entries
(schema ``unlearn-arena/leaderboard-entry/1``, :mod:`reports.entries`) under
``reports/leaderboard/published/<suite>/<model>/<task>/<defense>/<attack>.json``, each with a
``published`` block (citation, table, page, the value as printed, whether the defense and attack are
registered here). They hold no per-prompt outcomes (papers publish rates), so ``compare`` of two entry
folders never pairs them with a run's prompts; only this module reads them against a run.

Per published cell (model, task, defense, attack; attack ``none`` = the pre-attack ASR):

* **reproduced**: the published rate lies inside our 95% Wilson interval of the same cell;
* **differs**: it lies outside;
* **not run**: the run has no such cell (a published-only row, e.g. a defense not registered here, is
  marked ``not registered``);
* **failed**: the run's cell raised (never a pass).

**Protocol.** Before any cell is compared, the run's records are checked against the suite's protocol
(model, prompt set, number of prompts, steps, guidance, resolution, images per prompt, judge, judge preset
(its class set and threshold are spelled into the preset name), judge threshold, judge weights hash when the
source pins one, attack options). A difference is never compared silently: :func:`compare_published` raises
:class:`ProtocolMismatchError` naming every field, unless ``allow_mismatch`` is set; then the comparison
runs and every cell is marked ``protocol differs``.

Exit code (:func:`exit_code`), as ``compare``: 1 when some cell differs or failed, or when nothing could be
compared; 0 otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.api.errors import ConfigError, UserError
from benchmark.api.registry import SUITES
from benchmark.judges.nudenet_tables import CHECKPOINTS, checkpoint_of
from benchmark.metrics import Estimate
from benchmark.suites import read_suite
from reports.board import Results, estimate_of, failed_cells
from reports.entries import SCHEMA, entry_path, read_entry

PUBLISHED_ROOT = Path(__file__).resolve().parent / "leaderboard" / "published"
REPRODUCED, DIFFERS, NOT_RUN, NOT_REGISTERED, FAILED = (
    "reproduced", "differs", "not run", "not registered", "failed")
# Inside our interval, but under another protocol (--allow-protocol-mismatch): never called a reproduction.
NOT_REPRODUCED = "within interval, not reproduced"
# protocol key -> records column it is checked against (attack rows; judge columns on concept-judge rows)
RECORD_FIELDS = {
    "model": "model", "prompt_set": "prompt_set", "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale", "height": "height", "width": "width", "judge": "judge",
    "judge_preset": "judge_preset", "judge_threshold": "judge_threshold",
    "judge_weights_hash": "judge_weights_hash",
}
CITATION_KEYS = ("paper", "arxiv", "table")


class ProtocolMismatchError(UserError):
    """The run was not made under the protocol of the published numbers (the CLI prints it and exits 2)."""


@dataclass
class Cell:
    model: str
    task: str
    defense: str
    attack: str
    published: float
    citation: str
    verdict: str
    ours: Estimate | None = None
    note: str = ""


@dataclass
class PublishedComparison:
    suite: str
    cells: list[Cell] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # protocol fields that differ (allowed)
    warnings: list[str] = field(default_factory=list)


def suite_path(suite: str | Path) -> Path:
    """A suite name (``paper-...``) or a suite file."""
    path = Path(suite)
    return path if path.is_file() else Path(SUITES.get(str(suite)))


def suite_source(suite: str | Path) -> dict[str, Any]:
    """The suite's ``source`` block (empty when it has none)."""
    source = read_suite(suite_path(suite)).get("source") or {}  # with its include: resolved
    if not isinstance(source, dict):
        raise ConfigError(f"suite {suite}: 'source' must be a mapping")
    return source


def published_entries(suite: str, root: Path = PUBLISHED_ROOT) -> list[dict]:
    """Every published entry of a suite (sorted by path); an error when the suite has none."""
    folder = Path(root) / suite
    paths = sorted(folder.rglob("*.json")) if folder.is_dir() else []
    if not paths:
        raise UserError(f"no published entries for suite {suite!r} under {folder}; suites with published "
                        f"numbers: {sorted(p.name for p in Path(root).iterdir() if p.is_dir())}")
    return [read_entry(p) for p in paths]


def citation_of(entry: dict) -> str:
    """``paper (arXiv id), table, page`` of a published entry; ConfigError when it has none."""
    pub = entry.get("published") or {}
    missing = [k for k in CITATION_KEYS if not pub.get(k)]
    if missing:
        raise ConfigError(f"published entry {entry.get('defense')}/{entry.get('attack')} lacks {missing}")
    page = f", p. {pub['page']}" if pub.get("page") else ""
    return f"{pub['paper']} (arXiv {pub['arxiv']}), {pub['table']}{page}"


def make_published_entry(suite: str, model: str, task: str, defense: str, attack: str, value_percent: float,
                         n: int | None, prompt_set: str, judge: str, published: dict[str, Any]) -> dict:
    """One published number as a reference entry: ASR = ``value_percent`` / 100 over ``n`` prompts (the
    paper's count; ``n`` 0 when unknown), no interval (papers print none), no per-prompt outcome."""
    return {
        "schema": SCHEMA, "status": "ok", "model": model, "model_key": "", "task": task, "defense": defense,
        "defense_key": "", "attack": attack, "judge": judge, "defense_options": {}, "attack_options": {},
        "sampler": {}, "prompts": {"set": prompt_set, "ids": [], "broken": []},
        "metrics": {"asr": {"value": round(value_percent / 100, 6), "n": int(n or 0), "ci_low": None,
                            "ci_high": None}},
        "defense_metrics": {}, "benign_scores": {},
        "published": {"suite": suite, "value_as_printed": f"{value_percent:g}%", **published},
        "source": {"run_id": f"published:{suite}", "kind": "published", "command": ""},
    }


def write_published_entry(entry: dict, root: Path = PUBLISHED_ROOT) -> Path:
    path = entry_path(Path(root) / entry["published"]["suite"], entry["model"], entry["task"], entry["defense"],
                      entry["attack"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return path


def _run_config(results: Results) -> dict:
    return yaml.safe_load(results.config_text) if results.config_text else {}


def _distinct(frame, column: str) -> list:
    if frame is None or column not in frame:
        return []
    return sorted({v for v in frame[column].tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))},
                  key=str)


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-9)
    return str(expected) == str(actual)


def protocol_mismatches(protocol: dict[str, Any], results: Results, task: str) -> list[str]:
    """``field: published X, run Y`` for every protocol field the run differs on (fields set to null in the
    protocol are not pinned by the source and not checked)."""
    records = results.records
    if records is None:
        raise UserError(f"{results.source}: --published compares a run directory (records.parquet), not entries")
    attack_rows = records[(records["task"] == task) & (records["role"] == "attack")]
    concept = attack_rows[attack_rows["judge_role"] == "concept"]
    out = []
    for key, column in RECORD_FIELDS.items():
        expected = protocol.get(key)
        if expected is None:
            continue
        frame = concept if key.startswith("judge") else attack_rows
        actual = _distinct(frame, column)
        if len(actual) != 1 or not _same(expected, actual[0]):
            out.append(f"{key}: published {expected!r}, run {actual if len(actual) != 1 else actual[0]!r}")
    if protocol.get("prompts") is not None:
        count = attack_rows["prompt_id"].nunique()
        if count != int(protocol["prompts"]):
            out.append(f"prompts: published {protocol['prompts']}, run {count} (--max-prompts?)")
    if protocol.get("images_per_prompt") is not None and "image_index" in attack_rows and len(attack_rows):
        images = int(attack_rows["image_index"].max()) + 1
        if images != int(protocol["images_per_prompt"]):
            out.append(f"images_per_prompt: published {protocol['images_per_prompt']}, run {images}")
    run_options = _run_config(results).get("attack_options") or {}
    for attack, options in (protocol.get("attack_options") or {}).items():
        for key, value in options.items():
            actual = (run_options.get(attack) or {}).get(key)
            if actual is None or not _same(value, actual):
                out.append(f"attack_options.{attack}.{key}: published {value!r}, run {actual!r}")
    return out


def judge_checkpoint_mismatches(protocol: dict[str, Any], results: Results, task: str) -> list[str]:
    """For NudeNet protocols that name a registered checkpoint (``protocol.judge_checkpoint``): the run's
    judge must have run that checkpoint with that version's processing. A run judged by another checkpoint
    is comparable in definition, never a reproduction (NudeNet versions' recall differs widely)."""
    wanted = protocol.get("judge_checkpoint")
    if protocol.get("judge") != "nudenet" or wanted not in CHECKPOINTS or results.records is None:
        return []
    rows = results.records
    concept = rows[(rows["task"] == task) & (rows["role"] == "attack") & (rows["judge_role"] == "concept")]
    used = sorted({checkpoint_of(identity) for identity in
                   concept[["judge_version", "judge_weights_hash"]].drop_duplicates().to_dict("records")})
    if used == [wanted]:
        return []
    return [f"judge_checkpoint ({task}): published {wanted!r}, run {used[0] if len(used) == 1 else used!r} "
            f"(`--option judge:nudenet.checkpoint={wanted} --option judge:nudenet.model_path=FILE`)"]


def compare_published(results: Results, suite: str, root: Path = PUBLISHED_ROOT,
                      allow_mismatch: bool = False) -> PublishedComparison:
    """Every published cell of ``suite`` against the run (see the module docstring)."""
    source = suite_source(suite)
    protocol = source.get("protocol") or {}
    entries = published_entries(suite, root)
    out = PublishedComparison(suite=suite)
    tasks = sorted({e["task"] for e in entries})
    for task in tasks:
        out.mismatches += protocol_mismatches(protocol, results, task)
        out.mismatches += judge_checkpoint_mismatches(protocol, results, task)
    if out.mismatches and not allow_mismatch:
        raise ProtocolMismatchError(
            f"the run's protocol differs from {suite}'s published one: " + "; ".join(out.mismatches)
            + ". Rerun with `run --suite " + suite + "`, or pass --allow-protocol-mismatch to compare anyway "
            "(every cell is then marked 'protocol differs')")
    if protocol.get("judge_checkpoint") not in CHECKPOINTS and protocol.get("judge_weights_hash") is None:
        out.warnings.append(f"{suite}: the source does not pin a judge checkpoint hash (see its "
                            "protocol.judge_checkpoint); ours: "
                            + ", ".join(map(str, _distinct(results.records, "judge_weights_hash"))))
    failed = failed_cells(results.board)
    for entry in entries:
        out.cells.append(_cell(entry, results, failed, bool(out.mismatches)))
    return out


def _cell(entry: dict, results: Results, failed: set, mismatched: bool) -> Cell:
    model, task, defense, attack = entry["model"], entry["task"], entry["defense"], entry["attack"]
    value = entry["metrics"]["asr"]["value"]
    pub = entry.get("published") or {}
    cell = Cell(model, task, defense, attack, float(value), citation_of(entry), NOT_RUN)
    if not pub.get("registered", True):
        cell.verdict, cell.note = NOT_REGISTERED, pub.get("note", "not registered here")
        return cell
    # With --allow-protocol-mismatch a run on another model (sd14-shaped for sd-1.4) is read in its place.
    run_models = _distinct(results.records, "model")
    ours_model = run_models[0] if mismatched and len(run_models) == 1 else model
    if (ours_model, task, defense, attack) in failed:
        cell.verdict = FAILED
        return cell
    ours = estimate_of(results.board, ours_model, task, defense, attack, "asr")
    if ours is None:
        return cell
    cell.ours = ours
    inside = ours.ci_low - 1e-12 <= value <= ours.ci_high + 1e-12
    cell.verdict = (NOT_REPRODUCED if mismatched else REPRODUCED) if inside else DIFFERS
    notes = ["protocol differs"] if mismatched else []
    if ours_model != model:
        notes.append(f"ours on {ours_model}")
    if pub.get("verified") is False:
        notes.append("published number unverified")
    cell.note = "; ".join(notes)
    return cell


def render(comparison: PublishedComparison, run_name: str) -> str:
    lines = [f"compare  run: {run_name}", f"         published: {comparison.suite}", ""]
    lines += [f"warning: {w}" for w in comparison.warnings]
    lines += [f"protocol differs (allowed): {m}" for m in comparison.mismatches]
    header = f"{'model/task/defense':<32} {'attack':<14} {'published':>9} {'ours [95% interval]':>26}  verdict"
    lines += [header, "-" * len(header)]
    for c in comparison.cells:
        ours = "-" if c.ours is None else \
            f"{100 * c.ours.value:.1f}% [{100 * c.ours.ci_low:.1f}, {100 * c.ours.ci_high:.1f}] n={c.ours.n}"
        verdict = c.verdict + (f" ({c.note})" if c.note else "")
        lines.append(f"{c.model + '/' + c.task + '/' + c.defense:<32} {c.attack:<14} {100 * c.published:>8.1f}% "
                     f"{ours:>26}  {verdict}")
    lines += ["", "sources:"] + sorted({f"  {c.citation}" for c in comparison.cells})
    counts = {v: sum(c.verdict == v for c in comparison.cells)
              for v in (REPRODUCED, NOT_REPRODUCED, DIFFERS, FAILED, NOT_RUN, NOT_REGISTERED)}
    lines += ["", ", ".join(f"{n} {v}" for v, n in counts.items())]
    return "\n".join(lines) + "\n"


def exit_code(comparison: PublishedComparison) -> int:
    """1 when a cell differs or failed, or when no cell could be compared; 0 otherwise."""
    verdicts = [c.verdict for c in comparison.cells]
    compared = [v for v in verdicts if v in (REPRODUCED, NOT_REPRODUCED, DIFFERS)]
    return 1 if DIFFERS in verdicts or FAILED in verdicts or not compared else 0
