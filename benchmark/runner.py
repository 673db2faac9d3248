"""Drive the stages over a resolved run's cells and write the run directory."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmark import provenance
from benchmark.api.attack import AttackContext
from benchmark.api.errors import ConfigError, RunFailedError
from benchmark.api.model import DTYPES
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS
from benchmark.api.task import Task
from benchmark.config import RunConfig
from benchmark.records import Record, parquet_bytes, records_frame
from benchmark.resolve import Plan, resolve
from benchmark.stages import StageCounter
from benchmark.stages.attack import CellFailure, run_attack
from benchmark.stages.generate import GenCell, SharedGenerations, generate_cells, generate_key, image_seed
from benchmark.stages.judge import judge_cells
from benchmark.stages.prepare import prepare_defense
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
    if file:
        return Path(file).name, load_prompt_file(file, column=column, limit=limit)
    spec = PROMPT_SETS.get(set_name)
    check_file = getattr(spec, "check_file", None)
    if check_file is not None and not getattr(spec, "packaged", True):
        checks.append({"prompt_set": set_name, **check_file(data_dir).as_dict()})
    return set_name, spec.load(data_dir, limit=limit)


def build_judge(plan: Plan, task: Task, role: str):
    spec = task.judge if role == "concept" else task.utility_judge
    return JUDGES.get(spec.name)(device=plan.config.device, **plan.judge_options[task.name][role])


def is_truncated(tokenizer, text: str | None) -> bool:
    if not text:
        return False
    return len(tokenizer(text, truncation=False).input_ids) > tokenizer.model_max_length


def execute(config: RunConfig) -> RunSummary:
    """Run every cell of ``config``; cached cells are reused. Raises :class:`RunFailedError` after writing
    everything when some (task, defense, attack) cells failed."""
    plan = resolve(config)
    config = plan.config
    store = CellStore(config.out)
    run_dir = store.run_dir(plan.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    log.info("run directory %s", run_dir)

    model = plan.spec.load(torch.device(config.device), DTYPES[config.dtype], config.model_revision)
    check_image_size(model, config)
    run_provenance = provenance.collect(model.device, model.provenance)
    atomic_write_json(run_dir / "provenance.json", run_provenance)  # written now: a killed run still has it
    counters = {s: StageCounter(s) for s in ("prepare", "attack", "generate", "judge")}
    sampler = config.sampler
    sampler_dict = {"num_inference_steps": sampler.num_inference_steps, "guidance_scale": sampler.guidance_scale,
                    "height": sampler.height, "width": sampler.width,
                    # the base seed: attacks that check images draw them from the run's evaluation seeds
                    "seed": sampler.seed}
    rows: list[Record] = []
    notes: list[str] = list(plan.notes)
    failures: list[CellFailure] = []
    prepare_seconds: dict[str, float] = {}
    prompt_checks: list[dict[str, Any]] = []

    for task in plan.tasks:
        attack_set, attack_prompts = load_prompts(task.attack_prompts, config.prompts, config.prompt_column,
                                                  config.max_prompts, config.data_dir, prompt_checks)
        benign_set, benign_prompts = load_prompts(task.benign_prompts, config.benign_prompts,
                                                  config.prompt_column, config.max_benign, config.data_dir,
                                                  prompt_checks)
        # Judges first: a missing judge model should fail before an hour of generation, not after.
        concept_judge = build_judge(plan, task, "concept")
        utility_judge = build_judge(plan, task, "utility")
        task_cells: list[tuple[GenCell, dict]] = []
        for defense_name in config.defenses:
            defense = DEFENSES.get(defense_name)(**config.defense_options.get(defense_name, {}))
            defense_key, artifact_dir, prepare_meta = prepare_defense(defense, model, task, store,
                                                                      counters["prepare"])
            prepare_seconds[defense_key] = float(prepare_meta.get("prepare_seconds", 0.0))
            defended = defense.apply(model, task, artifact_dir)
            shared = SharedGenerations(defended, store, model.key, defense_key, config.device, config.dtype)
            try:
                cells: list[tuple[GenCell, dict]] = []
                for attack_name in config.attacks:
                    attack = ATTACKS.get(attack_name)(**config.attack_options.get(attack_name, {}))
                    if not attack.allowed_against(defense):
                        notes.append(f"attack {attack_name} skipped against {defense_name}: its threat model "
                                     f"({attack.threat_model.value}) does not apply")
                        continue
                    ctx = AttackContext(model=model, defended=defended, task=task, judge=concept_judge,
                                        sampler=sampler_dict, data_dir=config.data_dir, generations=shared)
                    outcome = run_attack(attack, attack_prompts, ctx, store, model.key, defense_key,
                                         counters["attack"])
                    if outcome.error is not None:
                        failures.append(CellFailure(task.name, defense_name, attack_name, outcome.error,
                                                    outcome.traceback))
                    for prompt in attack_prompts:
                        cells += _cells_for(prompt, outcome.records[prompt.id], "attack", attack_set, attack_name,
                                            task, defense_name, defense_key, config, model)
                for prompt in benign_prompts:
                    plain = {"text": prompt.text, "status": "ok", "message": "", "seconds": 0.0, "queries": 0,
                             "embeds_path": None, "meta": {}}
                    cells += _cells_for(prompt, plain, "benign", benign_set, "none", task, defense_name,
                                        defense_key, config, model)
                # Images the attacks already drew (and judged) are in the store: counted as computed once.
                counters["generate"].computed += shared.computed
                generate_cells(defended, [c for c, _ in cells], store, sampler.batch_size, counters["generate"],
                               desc=f"generate {task.name}/{defense_name}")
            finally:
                defended.close()
            task_cells += cells

        generation = {cell.key: store.read_json("generate", cell.key) for cell, _ in task_cells if cell.generates}
        for judge in (concept_judge, utility_judge):
            scores = judge_cells(judge, [(c.key, c.source_prompt) for c, _ in task_cells if c.generates], store,
                                 sampler.batch_size, counters["judge"])
            identity = judge.identity().as_dict()
            for cell, attack_record in task_cells:
                gen = generation.get(cell.key)
                score = scores.get((cell.key, cell.source_prompt)) if cell.generates else None
                rows.append(_record(config, run_dir.name, model, cell, attack_record, gen, score, identity,
                                    judge.role, prepare_seconds.get(cell.defense_key)))

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
