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

from benchmark.harness import provenance
from benchmark.api.attack import AttackContext
from benchmark.api.errors import ConfigError, RunFailedError
from benchmark.api.model import DTYPES, keyed_by_dtype
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS
from benchmark.api.task import Task
from benchmark.harness.config import RunConfig
from benchmark.records import Record, parquet_bytes, records_frame
from benchmark.harness.resolve import Plan, replaced_set, resolve
from benchmark.shard import Shard, shard_of
from benchmark.harness.sharing import (
    claimed_attack,
    claimed_generate,
    claimed_judge,
    missing_generations,
    read_attack,
    read_scores,
)
from benchmark.harness.stages import StageCounter
from benchmark.harness.stages.attack import CellFailure
from benchmark.harness.stages.generate import GenCell, SharedGenerations, generate_key, image_seed
from benchmark.harness.stages.prepare import DONE_FILE, prepare_defense, prepare_keys, prepared
from benchmark.harness.stages.usage import StageUsage
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


@dataclass
class MissingCell:
    """A cell a collecting process found missing from the store."""

    stage: str
    what: str
    text: str | None  # its prompt's text (which worker owns it); None: every worker needs it (prepare)


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
    config = plan.config
    store = CellStore(config.out)
    run_dir = store.run_dir(plan.run_id)
    if shard is not None:
        if read_run_config(run_dir) != config.to_yaml():
            raise ConfigError(f"{run_dir / 'config.yaml'} differs from this worker's resolved config: another "
                              "version of the code, other plugins or data; run every worker from one checkout")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    log.info("run directory %s%s", run_dir, f" ({shard})" if shard else "")

    # Collecting computes nothing: the model is only read (its key, its tokenizer), so on the CPU, wherever
    # the workers ran (a SLURM login node has no GPU).
    device = "cpu" if collect else config.device
    # Cells computed in bf16/fp16 are other cells than fp32 ones (keyed_by_dtype: the key names the dtype).
    model = keyed_by_dtype(plan.spec.load(torch.device(device), DTYPES[config.dtype], config.model_revision))
    check_image_size(model, config)
    run_provenance = {**provenance.collect(model.device, model.provenance), "dtype": config.dtype,
                      "files": provenance.named_files(plan)}  # each named file's role, path and sha256
    if shard is None and not collect:
        atomic_write_json(run_dir / "provenance.json", run_provenance)  # written now: a killed run still has it
    counters = {s: StageCounter(s) for s in ("prepare", "attack", "generate", "judge")}
    usage = StageUsage().start()  # seconds and peak memory per stage, into the provenance (stage_usage)
    try:
        return _run_cells(config, plan, store, run_dir, shard, collect, model, run_provenance, counters, usage)
    finally:
        usage.stop()


