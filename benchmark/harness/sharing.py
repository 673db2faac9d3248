"""The stages' cell loops for processes that share one store: claimed compute, and read-only collect.

A run reaches its cells only through one object, :class:`ClaimedCells` (a process that computes: alone, or
a worker of a multi-process run) or :class:`CollectedCells` (the merging process): the same calls
(``prepare``, ``attack``, ``generate``, ``judge``), so the runner has one way through a run whichever
process it is, and the claims and the bookkeeping of missing cells live here, not in the runner.

Compute (:func:`claimed_attack`, :func:`claimed_generate`, :func:`claimed_judge`): each stage call is
wrapped in per-cell claims (:class:`benchmark.store.CellClaims`). A process computes only the cells it
claimed; the cells another process holds are waited for, then read. Alone on a store, a process claims
every missing cell in one round, so the stage sees exactly the call (and batches) it saw before, and its
counters read the same: ``computed`` counts what this process computed, ``cached`` everything else.

Collect (:func:`read_attack`, :func:`missing_generations`, :func:`read_scores`): what a merging process
uses. It computes nothing; it reads every cell and reports those not in the store.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmark.api.attack import Attack, AttackContext
from benchmark.api.prompt import Prompt
from benchmark.api.task import Task
from benchmark.harness.config import RunConfig
from benchmark.harness.stages import STAGES, StageCounter
from benchmark.harness.stages.attack import AttackOutcome, AttackResult, attack_key, error_record, run_attack
from benchmark.harness.stages.generate import GenCell, SharedGenerations, generate_cells
from benchmark.harness.stages.judge import judge_cells, judge_key
from benchmark.harness.stages.prepare import DONE_FILE, prepare_defense, prepare_keys, prepared
from benchmark.harness.stages.usage import StageUsage
from benchmark.store import CellClaims, CellStore, atomic_write_json

# Beside an attack cell whose latest attempt raised: a collecting process reports the cell failed (as the
# process that ran it did) instead of missing. A later successful attempt removes it.
FAILED_EXT = "failed.json"


def _exists(store: CellStore, stage: str):
    return lambda key: store.exists(stage, key, "json")


def claimed_attack(attack: Attack, prompts: list[Prompt], ctx: AttackContext, *, store: CellStore, model_key: str,
                   defense_key: str, counter: StageCounter) -> AttackOutcome:
    """:func:`run_attack` over the prompts this process claims (attacks are per prompt and independent of
    their batch: the attack contract checks it). A failure fails the whole cell, as in one process."""
    keys = {p.id: attack_key(attack, p, model_key, defense_key, ctx.sampler) for p in prompts}
    by_key = {keys[p.id]: p for p in prompts}
    mine = StageCounter(counter.stage)
    with closing(CellClaims(store, "attack", _exists(store, "attack")).rounds(by_key)) as rounds:
        for claimed in rounds:
            outcome = run_attack(attack, [by_key[k] for k in claimed], ctx, store, model_key, defense_key, mine)
            if outcome.error is not None:
                for key in claimed:
                    atomic_write_json(store.path("attack", key, FAILED_EXT),
                                      {"error": outcome.error, "traceback": outcome.traceback})
                counter.computed += mine.computed
                counter.cached += mine.cached
                counter.backoffs.extend(mine.backoffs)
                outcome.records = {p.id: error_record(p.id, outcome.error) for p in prompts}
                return outcome
            for key in claimed:
                store.path("attack", key, FAILED_EXT).unlink(missing_ok=True)  # the earlier failure is void
    outcome = run_attack(attack, prompts, ctx, store, model_key, defense_key, StageCounter(counter.stage))
    counter.computed += mine.computed
    counter.backoffs.extend(mine.backoffs)
    counter.cached += len(prompts) - mine.computed
    return outcome


def claimed_generate(defended, cells: list[GenCell], store: CellStore, *, batch_size: int, counter: StageCounter,
                     desc: str) -> None:
    """:func:`generate_cells` over the images this process claims."""
    drawing = [c for c in cells if c.generates]
    mine = StageCounter(counter.stage)
    with closing(CellClaims(store, "generate", _exists(store, "generate")).rounds(c.key for c in drawing)) as rounds:
        for claimed in rounds:
            keys = set(claimed)
            generate_cells(defended, [c for c in drawing if c.key in keys], store, batch_size=batch_size, counter=mine,
                           desc=desc)
    counter.computed += mine.computed
    counter.backoffs.extend(mine.backoffs)
    counter.cached += len(drawing) - mine.computed


def claimed_judge(judge, items: list[tuple[str, str]], store: CellStore, *, batch_size: int,
                  counter: StageCounter) -> dict[tuple[str, str], dict]:
    """:func:`judge_cells` over the scores this process claims; returns every item's score."""
    identity = judge.identity().as_dict()
    prompt_aware = judge.role == "utility"
    key_of = {item: judge_key(item[0], identity, item[1] if prompt_aware else None) for item in items}
    stored = {k for k in set(key_of.values()) if store.exists("judge", k, "json")}
    missing = set(key_of.values()) - stored
    mine = StageCounter(counter.stage)
    with closing(CellClaims(store, "judge", _exists(store, "judge")).rounds(key_of.values())) as rounds:
        for claimed in rounds:
            keys = set(claimed)
            judge_cells(judge, [item for item in items if key_of[item] in keys], store, batch_size, mine)
    results = judge_cells(judge, items, store, batch_size, StageCounter(counter.stage))
    # Counted as one process counts them: each stored item is cached; each missing key is computed once
    # (here; or by another process, and then it is cached here).
    counter.computed += mine.computed
    counter.cached += sum(key_of[item] in stored for item in items) + len(missing) - mine.computed
    return results


