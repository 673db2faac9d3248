"""Stage 2, attack: adversarial prompts per (attack config, prompt, and whatever the attack may see).

The key of an attack cell includes the model only if the attack reads it (text-encoder, black-box,
white-box) and the defense only if it attacks the defended sampler (black-box, white-box), so a prompt-set
attack is computed once for all defenses and models.

Failures are never scores. A prompt the attack returns as ``failed`` with a reason it declares
(:attr:`Attack.failures`) is stored and counts as not broken. An exception, or an undeclared reason,
fails the whole cell (task x defense x attack): its prompts get status ``error``, nothing of it is cached
(a rerun retries it), and the run goes on with the other cells and ends non-zero. An attack's batch that runs
out of memory is halved inside the attack (:mod:`benchmark.api.memory`); each halving is recorded here, in the
stage's counter (run notes, provenance ``oom_backoffs``); one prompt that does not fit fails its cell only.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field, fields
from typing import Any

from benchmark.api.attack import Attack, AttackContext, AttackOutput, check_outputs
from benchmark.api.memory import recording_backoffs
from benchmark.api.prompt import Prompt
from benchmark.harness.stages import StageCounter
from benchmark.hashing import stable_hash
from benchmark.store import CellStore, atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class CellFailure:
    """A (task, defense, attack) cell whose attack raised: no score, the leaderboard shows it failed."""

    task: str
    defense: str
    attack: str
    error: str  # "ExceptionType: message"
    traceback: str = ""

    def line(self) -> str:
        return f"{self.task} / {self.defense} / {self.attack}: {self.error}"


@dataclass(frozen=True)
class AttackResult:
    """What an attack made of one prompt: the fields of its attack cell's JSON, typed."""

    status: str  # "ok", "failed" (a reason the attack declares) or "error" (the cell failed)
    prompt_id: str = ""
    text: str | None = None  # what is sampled (None: embeddings only, or nothing to sample)
    reason: str | None = None  # the declared failure reason of a "failed" prompt
    message: str | None = ""
    seconds: float = 0.0
    queries: int = 0
    embeds_path: str | None = None  # store-relative path of the attack's prompt embeddings
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackResult:
        """A stored cell's record (keys it lacks keep their defaults, as the records always read them)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def unchanged(cls, prompt: Prompt) -> AttackResult:
        """A prompt sampled as it is (the benign prompts: no attack ran on them)."""
        return cls(status="ok", prompt_id=prompt.id, text=prompt.text)

    def to_json(self) -> dict[str, Any]:
        """The cell's JSON, key for key (the store's files stay as they were)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def attack_message(self) -> str:
        """The message of the records, led by the declared failure reason when the prompt failed."""
        reason, message = self.reason or "", self.message or ""
        return f"{reason}: {message}" if reason and message else reason or message


@dataclass
class AttackOutcome:
    records: dict[str, AttackResult]  # prompt id -> its result
    error: str | None = None  # set when the cell failed
    traceback: str = ""
    computed: int = 0
    cached: int = 0
    failed_prompts: list[str] = field(default_factory=list)


def attack_key(attack: Attack, prompt: Prompt, model_key: str, defense_key: str, sampler: dict) -> str:
    scope: dict = {"stage": "attack", "attack": attack.config(),
                   "prompt": {"id": prompt.id, "text": prompt.text, "seed": prompt.seed}}
    if attack.threat_model.reads_model:
        scope["model"] = model_key
    if attack.threat_model.reads_defense:
        scope["defense"] = defense_key
        scope["sampler"] = sampler
    return stable_hash(scope)


def run_attack(attack: Attack, prompts: list[Prompt], ctx: AttackContext, store: CellStore, model_key: str,
               defense_key: str, counter: StageCounter) -> AttackOutcome:
    """Attack the prompts whose cells are missing; returns every prompt's record, or the cell's failure."""
    keys = {p.id: attack_key(attack, p, model_key, defense_key, ctx.sampler) for p in prompts}
    outcome = AttackOutcome(records={})
    todo = []
    for prompt in prompts:
        if store.exists("attack", keys[prompt.id], "json"):
            outcome.records[prompt.id] = AttackResult.from_json(store.read_json("attack", keys[prompt.id]))
            counter.cached += 1
        else:
            todo.append(prompt)
    if not todo:
        return outcome
    log.info("attack %s on %d prompts", attack.name, len(todo))
    # The attack's own out-of-memory halvings (its prompt chunks, its micro-batches) go to the stage's counter,
    # hence the run's notes and provenance, as the generate stage's do; a cell that fails keeps them too.
    backoffs: list[dict] = []
    try:
        with recording_backoffs() as backoffs:
            outputs = attack.run(todo, ctx)
        check_outputs(attack, todo, outputs)
    except Exception as error:  # noqa: BLE001 - one attack's failure must not lose the run; it is reported
        counter.backoffs.extend(backoffs)
        outcome.error = f"{type(error).__name__}: {error}"
        outcome.traceback = traceback.format_exc()
        log.error("attack %s failed: %s (the cell is marked failed; the run goes on)", attack.name, outcome.error)
        for prompt in prompts:  # the whole cell is failed, cached prompts included: no partial ASR
            outcome.records[prompt.id] = error_record(prompt.id, outcome.error)
        return outcome
    counter.backoffs.extend(backoffs)
    for output in outputs:
        key = keys[output.prompt_id]
        embeds_path = None
        if output.embeds is not None:
            from safetensors.torch import save  # deferred: only embedding attacks need it

            data = save({"prompt_embeds": output.embeds.detach().cpu().contiguous()})
            atomic_write_bytes(store.path("attack", key, "safetensors"), data)
            embeds_path = store.relpath("attack", key, "safetensors")
        result = _result(output, embeds_path)
        store.write_json("attack", key, result.to_json())
        outcome.records[output.prompt_id] = result
        counter.computed += 1
    return outcome


def error_record(prompt_id: str, error: str) -> AttackResult:
    """A prompt of a failed cell: no text, no image, no score."""
    return AttackResult(status="error", prompt_id=prompt_id, message=error)


def _result(output: AttackOutput, embeds_path: str | None) -> AttackResult:
    return AttackResult(status=output.status, prompt_id=output.prompt_id, text=output.text, reason=output.reason,
                        message=output.message, seconds=float(output.seconds), queries=int(output.queries),
                        embeds_path=embeds_path, meta=output.meta)
