"""Stage 4, judge: one score per (image, judge identity, prompt for prompt-aware judges).

Judges read the stored PNG, never the in-memory image, so a resumed run scores exactly what an
uninterrupted run scores.
"""

from __future__ import annotations

import logging
import time

from PIL import Image
from tqdm.auto import tqdm

from benchmark.harness.stages import StageCounter
from benchmark.hashing import stable_hash
from benchmark.store import CellStore

log = logging.getLogger(__name__)


def judge_key(generate_key: str, identity: dict, prompt: str | None) -> str:
    return stable_hash({"stage": "judge", "image": generate_key, "judge": identity, "prompt": prompt})


def judge_cells(judge, items: list[tuple[str, str]], store: CellStore, batch_size: int,
                counter: StageCounter) -> dict[tuple[str, str], dict]:
    """``items`` are (generate key, prompt) pairs. Returns (generate key, prompt) -> score record."""
    identity = judge.identity().as_dict()
    prompt_aware = judge.role == "utility"
    results: dict[tuple[str, str], dict] = {}
    todo: dict[str, tuple[str, str]] = {}
    for gen_key, prompt in items:
        key = judge_key(gen_key, identity, prompt if prompt_aware else None)
        if store.exists("judge", key, "json"):
            results[(gen_key, prompt)] = store.read_json("judge", key)
            counter.cached += 1
        elif key not in todo:
            todo[key] = (gen_key, prompt)
    pending = list(todo.items())
    bar = tqdm(total=len(pending), desc=f"judge {identity['judge']}", unit="img", leave=False)
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        images = []
        for _, (gen_key, _prompt) in batch:
            meta = store.read_json("generate", gen_key)
            with Image.open(store.resolve(meta["image_path"])) as handle:
                images.append(handle.convert("RGB"))
        began = time.perf_counter()
        verdicts = judge.score(images, [prompt for _, (_, prompt) in batch])
        per_image = (time.perf_counter() - began) / len(batch)
        for (key, (gen_key, prompt)), verdict in zip(batch, verdicts, strict=True):
            record = {"score": float(verdict.score), "flagged": verdict.flagged, "details": verdict.details,
                      "judge_seconds": per_image, **identity}
            store.write_json("judge", key, record)
            results[(gen_key, prompt)] = record
            counter.computed += 1
        bar.update(len(batch))
    bar.close()
    # Duplicate (image, prompt) pairs resolve to the stored record.
    for gen_key, prompt in items:
        if (gen_key, prompt) not in results:
            key = judge_key(gen_key, identity, prompt if prompt_aware else None)
            results[(gen_key, prompt)] = store.read_json("judge", key)
    return results
