"""sd-mini's own prompt sets: generated, not read from a file.

The embedded sd-mini world (``benchmark/mini_world``) defines its three tasks (mini-object, mini-style,
mini-unsafe) with a small caption grammar; each task's attack prompts (naming the concept in canonical,
synonym or implicit form), benign prompts (not naming it) and safe prompts (the attack prompts with the
concept removed or replaced) are generated deterministically from fixed seeds. A prompt-set file of format
``sd-mini`` names the task and which of the three lists it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.api.errors import ConfigError
from benchmark.api.prompt import Prompt
from prompts.formats._build import check_limit

WHICH = ("attack", "benign", "safe")


def load_sd_mini(path: str | Path | None = None, *, task: str, which: str, limit: int | None = None) -> list[Prompt]:
    """The ``which`` prompts (attack, benign or safe) of the sd-mini task ``task``; ``path`` is unused (the
    prompts are generated). ``meta`` holds the prompt's surface form, its scene labels and ``concepts``:
    the detector labels the prompt asks for (what the retention metric checks survive an erasure)."""
    check_limit(limit)
    from benchmark.mini_world import TASKS

    if task not in TASKS:
        raise ConfigError(f"unknown sd-mini task {task!r}; choose one of {', '.join(sorted(TASKS))}")
    if which not in WHICH:
        raise ConfigError(f"unknown sd-mini prompt list {which!r}; choose one of {', '.join(WHICH)}")
    items = TASKS[task].prompts(which)
    prompts = [Prompt(id=p.prompt_id, text=p.text, seed=p.seed,
                      meta={"form": p.form, **p.labels, "concepts": _concepts(p.labels)})
               for p in items]
    return prompts if limit is None else prompts[:limit]


def _concepts(labels: dict[str, Any]) -> list[str]:
    """The detector labels a prompt asks for (what the retention metric checks survive an erasure)."""
    concepts = [f"object:{labels['object']}"] if labels.get("object") else []
    if labels.get("style") and labels["style"] != "plain":
        concepts.append(f"style:{labels['style']}")
    return concepts