def read_attack(attack: Attack, prompts: list[Prompt], sampler: dict, *, store: CellStore, model_key: str,
                defense_key: str, counter: StageCounter) -> tuple[AttackOutcome, list[Prompt]]:
    """Collect: a cell's stored records, and its prompts with neither a record nor a recorded failure
    (their worker has not finished them). A prompt whose latest attempt failed fails the whole cell, as
    in a one-process run."""
    outcome = AttackOutcome(records={})
    missing = []
    for prompt in prompts:
        key = attack_key(attack, prompt, model_key, defense_key, sampler)
        if store.exists("attack", key, "json"):
            outcome.records[prompt.id] = AttackResult.from_json(store.read_json("attack", key))
            counter.cached += 1
        elif store.exists("attack", key, FAILED_EXT):
            if outcome.error is None:
                failed = store.read_json_path(store.path("attack", key, FAILED_EXT))
                outcome.error, outcome.traceback = failed["error"], failed.get("traceback", "")
        else:
            missing.append(prompt)
    if outcome.error is not None:
        outcome.records = {p.id: error_record(p.id, outcome.error) for p in prompts}
    return outcome, missing


def missing_generations(cells: list[GenCell], store: CellStore, counter: StageCounter) -> list[GenCell]:
    """Collect: the cells whose image is not in the store."""
    missing = []
    for cell in cells:
        if cell.generates:
            if store.exists("generate", cell.key, "json"):
                counter.cached += 1
            else:
                missing.append(cell)
    return missing


def read_scores(judge, items: list[tuple[str, str]], store: CellStore,
                counter: StageCounter) -> tuple[dict[tuple[str, str], dict], list[tuple[str, str]]]:
    """Collect: the stored scores of ``items``, and the items without one."""
    identity = judge.identity().as_dict()
    prompt_aware = judge.role == "utility"
    results: dict[tuple[str, str], dict] = {}
    missing = []
    for gen_key, prompt in items:
        key = judge_key(gen_key, identity, prompt if prompt_aware else None)
        if store.exists("judge", key, "json"):
            results[(gen_key, prompt)] = store.read_json("judge", key)
            counter.cached += 1
        else:
            missing.append((gen_key, prompt))
    return results, missing


@dataclass
class MissingCell:
    """A cell a collecting process found missing from the store."""

    stage: str
    what: str
    text: str | None  # its prompt's text (which worker owns it); None: every worker needs it (prepare)


@dataclass
class Prepared:
    """A defense ready for one task's later stages: its key, and its defended sampler where this process draws."""

    task: Task
    name: str
    defense: Any
    key: str
    seconds: float  # what preparing its artifact took (the records' prepare_seconds)
    defended: Any = None  # None in a collecting process: it draws nothing

    def close(self) -> None:
        if self.defended is not None:
            self.defended.close()


def attack_sampler(config: RunConfig) -> dict[str, Any]:
    """The sampler settings an attack sees (and the key of an attack that reads the defense holds)."""
    sampler = config.sampler
    return {"num_inference_steps": sampler.num_inference_steps, "guidance_scale": sampler.guidance_scale,
            "height": sampler.height, "width": sampler.width,
            # the base seed: attacks that check images draw them from the run's evaluation seeds
            "seed": sampler.seed}


