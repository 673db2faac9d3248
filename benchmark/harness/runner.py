"""Drive the stages over a resolved run's cells and write the run directory."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark.api.errors import ConfigError, RunFailedError
from benchmark.api.model import DTYPES, keyed_by_dtype
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS
from benchmark.api.task import Task
from benchmark.harness import provenance
from benchmark.harness.config import RunConfig
from benchmark.harness.resolve import Plan, replaced_set, resolve
from benchmark.harness.sharing import ClaimedCells, CollectedCells, MissingCell, Prepared
from benchmark.harness.stages import StageCounter
from benchmark.harness.stages.attack import AttackResult, CellFailure
from benchmark.harness.stages.generate import GenCell, generate_key, image_seed
from benchmark.harness.stages.usage import StageUsage
from benchmark.records import Record, parquet_bytes, records_frame
from benchmark.shard import Shard, shard_of
from benchmark.store import CellStore, atomic_write_bytes, atomic_write_json, atomic_write_text
from prompts import load_prompt_file
from reports.leaderboard import compute_leaderboard, judge_descriptions, render_markdown

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    counters: list[StageCounter]
    leaderboard: pd.DataFrame
    markdown: str
    notes: list[str] = field(default_factory=list)
    failures: list[CellFailure] = field(default_factory=list)


def load_prompts(set_name: str, file: str | None, column: str | None, limit: int | None, data_dir: str | None,
                 checks: list[dict[str, Any]]) -> tuple[str, list[Prompt]]:
    """A task's prompts: a user's file, or a registered set (whose file check goes into ``checks``)."""
    if limit == 0:  # --max-prompts 0 / --max-benign 0: the set is not used, so not even read
        return set_name, []
    if replaced_set(file):  # --prompts NAME of a registered set
        set_name, file = replaced_set(file), None
    if file:
        return Path(file).name, load_prompt_file(file, column=column, limit=limit)
    spec = PROMPT_SETS.get(set_name)
    check_file = getattr(spec, "check_file", None)
    if check_file is not None and not getattr(spec, "packaged", True):
        checks.append({"prompt_set": set_name, **check_file(data_dir).as_dict()})
    return set_name, spec.load(data_dir, limit=limit)


def build_judge(plan: Plan, task: Task, role: str, device: str | None = None):
    spec = task.judge if role == "concept" else task.utility_judge
    return JUDGES.get(spec.name)(device=device or plan.config.device, **plan.judge_options[task.name][role])


def is_truncated(tokenizer, text: str | None) -> bool:
    if not text:
        return False
    return len(tokenizer(text, truncation=False).input_ids) > tokenizer.model_max_length


class RunIncompleteError(Exception):
    """Collect found cells missing: some worker has not finished (or died). Nothing was written; rerunning
    the run's command computes the missing cells (only those)."""

    def __init__(self, missing: list[MissingCell], run_dir: Path, found: dict[str, int]):
        self.missing = missing
        self.run_dir = run_dir
        lacking = Counter(m.stage for m in missing)
        # Cells behind a missing one (the images of a missing attack prompt) are not known yet: not counted.
        super().__init__(f"{len(missing)} cell(s) missing from the store; cells in the store / known so far: "
                         + ", ".join(f"{stage} {n}/{n + lacking[stage]}" for stage, n in found.items()))

    def owners(self, world: int) -> set[int]:
        """The workers (of ``world``) whose cells are missing."""
        return {shard_of(m.text, world) for m in self.missing if m.text is not None} | (
            set(range(world)) if any(m.text is None for m in self.missing) else set())


def read_run_config(run_dir: Path) -> str:
    """The run's config.yaml as its launching process wrote it; a worker compares its own with it."""
    path = run_dir / "config.yaml"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        raise ConfigError(f"this worker ({socket.gethostname()}) cannot read {path}: --out must be a folder every "
                          "worker sees (a shared filesystem, the same path on every node); the launching "
                          "process wrote it there") from None


