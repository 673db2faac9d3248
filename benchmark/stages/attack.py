"""Stage 2, attack: adversarial prompts per (attack config, prompt, and whatever the attack may see).

The key of an attack cell includes the model only if the attack reads it (text-encoder, white-box) and
the defense only if it attacks the defended sampler (white-box), so a prompt-set attack is computed
once for all defenses and models.
"""

from __future__ import annotations

import logging

from benchmark.hashing import stable_hash
from benchmark.stages import StageCounter
from benchmark.store import CellStore

log = logging.getLogger(__name__)


def attack_key(attack, prompt, model_key: str, defense_key: str, sampler: dict) -> str:
    from attacks.base import ThreatModel

    scope: dict = {"stage": "attack", "attack": attack.config(),
                   "prompt": {"id": prompt.id, "text": prompt.text, "seed": prompt.seed}}
    if attack.threat_model is not ThreatModel.PROMPT_SET:
        scope["model"] = model_key
    if attack.threat_model is ThreatModel.WHITE_BOX:
        scope["defense"] = defense_key
        scope["sampler"] = sampler
    return stable_hash(scope)


def run_attack(attack, prompts, ctx, store: CellStore, model_key: str, defense_key: str,
               counter: StageCounter) -> dict[str, dict]:
    """Returns prompt id -> stored attack record (text, status, cost, optional embeds path)."""
    from attacks.base import AttackOutput
    from benchmark.store import atomic_write_bytes

    keys = {p.id: attack_key(attack, p, model_key, defense_key, ctx.sampler) for p in prompts}
    results: dict[str, dict] = {}
    todo = []
    for prompt in prompts:
        if store.exists("attack", keys[prompt.id], "json"):
            results[prompt.id] = store.read_json("attack", keys[prompt.id])
            counter.cached += 1
        else:
            todo.append(prompt)
    if todo:
        log.info("attack %s on %d prompts", attack.name, len(todo))
        try:
            outputs = attack.run(todo, ctx)
        except Exception as error:  # one failing attack must not lose the run: count every prompt
            log.exception("attack %s failed", attack.name)
            outputs = [AttackOutput(p.id, None, status="failed", message=f"{type(error).__name__}: {error}")
                       for p in todo]
            # Failures from a crash are not cached: a rerun retries them.
            for output in outputs:
                results[output.prompt_id] = _record(output, None)
            return results
        if len(outputs) != len(todo) or [o.prompt_id for o in outputs] != [p.id for p in todo]:
            raise RuntimeError(f"attack {attack.name} must return one output per prompt, in order")
        for output in outputs:
            key = keys[output.prompt_id]
            embeds_path = None
            if output.embeds is not None:
                from safetensors.torch import save

                data = save({"prompt_embeds": output.embeds.detach().cpu().contiguous()})
                atomic_write_bytes(store.path("attack", key, "safetensors"), data)
                embeds_path = store.relpath("attack", key, "safetensors")
            record = _record(output, embeds_path)
            store.write_json("attack", key, record)
            results[output.prompt_id] = record
            counter.computed += 1
    return results


def _record(output, embeds_path: str | None) -> dict:
    return {
        "prompt_id": output.prompt_id,
        "text": output.text,
        "status": output.status,
        "message": output.message,
        "seconds": float(output.seconds),
        "queries": int(output.queries),
        "embeds_path": embeds_path,
        "meta": output.meta,
    }