@dataclass
class StoreCells:
    """A run's cells as this process reaches them: the store, the model they are keyed by, the stages' counters,
    and (collecting) the cells found missing."""

    store: CellStore
    model: Any
    config: RunConfig
    usage: StageUsage
    counters: dict[str, StageCounter] = field(default_factory=lambda: {s: StageCounter(s) for s in STAGES})
    missing: list[MissingCell] = field(default_factory=list)
    collected: ClassVar[bool] = False  # True: this process computed nothing, it read the workers' cells


class ClaimedCells(StoreCells):
    """A process that computes: each stage over the cells it claims; cells other processes hold are waited
    for and read. Each stage's time and memory are measured (:class:`StageUsage`)."""

    def prepare(self, task: Task, name: str, defense: Any) -> Prepared:
        with self.usage.measure(self.counters["prepare"]):
            key, artifact_dir, meta = prepare_defense(defense, self.model, task, self.store, self.counters["prepare"])
            defended = defense.apply(self.model, task, artifact_dir)
        return Prepared(task, name, defense, key, float(meta.get("prepare_seconds", 0.0)), defended)

    def attack(self, attack: Attack, prompts: list[Prompt], prepared: Prepared, judge: Any) -> AttackOutcome:
        config = self.config
        shared = SharedGenerations(prepared.defended, self.store, self.model.key, prepared.key, config.device,
                                   config.dtype)
        ctx = AttackContext(model=self.model, defended=prepared.defended, task=prepared.task, judge=judge,
                            sampler=attack_sampler(config), data_dir=config.data_dir, generations=shared)
        with self.usage.measure(self.counters["attack"]):
            outcome = claimed_attack(attack, prompts, ctx, store=self.store, model_key=self.model.key,
                                     defense_key=prepared.key, counter=self.counters["attack"])
        # Images the attack already drew (and judged) are in the store: computed once.
        self.counters["generate"].computed += shared.computed
        return outcome

    def generate(self, prepared: Prepared, cells: list[GenCell]) -> None:
        with self.usage.measure(self.counters["generate"]):
            claimed_generate(prepared.defended, cells, self.store, batch_size=self.config.sampler.batch_size,
                             counter=self.counters["generate"], desc=f"generate {prepared.task.name}/{prepared.name}")

    def judge(self, judge: Any, items: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        with self.usage.measure(self.counters["judge"]):
            return claimed_judge(judge, items, self.store, batch_size=self.config.sampler.batch_size,
                                 counter=self.counters["judge"])


class CollectedCells(StoreCells):
    """The merging process: computes nothing, reads every cell and notes each one not in the store
    (:attr:`missing`); what lies behind a missing cell (the images of a missing attack) is not looked for."""

    collected: ClassVar[bool] = True

    def prepare(self, task: Task, name: str, defense: Any) -> Prepared | None:
        key, artifact_key = prepare_keys(defense, self.model.key, task.name)
        if not prepared(self.store, artifact_key):
            self.missing.append(MissingCell("prepare", f"{task.name}/{name}", None))
            return None
        self.counters["prepare"].cached += 1
        meta = self.store.read_json_path(self.store.dir("prepare", artifact_key) / DONE_FILE)
        return Prepared(task, name, defense, key, float(meta.get("prepare_seconds", 0.0)))

    def attack(self, attack: Attack, prompts: list[Prompt], prepared: Prepared, judge: Any) -> AttackOutcome:
        outcome, absent = read_attack(attack, prompts, attack_sampler(self.config), store=self.store,
                                      model_key=self.model.key, defense_key=prepared.key,
                                      counter=self.counters["attack"])
        self.missing += [MissingCell("attack", f"{prepared.task.name}/{prepared.name}/{attack.name}/{p.id}", p.text)
                         for p in absent]
        return outcome

    def generate(self, prepared: Prepared, cells: list[GenCell]) -> None:
        self.missing += [MissingCell("generate", f"{c.task}/{c.defense}/{c.attack}/{c.prompt_id}", c.source_prompt)
                         for c in missing_generations(cells, self.store, self.counters["generate"])]

    def judge(self, judge: Any, items: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        scores, absent = read_scores(judge, items, self.store, self.counters["judge"])
        texts = dict(items)
        name = judge.identity().as_dict()["judge"]
        self.missing += [MissingCell("judge", f"{name} of image {key}", texts[key]) for key, _ in absent]
        return scores