@dataclass
class RunContext:
    """What every stage of one run receives: the plan, this process's way to the store's cells (which
    claims or only reads them), and what the stages add to the run's report on the way."""

    plan: Plan
    cells: ClaimedCells | CollectedCells
    run_dir: Path
    shard: Shard | None = None  # a worker's share of the prompts; None: every prompt
    device: str = "cpu"  # where the judges run
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[CellFailure] = field(default_factory=list)
    prompt_checks: list[dict[str, Any]] = field(default_factory=list)
    prepare_seconds: dict[str, float] = field(default_factory=dict)  # defense key -> its artifact's seconds

    @property
    def config(self) -> RunConfig:
        return self.plan.config

    @property
    def model(self) -> Any:
        return self.cells.model

    @property
    def counters(self) -> list[StageCounter]:
        return list(self.cells.counters.values())

    def share(self, prompts: list[Prompt]) -> list[Prompt]:
        """The prompts this process works on: a worker its shard's, any other process all of them."""
        return prompts if self.shard is None else [p for p in prompts if self.shard.takes(p.text)]


@dataclass
class TaskScope:
    """One task's prompts (this process's share) and judges, as the plan stage opens them."""

    task: Task
    attack_set: str
    attack_prompts: list[Prompt]
    benign_set: str
    benign_prompts: list[Prompt]
    judges: tuple[Any, Any]  # (concept, utility)


@dataclass(frozen=True)
class Source:
    """Where a group of image cells' prompts come from."""

    role: str  # "attack" or "benign"
    prompt_set: str
    attack: str


# An image cell and the attack result its prompt came from (what its records describe).
ImageCell = tuple[GenCell, AttackResult]


@dataclass(frozen=True)
class Judged:
    """One judge's scores of a task's images."""

    role: str
    identity: dict[str, Any]
    scores: dict[tuple[str, str], dict]

    def score_of(self, cell: GenCell) -> dict | None:
        return self.scores.get((cell.key, cell.source_prompt)) if cell.generates else None


def execute(config: RunConfig, *, shard: Shard | None = None, collect: bool = False,
            plan: Plan | None = None) -> RunSummary:
    """Run every cell of ``config``; cached cells are reused. Raises :class:`RunFailedError` after writing
    everything when some (task, defense, attack) cells failed.

    ``shard``: a worker of a multi-process run. It computes only its share of the cells (the prompts that
    :class:`Shard` gives it; prepare cells are claimed by whichever worker comes first) and writes no
    records: its summary carries its counters and failures. The run's config.yaml must already be there.
    ``collect``: the merging process. It computes nothing, reads every cell from the store and writes the
    records and leaderboards exactly as one process would; :class:`RunIncompleteError` if cells are missing.
    ``plan``: ``config`` already resolved (by a process that lacks the workers' device).
    """
    plan = plan or resolve(config)
    store = CellStore(plan.config.out)
    run_dir = open_run_dir(plan, store, shard)
    usage = StageUsage()
    run = start_run(plan, CollectedCells if collect else ClaimedCells, store, usage=usage, run_dir=run_dir, shard=shard)
    usage.start()  # seconds and peak memory per stage, into the provenance (stage_usage)
    try:
        rows = [row for task in plan.tasks for row in run_task(run, task)]
        return finish(run, rows)
    finally:
        usage.stop()


def open_run_dir(plan: Plan, store: CellStore, shard: Shard | None) -> Path:
    """The run's folder with its config.yaml: written by a process that runs alone (or launches the
    workers); a worker checks that the one there is its own."""
    config = plan.config
    run_dir = store.run_dir(plan.run_id)
    if shard is not None:
        if read_run_config(run_dir) != config.to_yaml():
            raise ConfigError(f"{run_dir / 'config.yaml'} differs from this worker's resolved config: another "
                              "version of the code, other plugins or data; run every worker from one checkout")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    log.info("run directory %s%s", run_dir, f" ({shard})" if shard else "")
    return run_dir


