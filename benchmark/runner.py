"""Resolve a run's config, then drive the stages over its cells and write the run directory."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.config import ConfigError, RunConfig
from benchmark.hashing import file_hash, stable_hash
from benchmark.records import COLUMNS
from benchmark.registry import ATTACKS, DEFENSES, JUDGES, PROMPT_SETS, TASKS, load_plugin
from benchmark.stages import StageCounter
from benchmark.stages.attack import run_attack
from benchmark.stages.generate import GenCell, SharedGenerations, generate_cells, generate_key, image_seed
from benchmark.stages.judge import judge_cells
from benchmark.stages.prepare import prepare_defense
from benchmark.store import CellStore, atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    counters: list[StageCounter]
    leaderboard: pd.DataFrame
    markdown: str
    notes: list[str] = field(default_factory=list)


def expand(names: list[str], registry, keep_first: str = "none") -> list[str]:
    """``all`` -> every registered name; the reference entry ``none`` is always run, first."""
    out: list[str] = []
    for name in names:
        for item in (registry.names() if name == "all" else [name]):
            registry.entry(item)  # unknown names fail here, with a did-you-mean
            if item not in out:
                out.append(item)
    return [keep_first] + [n for n in out if n != keep_first]


def resolve(config: RunConfig) -> tuple[RunConfig, Any]:
    """Load plugins, fill defaults from the model, expand ``all``; returns (resolved config, model spec)."""
    from benchmark.models import get_model_spec
    from benchmark.models.base import DTYPES, resolve_device, resolve_dtype

    config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler))
    config.validate()
    for plugin in config.plugins:
        load_plugin(plugin)
    spec = get_model_spec(config.model)
    config.tasks = config.tasks or list(spec.default_tasks)
    if not config.tasks:
        raise ConfigError(f"model '{config.model}' has no default task: pass --task")
    for task in config.tasks:
        TASKS.entry(task)
    asked_all_defenses = "all" in config.defenses
    config.defenses = expand(config.defenses, DEFENSES)
    if asked_all_defenses:  # "all" leaves out defenses that need user-supplied data (a checkpoint path)
        config.defenses = [d for d in config.defenses if d in config.defense_options
                           or getattr(DEFENSES.get(d), "runs_without_options", True)]
    asked_all = "all" in config.attacks
    config.attacks = expand(config.attacks, ATTACKS)
    if asked_all:  # "all" means every attack that can run without user-supplied data
        config.attacks = [a for a in config.attacks if getattr(ATTACKS.get(a), "runs_without_options", True)]
    for defense in config.defenses:
        cls = DEFENSES.get(defense)
        if not cls(**config.defense_options.get(defense, {})).supports(spec.name):
            raise ConfigError(f"defense '{defense}' does not support model '{spec.name}'")
    sampler = config.sampler
    defaults = spec.defaults
    sampler.num_inference_steps = sampler.num_inference_steps or defaults.num_inference_steps
    sampler.guidance_scale = sampler.guidance_scale if sampler.guidance_scale is not None else defaults.guidance_scale
    sampler.height = sampler.height or defaults.height
    sampler.width = sampler.width or defaults.width
    device = resolve_device(config.device)
    config.device = device.type if device.index is None else str(device)
    config.dtype = {dtype: name for name, dtype in DTYPES.items()}[resolve_dtype(config.dtype, device)]
    return config, spec


def run_id(config: RunConfig) -> str:
    """Named by content: the same resolved config gives the same run directory, so rerunning a command
    finds its cells. ``out``, ``name``, the batch size and plugin paths do not enter it (plugin
    contents do)."""
    identity = config.to_dict()
    for key in ("out", "name", "plugins"):
        identity.pop(key)
    identity["sampler"].pop("batch_size")  # changes speed, never an image
    identity["plugin_contents"] = sorted(file_hash(p) for p in config.plugins)
    for key in ("prompts", "benign_prompts"):
        if identity[key]:
            identity[key] = file_hash(identity[key])
    prefix = config.name or config.model.rstrip("/").split("/")[-1]
    return f"{prefix}-{stable_hash(identity, 10)}"


def load_prompts(set_name: str, file: str | None, column: str | None, limit: int | None, data_dir: str | None):
    from prompts.loaders import load_prompt_file

    if file:
        return Path(file).name, load_prompt_file(file, column=column, limit=limit)
    spec = PROMPT_SETS.get(set_name)
    return set_name, spec.load(Path(data_dir) if data_dir else None, limit=limit)


def build_judge(spec, overrides: dict[str, dict[str, Any]], device: str):
    options = {**spec.options, **overrides.get(spec.name, {})}
    return JUDGES.get(spec.name)(device=device, **options)


def is_truncated(tokenizer, text: str | None) -> bool:
    if not text:
        return False
    return len(tokenizer(text, truncation=False).input_ids) > tokenizer.model_max_length


def execute(config: RunConfig) -> RunSummary:
    from attacks.base import AttackContext
    from benchmark import provenance

    config, spec = resolve(config)
    store = CellStore(config.out)
    run_dir = store.root / run_id(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    log.info("run directory %s", run_dir)

    import torch

    from benchmark.models.base import DTYPES

    model = spec.load(torch.device(config.device), DTYPES[config.dtype], config.model_revision)
    atomic_write_json(run_dir / "provenance.json", provenance.collect(model.device, model.provenance))
    counters = {s: StageCounter(s) for s in ("prepare", "attack", "generate", "judge")}
    sampler = config.sampler
    sampler_dict = {"num_inference_steps": sampler.num_inference_steps, "guidance_scale": sampler.guidance_scale,
                    "height": sampler.height, "width": sampler.width,
                    # the base seed: attacks that check images draw them from the run's evaluation seeds
                    "seed": sampler.seed}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    prepare_seconds: dict[str, float] = {}

    for task_name in config.tasks:
        task = TASKS.get(task_name)
        attack_set, attack_prompts = load_prompts(task.attack_prompts, config.prompts, config.prompt_column,
                                                  config.max_prompts, config.data_dir)
        benign_set, benign_prompts = load_prompts(task.benign_prompts, config.benign_prompts,
                                                  config.prompt_column, config.max_benign, config.data_dir)
        # Judges first: a missing judge model should fail before an hour of generation, not after.
        concept_judge = build_judge(task.judge, config.judge_options, config.device)
        utility_judge = build_judge(task.utility_judge, config.judge_options, config.device)
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
                    results = run_attack(attack, attack_prompts, ctx, store, model.key, defense_key,
                                         counters["attack"])
                    for prompt in attack_prompts:
                        cells += _cells_for(prompt, results[prompt.id], "attack", attack_set, attack_name, task,
                                            defense_name, defense_key, config, model)
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

    records = pd.DataFrame(rows, columns=COLUMNS)
    buffer = records.to_parquet(index=False)
    atomic_write_bytes(run_dir / "records.parquet", buffer)
    from reports.leaderboard import compute_leaderboard, judge_descriptions, render_markdown

    board = compute_leaderboard(records)
    atomic_write_text(run_dir / "leaderboard.csv", board.to_csv(index=False))
    markdown = render_markdown(board, judge_descriptions(records))
    if notes:
        markdown += "\n" + "\n".join(f"Note: {n}" for n in notes) + "\n"
    atomic_write_text(run_dir / "leaderboard.md", markdown)
    return RunSummary(run_dir, list(counters.values()), board, markdown, notes)


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


def _record(config, run_name, model, cell: GenCell, attack_record, gen, score, identity, role,
            prepare_seconds: float | None = None) -> dict:
    blocked = bool(gen["blocked"]) if gen else False
    flagged = None
    if role == "concept":
        flagged = bool(score["flagged"]) and not blocked if score else False
    return {
        "run_id": run_name, "model": model.name, "model_key": model.key, "task": cell.task,
        "defense": cell.defense, "defense_key": cell.defense_key, "attack": cell.attack, "role": cell.role,
        "prompt_set": cell.prompt_set, "prompt_id": cell.prompt_id, "source_prompt": cell.source_prompt,
        "adversarial_prompt": cell.adversarial_prompt, "truncated": cell.truncated,
        "attack_status": cell.attack_status, "attack_message": attack_record.get("message", ""),
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
    }
