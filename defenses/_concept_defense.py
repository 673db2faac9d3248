"""The base of the inference-time defenses that act on one text naming the concept (SLD's safety concept,
the negative prompt): an option that, left unset, is the task's concept words joined by ", "."""

from __future__ import annotations

from typing import ClassVar

from benchmark.api.defense import Defense, DefenseKind
from defenses._options import concept_text


class ConceptTextDefense(Defense):
    """A defense whose option ``concept_option`` names the concept text. The text is checked before any
    work (a task without concept words needs the option) and resolved again when the defense is applied."""

    kind = DefenseKind.INFERENCE_TIME
    concept_option: ClassVar[str]

    def check_inputs(self, ctx) -> None:
        self.concept_text(ctx.task)

    def concept_text(self, task) -> str:
        """The option's value, else the task's concept words (:func:`defenses._options.concept_text`)."""
        return concept_text(self.name, self.concept_option, getattr(self.options, self.concept_option), task)