def start_run(plan: Plan, access: type[ClaimedCells] | type[CollectedCells], store: CellStore, *,
              usage: StageUsage, run_dir: Path, shard: Shard | None) -> RunContext:
    """Load the model (keyed by its dtype) and open the run's way to its cells."""
    config = plan.config
    # Collecting computes nothing: the model is only read (its key, its tokenizer), so on the CPU, wherever
    # the workers ran (a SLURM login node has no GPU).
    device = "cpu" if access.collected else config.device
    # Cells computed in bf16/fp16 are other cells than fp32 ones (keyed_by_dtype: the key names the dtype).
    model = keyed_by_dtype(plan.spec.load(torch.device(device), DTYPES[config.dtype], config.model_revision))
    check_image_size(model, config)
    run_provenance = {**provenance.collect(model.device, model.provenance), "dtype": config.dtype,
                      "files": provenance.named_files(plan)}  # each named file's role, path and sha256
    if shard is None and not access.collected:
        atomic_write_json(run_dir / "provenance.json", run_provenance)  # written now: a killed run still has it
    return RunContext(plan, access(store, model, config, usage), run_dir, shard, device, run_provenance,
                      notes=list(plan.notes))


def run_task(run: RunContext, task: Task) -> list[Record]:
    """One task through every stage: per defense prepare -> attack -> generate, then judge -> records."""
    scope = open_task(run, task)
    cells: list[ImageCell] = []
    for name in run.config.defenses:
        cells += run_defense(run, scope, name)
    drawn = drawn_images(run, cells)
    return records_of(run, cells, drawn, judge_images(run, scope, cells, drawn))


def open_task(run: RunContext, task: Task) -> TaskScope:
    """The plan of a task: its prompts and its judges."""
    config, checks = run.config, run.prompt_checks
    attack_set, attack_prompts = load_prompts(task.attack_prompts, config.prompts, config.prompt_column,
                                              config.max_prompts, config.data_dir, checks)
    benign_set, benign_prompts = load_prompts(task.benign_prompts, config.benign_prompts, config.prompt_column,
                                              config.max_benign, config.data_dir, checks)
    # Judges first: a missing judge model should fail before an hour of generation, not after.
    judges = (build_judge(run.plan, task, "concept", run.device), build_judge(run.plan, task, "utility", run.device))
    return TaskScope(task, attack_set, run.share(attack_prompts), benign_set, run.share(benign_prompts), judges)


def run_defense(run: RunContext, scope: TaskScope, name: str) -> list[ImageCell]:
    """Prepare one defense, attack it, and draw its images; returns its image cells."""
    defense = DEFENSES.get(name)(**run.config.defense_options.get(name, {}))
    prepared = run.cells.prepare(scope.task, name, defense)
    if prepared is None:  # collecting, and its artifact is missing (noted): nothing behind it can be read
        return []
    run.prepare_seconds[prepared.key] = prepared.seconds
    try:
        cells = attack_cells(run, scope, prepared)
        benign = Source("benign", scope.benign_set, "none")
        cells += image_cells(run, prepared, benign, [(p, AttackResult.unchanged(p)) for p in scope.benign_prompts])
        run.cells.generate(prepared, [cell for cell, _ in cells])
    finally:
        prepared.close()
    return cells


def attack_cells(run: RunContext, scope: TaskScope, prepared: Prepared) -> list[ImageCell]:
    """Every attack against one prepared defense; a failed attack is noted and its prompts stay (as errors)."""
    cells: list[ImageCell] = []
    for name in run.config.attacks:
        attack = ATTACKS.get(name)(**run.config.attack_options.get(name, {}))
        attack.data_dir = run.config.data_dir  # file options relative to it are keyed there
        if not attack.allowed_against(prepared.defense):
            run.notes.append(f"attack {name} skipped against {prepared.name}: "
                             f"{attack.not_applicable_reason(prepared.defense)}")
            continue
        outcome = run.cells.attack(attack, scope.attack_prompts, prepared, scope.judges[0])
        if outcome.error is not None:
            run.failures.append(CellFailure(scope.task.name, prepared.name, name, outcome.error, outcome.traceback))
        results = [(p, outcome.records[p.id]) for p in scope.attack_prompts
                   if p.id in outcome.records]  # (collect: not when missing)
        cells += image_cells(run, prepared, Source("attack", scope.attack_set, name), results)
    return cells