def _run_cells(config: RunConfig, plan, store: CellStore, run_dir: Path, shard, collect: bool, model,
               run_provenance: dict[str, Any], counters: dict[str, StageCounter], usage: StageUsage) -> RunSummary:
    """The body of :func:`execute` once the model is loaded: every cell of every stage, then the records."""
    device = "cpu" if collect else config.device
    sampler = config.sampler
    sampler_dict = {"num_inference_steps": sampler.num_inference_steps, "guidance_scale": sampler.guidance_scale,
                    "height": sampler.height, "width": sampler.width,
                    # the base seed: attacks that check images draw them from the run's evaluation seeds
                    "seed": sampler.seed}
    rows: list[Record] = []
    notes: list[str] = list(plan.notes)
    failures: list[CellFailure] = []
    missing: list[MissingCell] = []
    prepare_seconds: dict[str, float] = {}
    prompt_checks: list[dict[str, Any]] = []

    for task in plan.tasks:
        attack_set, attack_prompts = load_prompts(task.attack_prompts, config.prompts, config.prompt_column,
                                                  config.max_prompts, config.data_dir, prompt_checks)
        benign_set, benign_prompts = load_prompts(task.benign_prompts, config.benign_prompts,
                                                  config.prompt_column, config.max_benign, config.data_dir,
                                                  prompt_checks)
        if shard is not None:
            attack_prompts = [p for p in attack_prompts if shard.takes(p.text)]
            benign_prompts = [p for p in benign_prompts if shard.takes(p.text)]
        # Judges first: a missing judge model should fail before an hour of generation, not after.
        concept_judge = build_judge(plan, task, "concept", device)
        utility_judge = build_judge(plan, task, "utility", device)
        task_cells: list[tuple[GenCell, dict]] = []
        for defense_name in config.defenses:
            defense = DEFENSES.get(defense_name)(**config.defense_options.get(defense_name, {}))
            if collect:
                defense_key, artifact_key = prepare_keys(defense, model.key, task.name)
                if not prepared(store, artifact_key):
                    missing.append(MissingCell("prepare", f"{task.name}/{defense_name}", None))
                    continue
                counters["prepare"].cached += 1
                prepare_meta = store.read_json_path(store.dir("prepare", artifact_key) / DONE_FILE)
                defended = None
            else:
                with usage.measure(counters["prepare"]):
                    defense_key, artifact_dir, prepare_meta = prepare_defense(defense, model, task, store,
                                                                              counters["prepare"])
                    defended = defense.apply(model, task, artifact_dir)
            prepare_seconds[defense_key] = float(prepare_meta.get("prepare_seconds", 0.0))
            try:
                cells: list[tuple[GenCell, dict]] = []
                for attack_name in config.attacks:
                    attack = ATTACKS.get(attack_name)(**config.attack_options.get(attack_name, {}))
                    attack.data_dir = config.data_dir  # file options relative to it are keyed there
                    if not attack.allowed_against(defense):
                        notes.append(f"attack {attack_name} skipped against {defense_name}: "
                                     f"{attack.not_applicable_reason(defense)}")
                        continue
                    if collect:
                        outcome, absent = read_attack(attack, attack_prompts, sampler_dict, store, model.key,
                                                      defense_key, counters["attack"])
                        missing += [MissingCell("attack", f"{task.name}/{defense_name}/{attack_name}/{p.id}",
                                                p.text) for p in absent]
                    else:
                        shared = SharedGenerations(defended, store, model.key, defense_key, config.device,
                                                   config.dtype)
                        ctx = AttackContext(model=model, defended=defended, task=task, judge=concept_judge,
                                            sampler=sampler_dict, data_dir=config.data_dir, generations=shared)
                        with usage.measure(counters["attack"]):
                            outcome = claimed_attack(attack, attack_prompts, ctx, store, model.key, defense_key,
                                                     counters["attack"])
                        # Images the attack already drew (and judged) are in the store: computed once.
                        counters["generate"].computed += shared.computed
                    if outcome.error is not None:
                        failures.append(CellFailure(task.name, defense_name, attack_name, outcome.error,
                                                    outcome.traceback))
                    for prompt in attack_prompts:
                        if prompt.id in outcome.records:  # (collect: not when missing)
                            cells += _cells_for(prompt, outcome.records[prompt.id], "attack", attack_set,
                                                attack_name, task, defense_name, defense_key, config, model)
                for prompt in benign_prompts:
                    plain = {"text": prompt.text, "status": "ok", "message": "", "seconds": 0.0, "queries": 0,
                             "embeds_path": None, "meta": {}}
                    cells += _cells_for(prompt, plain, "benign", benign_set, "none", task, defense_name,
                                        defense_key, config, model)
                if collect:
                    missing += [MissingCell("generate", f"{c.task}/{c.defense}/{c.attack}/{c.prompt_id}",
                                            c.source_prompt)
                                for c in missing_generations([c for c, _ in cells], store, counters["generate"])]
                else:
                    with usage.measure(counters["generate"]):
                        claimed_generate(defended, [c for c, _ in cells], store, sampler.batch_size,
                                         counters["generate"], desc=f"generate {task.name}/{defense_name}")
            finally:
                if defended is not None:
                    defended.close()
            task_cells += cells

        drawn = [(c, a) for c, a in task_cells if c.generates and store.exists("generate", c.key, "json")]
        generation = {cell.key: store.read_json("generate", cell.key) for cell, _ in drawn}
        for judge in (concept_judge, utility_judge):
            items = [(c.key, c.source_prompt) for c, _ in drawn]
            if collect:
                scores, absent = read_scores(judge, items, store, counters["judge"])
                texts = {c.key: c.source_prompt for c, _ in drawn}
                missing += [MissingCell("judge", f"{judge.identity().as_dict()['judge']} of image {key}", texts[key])
                            for key, _ in absent]
            else:
                with usage.measure(counters["judge"]):
                    scores = claimed_judge(judge, items, store, sampler.batch_size, counters["judge"])
            if shard is not None or missing:
                continue  # a worker writes no records; a collect with missing cells writes none either
            identity = judge.identity().as_dict()
            for cell, attack_record in task_cells:
                gen = generation.get(cell.key)
                score = scores.get((cell.key, cell.source_prompt)) if cell.generates else None
                rows.append(_record(config, run_dir.name, model, cell, attack_record, gen, score, identity,
                                    judge.role, prepare_seconds.get(cell.defense_key)))

    for counter in counters.values():  # recorded in the leaderboard's notes and the provenance
        for event in counter.backoffs:
            notes.append(f"{event['what']}: out of memory at batch {event['from']}; continued at batch {event['to']}")
    if any(c.backoffs for c in counters.values()):
        run_provenance = {**run_provenance, "oom_backoffs": [e for c in counters.values() for e in c.backoffs]}
    if missing:
        raise RunIncompleteError(missing, run_dir, {c.stage: c.cached for c in counters.values()})
    if shard is not None:
        return RunSummary(run_dir, list(counters.values()), pd.DataFrame(), "", notes, failures)
    if collect:
        run_provenance = {**run_provenance, "collected": True}  # devices of the workers: workers/*.json
    run_provenance = {**run_provenance, "stage_usage": {c.stage: c.usage() for c in counters.values()}}
    atomic_write_json(run_dir / "provenance.json", {**run_provenance, "prompt_files": prompt_checks})
    records = records_frame(rows)
    atomic_write_bytes(run_dir / "records.parquet", parquet_bytes(records))
    board = compute_leaderboard(records)
    atomic_write_text(run_dir / "leaderboard.csv", board.to_csv(index=False))
    markdown = render_markdown(board, judge_descriptions(records))
    for check in prompt_checks:
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
    summary = RunSummary(run_dir, list(counters.values()), board, markdown, notes, failures)
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


