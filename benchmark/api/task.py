"""Tasks: the concept a defense must erase, how to attack it, how to judge it, and what must survive.

A task is data: one YAML file in ``benchmark/tasks/`` named after it (or a :class:`Task` registered by a
plugin with ``TASKS.add``). Keys::

    description: one line for `benchmark list tasks`
    concept_words: [nudity]            # what a defender writes (ESD, UCE, SLD, negative prompt)
    attack_prompts: unlearndiff-nudity # a registered prompt set
    benign_prompts: coco-10k           # a registered prompt set
    judge: {name: nudenet, options: {preset: unlearndiff}}    # flags the erased concept
    utility_judge: {name: clip-score, options: {model: openai/clip-vit-large-patch14}}
    guide_concept: a person wearing clothes                   # optional
    retention_concepts: []                                    # optional
    models: ["*"]                                             # optional: models the task is meant for
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.registry import read_data_file


@dataclass(frozen=True)
class JudgeSpec:
    """A judge by registry name with its options (``preset``, ``threshold``, ``model`` ...)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Task:
    """A concept-erasure task.

    ``concept_words`` are the words a defender would write (ESD's prompt, UCE's edited concepts, SLD's
    safety concept, the negative prompt); ``guide_concept`` is what the concept is mapped to where a
    defense needs a target (UCE, SafeRedir's safe counterpart). ``retention_concepts`` are concepts that
    must survive the erasure (for the retention metric).
    """

    name: str
    description: str
    concept_words: tuple[str, ...]
    attack_prompts: str  # a registered prompt set
    benign_prompts: str  # a registered prompt set
    judge: JudgeSpec  # the concept judge: flags the erased concept
    utility_judge: JudgeSpec  # measures benign quality (CLIP score)
    guide_concept: str = ""
    retention_concepts: tuple[str, ...] = ()
    models: tuple[str, ...] = ("*",)  # model names this task is meant for ("*": any)


def _judge_spec(value: Any, key: str, path: Path) -> JudgeSpec:
    if isinstance(value, str):
        return JudgeSpec(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str) and set(value) <= {"name", "options"}:
        options = value.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: '{key}.options' must be a mapping")
        return JudgeSpec(value["name"], dict(options))
    raise ConfigError(f"{path}: '{key}' must be a judge name or {{name: ..., options: {{...}}}}, got {value!r}")


def load_task_file(path: Path) -> Task:
    """The :class:`Task` a data file describes; its name is the file's stem."""
    data = read_data_file(path)
    known = {f.name for f in dataclasses.fields(Task)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; a task file takes {sorted(known)}")
    missing = sorted({"description", "attack_prompts", "benign_prompts", "judge", "utility_judge"} - set(data))
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")
    words = data.get("concept_words") or []
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise ConfigError(f"{path}: 'concept_words' must be a list of strings")
    return Task(
        name=path.stem,
        description=str(data["description"]).strip(),
        concept_words=tuple(words),
        attack_prompts=str(data["attack_prompts"]),
        benign_prompts=str(data["benign_prompts"]),
        judge=_judge_spec(data["judge"], "judge", path),
        utility_judge=_judge_spec(data["utility_judge"], "utility_judge", path),
        guide_concept=str(data.get("guide_concept") or ""),
        retention_concepts=tuple(data.get("retention_concepts") or ()),
        models=tuple(data.get("models") or ("*",)),
    )