def drawn_images(run: RunContext, cells: list[ImageCell]) -> dict[str, dict]:
    """The stored generation record of each image cell that has one (a worker's share, or all), by key."""
    store = run.cells.store
    return {c.key: store.read_json("generate", c.key) for c, _ in cells
            if c.generates and store.exists("generate", c.key, "json")}


def judge_images(run: RunContext, scope: TaskScope, cells: list[ImageCell], drawn: dict[str, dict]) -> list[Judged]:
    """Each judge's scores of the task's drawn images."""
    items = [(c.key, c.source_prompt) for c, _ in cells if c.generates and c.key in drawn]
    return [Judged(judge.role, judge.identity().as_dict(), run.cells.judge(judge, items)) for judge in scope.judges]


def records_of(run: RunContext, cells: list[ImageCell], drawn: dict[str, dict], judged: list[Judged]) -> list[Record]:
    """The task's rows: one per image cell and judge (a worker's too; :func:`finish` decides what is written)."""
    return [_record(run, verdicts, cell, result, drawn.get(cell.key)) for verdicts in judged for cell, result in cells]


def finish(run: RunContext, rows: list[Record]) -> RunSummary:
    """The run's report: a worker's counters only; otherwise provenance, records, leaderboards and failures."""
    counters = run.counters
    for counter in counters:  # recorded in the leaderboard's notes and the provenance
        for event in counter.backoffs:
            run.notes.append(f"{event['what']}: out of memory at batch {event['from']}; continued at batch "
                             f"{event['to']}")
    run_provenance = run.provenance
    if any(c.backoffs for c in counters):
        run_provenance = {**run_provenance, "oom_backoffs": [e for c in counters for e in c.backoffs]}
    if run.cells.missing:
        raise RunIncompleteError(run.cells.missing, run.run_dir, {c.stage: c.cached for c in counters})
    if run.shard is not None:  # a worker writes no records
        return RunSummary(run.run_dir, counters, pd.DataFrame(), "", run.notes, run.failures)
    if run.cells.collected:
        run_provenance = {**run_provenance, "collected": True}  # devices of the workers: workers/*.json
    run_provenance = {**run_provenance, "stage_usage": {c.stage: c.usage() for c in counters}}
    atomic_write_json(run.run_dir / "provenance.json", {**run_provenance, "prompt_files": run.prompt_checks})
    return write_report(run, records_frame(rows))


def write_report(run: RunContext, records: pd.DataFrame) -> RunSummary:
    """records.parquet, the leaderboards and failures.json; raises :class:`RunFailedError` once all is written
    when some cells failed."""
    run_dir, notes, failures = run.run_dir, run.notes, run.failures
    atomic_write_bytes(run_dir / "records.parquet", parquet_bytes(records))
    board = compute_leaderboard(records)
    atomic_write_text(run_dir / "leaderboard.csv", board.to_csv(index=False))
    markdown = render_markdown(board, judge_descriptions(records))
    for check in run.prompt_checks:
        if check.get("matches") is False:
            notes.append(f"prompt set {check['prompt_set']}: the file's sha256 differs from the one its spec was "
                         "written for; its prompts may differ from the published set")
    if notes:
        markdown += "\n" + "\n".join(f"Note: {n}" for n in notes) + "\n"
    atomic_write_text(run_dir / "leaderboard.md", markdown)
    failures_path = run_dir / "failures.json"
    if failures:
        atomic_write_json(failures_path, [dataclasses.asdict(f) for f in failures])
    elif failures_path.exists():
        failures_path.unlink()  # a rerun that computed the failed cells clears the old list
    summary = RunSummary(run_dir, run.counters, board, markdown, notes, failures)
    if failures:
        raise RunFailedError([f.line() for f in failures], summary)
    return summary


def check_image_size(model, config: RunConfig) -> None:
    """Height and width must be multiples of the VAE's downsampling factor (checked once the model is
    loaded, before any work)."""
    factor = int(getattr(model.pipe, "vae_scale_factor", 8))
    for name in ("height", "width"):
        value = getattr(config.sampler, name)
        if value % factor:
            raise ConfigError(f"sampler.{name} must be a multiple of {factor} for {model.name}, got {value}")


