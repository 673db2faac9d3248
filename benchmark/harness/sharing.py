"""The stages' cell loops for processes that share one store: claimed compute, and read-only collect.

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

from benchmark.api.attack import Attack, AttackContext
from benchmark.api.prompt import Prompt
from benchmark.harness.stages import StageCounter
from benchmark.harness.stages.attack import AttackOutcome, attack_key, error_record, run_attack
from benchmark.harness.stages.generate import GenCell, generate_cells
from benchmark.harness.stages.judge import judge_cells, judge_key
from benchmark.store import CellClaims, CellStore, atomic_write_json

# Beside an attack cell whose latest attempt raised: a collecting process reports the cell failed (as the
# process that ran it did) instead of missing. A later successful attempt removes it.
FAILED_EXT = "failed.json"


def _exists(store: CellStore, stage: str):
    return lambda key: store.exists(stage, key, "json")


def claimed_attack(attack: Attack, prompts: list[Prompt], ctx: AttackContext, store: CellStore, model_key: str,
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


def claimed_generate(defended, cells: list[GenCell], store: CellStore, batch_size: int, counter: StageCounter,
                     desc: str) -> None:
    """:func:`generate_cells` over the images this process claims."""
    drawing = [c for c in cells if c.generates]
    mine = StageCounter(counter.stage)
    with closing(CellClaims(store, "generate", _exists(store, "generate")).rounds(c.key for c in drawing)) as rounds:
        for claimed in rounds:
            keys = set(claimed)
            generate_cells(defended, [c for c in drawing if c.key in keys], store, batch_size, mine, desc)
    counter.computed += mine.computed
    counter.backoffs.extend(mine.backoffs)
    counter.cached += len(drawing) - mine.computed


def claimed_judge(judge, items: list[tuple[str, str]], store: CellStore, batch_size: int,
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


def read_attack(attack: Attack, prompts: list[Prompt], sampler: dict, store: CellStore, model_key: str,
                defense_key: str, counter: StageCounter) -> tuple[AttackOutcome, list[Prompt]]:
    """Collect: a cell's stored records, and its prompts with neither a record nor a recorded failure
    (their worker has not finished them). A prompt whose latest attempt failed fails the whole cell, as
    in a one-process run."""
    outcome = AttackOutcome(records={})
    missing = []
    for prompt in prompts:
        key = attack_key(attack, prompt, model_key, defense_key, sampler)
        if store.exists("attack", key, "json"):
            outcome.records[prompt.id] = store.read_json("attack", key)
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
