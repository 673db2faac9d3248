"""A prompt blocklist, ``keyword-filter``: refuse every prompt that contains one of the concept's words.

Algorithm::

    if any blocked word occurs in the prompt as a whole word (case-insensitive): return nothing
    else: image <- the undefended sampler(prompt, seed)

The words default to the task's ``concept_words`` (what a defender writes: "nudity", "naked"; on sd-mini
the canonical words of the erased concept). This is the purely lexical baseline that deployed services
run in front of a model: it costs nothing, blocks no benign prompt that avoids the words, and is what a
paraphrase attack is built to walk around. A refused prompt counts as blocked (not broken) in ASR; its
image is a black frame that is never judged as the concept. Prompts given as embeddings (embedding-space
attacks) have no text to check and pass unfiltered.

Unlike the negative prompt, which steers the sampler away from the concept *as the text encoder reads
it* (and so also away from its synonyms), this defense sees only spelling.

``words`` takes a list or a comma-separated string (``--option defense:keyword-filter.words=nudity,naked``).
With no words and a task without concept words the defense would block nothing; that is refused before
any work (:meth:`KeywordFilter.check_inputs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from PIL import Image
from pydantic import BeforeValidator, Field

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind
from benchmark.api.errors import ConfigError
from benchmark.api.registry import DEFENSES
from defenses._options import comma_list


@dataclass
class KeywordFilterOptions:
    words: Annotated[list[str], BeforeValidator(comma_list), Field(description=(
        'blocked words (a list or "a, b"); default: the task\'s concept words'))] = field(default_factory=list)


def contains_word(text: str, words: list[str]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"(?<![\w-]){re.escape(w.lower())}(?![\w-])", lowered) for w in words if w)


class KeywordFilterPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, words: list[str]):
        super().__init__(model, defense, task)
        self.words = words
        self._blocked: list[bool] = []

    @torch.no_grad()
    def generate(self, prompts, latents, *, prompt_embeds=None, num_inference_steps, guidance_scale, height,
                 width) -> list[Image.Image]:
        n = latents.shape[0]
        self._blocked = [False] * n if prompts is None else [contains_word(p, self.words) for p in prompts]
        keep = [i for i in range(n) if not self._blocked[i]]
        images: list[Image.Image] = [Image.new("RGB", (width, height)) for _ in range(n)]
        if keep:  # refused prompts are never sampled: the filter runs before the model
            drawn = super().generate(None if prompts is None else [prompts[i] for i in keep], latents[keep],
                                     prompt_embeds=None if prompt_embeds is None else prompt_embeds[keep],
                                     num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                     height=height, width=width)
            for i, image in zip(keep, drawn, strict=True):
                images[i] = image
        return images

    def blocked(self, images) -> list[bool]:
        if len(images) != len(self._blocked):
            raise RuntimeError("keyword-filter: blocked() must follow the generate() call of the same images")
        return list(self._blocked)


@DEFENSES.register("keyword-filter")
class KeywordFilter(Defense):
    """Prompt blocklist: refuse prompts containing the concept's words (lexical; what paraphrases evade)."""

    kind = DefenseKind.FILTER
    Options = KeywordFilterOptions

    def blocked_words(self, task) -> list[str]:
        """The option's words, else the task's concept words; a :class:`ConfigError` when both are empty."""
        words = [w for w in self.options.words if w] or list(task.concept_words)
        if not words:
            raise ConfigError(f"defense 'keyword-filter' would block nothing: task '{task.name}' has no "
                              "concept_words; pass --option defense:keyword-filter.words=WORD,WORD")
        return words

    def check_inputs(self, ctx) -> None:
        self.blocked_words(ctx.task)

    def apply(self, model, task, artifact_dir: Path) -> KeywordFilterPipeline:
        return KeywordFilterPipeline(model, self, task, self.blocked_words(task))