def _cells_for(prompt, attack_record, role, prompt_set, attack_name, task, defense_name, defense_key,
               config: RunConfig, model) -> list[tuple[GenCell, dict]]:
    sampler = config.sampler
    out = []
    embeds_hash = None
    if attack_record.get("embeds_path"):
        embeds_hash = attack_record["embeds_path"].rsplit("/", 1)[-1].split(".")[0]  # content-addressed name
    text = attack_record.get("text")
    for index in range(sampler.images_per_prompt):
        cell = GenCell(
            task=task.name, defense=defense_name, attack=attack_name, role=role, prompt_set=prompt_set,
            prompt_id=prompt.id, source_prompt=prompt.text, adversarial_prompt=text,
            embeds_path=attack_record.get("embeds_path"), attack_status=attack_record["status"],
            seed=image_seed(prompt.seed, sampler.seed, prompt.id, index), image_index=index,
            guidance_scale=prompt.guidance if prompt.guidance is not None else sampler.guidance_scale,
            num_inference_steps=sampler.num_inference_steps, height=sampler.height, width=sampler.width,
            truncated=is_truncated(model.pipe.tokenizer, text), defense_key=defense_key,
            expects=tuple(c for c in (prompt.meta or {}).get("concepts", ()) if c in task.retention_concepts)
            if role == "benign" else (),
        )
        cell.key = generate_key(cell, model.key, config.device, config.dtype, embeds_hash)
        out.append((cell, attack_record))
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


def _attack_message(attack_record: dict) -> str:
    """The attack's message, led by its declared failure reason when the prompt failed."""
    reason, message = attack_record.get("reason") or "", attack_record.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def _record(config, run_name, model, cell: GenCell, attack_record, gen, score, identity, role,
            prepare_seconds: float | None = None) -> Record:
    blocked = bool(gen["blocked"]) if gen else False
    flagged = None
    if role == "concept" and cell.attack_status != "error":  # a failed cell has no verdict at all
        flagged = bool(score["flagged"]) and not blocked if score else False
    return Record(**{
        "run_id": run_name, "model": model.name, "model_key": model.key, "task": cell.task,
        "defense": cell.defense, "defense_key": cell.defense_key, "attack": cell.attack, "role": cell.role,
        "prompt_set": cell.prompt_set, "prompt_id": cell.prompt_id, "source_prompt": cell.source_prompt,
        "adversarial_prompt": cell.adversarial_prompt, "truncated": cell.truncated,
        "attack_status": cell.attack_status, "attack_message": _attack_message(attack_record),
        "attack_seconds": attack_record.get("seconds", 0.0), "attack_queries": attack_record.get("queries", 0),
        "seed": cell.seed, "image_index": cell.image_index, "guidance_scale": cell.guidance_scale,
        "num_inference_steps": cell.num_inference_steps, "height": cell.height, "width": cell.width,
        "image_path": gen["image_path"] if gen else None,
        "generate_seconds": gen["generate_seconds"] if gen else None, "blocked": blocked,
        "defense_triggered": gen.get("defense_triggered") if gen else None, "prepare_seconds": prepare_seconds,
        "retained": _retained(cell, score, identity) if role == "concept" else None,
        **identity, "judge_role": role,
        "score": score["score"] if score else None, "flagged": flagged,
        "judge_seconds": score["judge_seconds"] if score else None,
    })
