"""Stage 1, prepare: build or load each defense's artifact, once per (model, task, defense config)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import closing
from pathlib import Path

from benchmark.api.defense import PrepareContext
from benchmark.api.memory import recording_backoffs
from benchmark.harness.stages import StageCounter
from benchmark.hashing import stable_hash
from benchmark.store import CellClaims, CellStore, atomic_write_json

log = logging.getLogger(__name__)

DONE_FILE = "prepared.json"


def prepare_key(model_key: str, task_name: str, defense_config: dict) -> str:
    return stable_hash({"stage": "prepare", "model": model_key, "task": task_name, "defense": defense_config})


def prepare_keys(defense, model_key: str, task_name: str) -> tuple[str, str]:
    """(the defense's key for later stages, its artifact's key)."""
    artifact_key = prepare_key(model_key, task_name, defense.prepare_config())
    # The defense's identity for later stages covers every option (inference-only options included),
    # while its artifact is shared by configs that differ only in options the artifact does not read.
    key = artifact_key if defense.prepare_config() == defense.config() else stable_hash(
        {"artifact": artifact_key, "defense": defense.config()})
    return key, artifact_key


def prepared(store: CellStore, artifact_key: str) -> bool:
    return (store.dir("prepare", artifact_key) / DONE_FILE).is_file()


def prepare_defense(defense, model, task, store: CellStore, counter: StageCounter) -> tuple[str, Path, dict]:
    """Returns (key, artifact_dir, metadata). The directory is complete iff ``prepared.json`` exists:
    it is written last, so a run killed while training a defense retrains it rather than trusting half
    an artifact.

    Processes sharing the store prepare an artifact once: the first claims it (a file lock beside the
    artifact's folder), the others wait for it and reuse it. A claimant that dies loses its lock with its
    process, and the next waiter prepares the artifact itself."""
    key, artifact_key = prepare_keys(defense, model.key, task.name)
    artifact_dir = store.dir("prepare", artifact_key)
    done = artifact_dir / DONE_FILE
    if done.is_file():
        counter.cached += 1
        return key, artifact_dir, {**json.loads(done.read_text()), "defense": defense.config()}
    claims = CellClaims(store, "prepare", lambda k: prepared(store, k),
                        waiting=f"another process is preparing defense {defense.name} for task {task.name}")
    meta: dict | None = None
    with closing(claims.rounds([artifact_key])) as rounds:
        for _ in rounds:  # at most once: ours to prepare (or left by a process that died)
            if artifact_dir.exists():  # a dead claimant's half-written artifact: start clean
                shutil.rmtree(artifact_dir)
            artifact_dir.mkdir(parents=True, exist_ok=True)
            log.info("preparing defense %s for task %s", defense.name, task.name)
            start = time.perf_counter()
            # A training batch halved on out-of-memory is recorded like the other stages' (run notes, provenance).
            with recording_backoffs() as backoffs:
                try:
                    meta = defense.prepare(PrepareContext(model=model, task=task, artifact_dir=artifact_dir)) or {}
                finally:
                    counter.backoffs.extend(backoffs)
            seconds = time.perf_counter() - start
            meta = {"defense": defense.config(), "task": task.name, "model_key": model.key,
                    "prepare_seconds": seconds, **meta}
            atomic_write_json(done, meta)
            counter.computed += 1
    if meta is None:  # another process prepared it while we waited on its claim
        counter.cached += 1
        meta = {**json.loads(done.read_text()), "defense": defense.config()}
    return key, artifact_dir, meta
