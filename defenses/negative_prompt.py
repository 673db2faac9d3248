"""Negative prompt: the concept words replace the empty unconditional prompt of classifier-free
guidance, so guidance pushes away from them. Keyword-level by construction: a paraphrase that avoids
the words is expected to get through, which is what the paraphrase attack measures.

A task without concept words needs the option ``text`` (checked before any work): an empty negative prompt
would be the undefended model under another name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from benchmark.api.defense import DefendedPipeline
from benchmark.api.registry import DEFENSES
from defenses._concept_defense import ConceptTextDefense


@dataclass
class NegativePromptOptions:
    text: Annotated[str | None, Field(
        description='the negative prompt; default: the task\'s concept words joined by ", "')] = None


class NegativePromptPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, text: str):
        super().__init__(model, defense, task)
        self.text = text

    def call_kwargs(self, batch_size: int) -> dict[str, Any]:
        return {"negative_prompt": [self.text] * batch_size}

    def unconditional_embeds(self, batch_size: int):
        if getattr(self, "_negative_cache", None) is None:
            self._negative_cache = self.encode_prompts([self.text])
        return self._negative_cache.expand(batch_size, -1, -1)


@DEFENSES.register("negative-prompt")
class NegativePrompt(ConceptTextDefense):
    """Negative prompt on the task's concept words (keyword-level, inference-time)."""

    Options = NegativePromptOptions
    concept_option = "text"

    def apply(self, model, task, artifact_dir: Path) -> DefendedPipeline:
        return NegativePromptPipeline(model, self, task, self.concept_text(task))