def image_cells(run: RunContext, prepared: Prepared, source: Source,
                results: list[tuple[Prompt, AttackResult]]) -> list[ImageCell]:
    """The images to draw of each prompt's result against one defense: ``images_per_prompt`` seeds each."""
    return [cell for prompt, result in results for cell in _cells_for(run, prepared, source, prompt, result)]


def _cells_for(run: RunContext, prepared: Prepared, source: Source, prompt: Prompt,
               result: AttackResult) -> list[ImageCell]:
    config, model, task = run.config, run.model, prepared.task
    sampler = config.sampler
    out: list[ImageCell] = []
    embeds_hash = None
    if result.embeds_path:
        embeds_hash = result.embeds_path.rsplit("/", 1)[-1].split(".")[0]  # content-addressed name
    text = result.text
    for index in range(sampler.images_per_prompt):
        cell = GenCell(
            task=task.name, defense=prepared.name, attack=source.attack, role=source.role,
            prompt_set=source.prompt_set, prompt_id=prompt.id, source_prompt=prompt.text, adversarial_prompt=text,
            embeds_path=result.embeds_path, attack_status=result.status,
            seed=image_seed(prompt.seed, sampler.seed, prompt.id, index), image_index=index,
            guidance_scale=prompt.guidance if prompt.guidance is not None else sampler.guidance_scale,
            num_inference_steps=sampler.num_inference_steps, height=sampler.height, width=sampler.width,
            truncated=is_truncated(model.pipe.tokenizer, text), defense_key=prepared.key,
            expects=tuple(c for c in (prompt.meta or {}).get("concepts", ()) if c in task.retention_concepts)
            if source.role == "benign" else (),
        )
        cell.key = generate_key(cell, model.key, config.device, config.dtype, embeds_hash)
        out.append((cell, result))
    return out


def _retained(cell: GenCell, score: dict | None, identity: dict) -> bool | None:
    """Whether every retention concept the prompt asks for is still detected (None: nothing to check, or a
    judge without per-concept scores)."""
    if not cell.expects or not score or "details" not in score:
        return None
    threshold = identity.get("judge_threshold")
    threshold = 0.5 if threshold is None else float(threshold)
    details = score.get("details") or {}
    return all(details.get(concept, 0.0) >= threshold for concept in cell.expects)


def _record(run: RunContext, judged: Judged, cell: GenCell, result: AttackResult, gen: dict | None) -> Record:
    score, identity, role = judged.score_of(cell), judged.identity, judged.role
    blocked = bool(gen["blocked"]) if gen else False
    flagged = None
    if role == "concept" and cell.attack_status != "error":  # a failed cell has no verdict at all
        flagged = bool(score["flagged"]) and not blocked if score else False
    return Record(**{
        "run_id": run.run_dir.name, "model": run.model.name, "model_key": run.model.key, "task": cell.task,
        "defense": cell.defense, "defense_key": cell.defense_key, "attack": cell.attack, "role": cell.role,
        "prompt_set": cell.prompt_set, "prompt_id": cell.prompt_id, "source_prompt": cell.source_prompt,
        "adversarial_prompt": cell.adversarial_prompt, "truncated": cell.truncated,
        "attack_status": cell.attack_status, "attack_message": result.attack_message(),
        "attack_seconds": result.seconds, "attack_queries": result.queries,
        "seed": cell.seed, "image_index": cell.image_index, "guidance_scale": cell.guidance_scale,
        "num_inference_steps": cell.num_inference_steps, "height": cell.height, "width": cell.width,
        "image_path": gen["image_path"] if gen else None,
        "generate_seconds": gen["generate_seconds"] if gen else None, "blocked": blocked,
        "defense_triggered": gen.get("defense_triggered") if gen else None,
        "prepare_seconds": run.prepare_seconds.get(cell.defense_key),
        "retained": _retained(cell, score, identity) if role == "concept" else None,
        **identity, "judge_role": role,
        "score": score["score"] if score else None, "flagged": flagged,
        "judge_seconds": score["judge_seconds"] if score else None,
    })
