"""The attack interface.

An attack turns a task's prompts into adversarial prompts (text, or prompt embeddings for
embedding-space attacks) and reports what each cost. Its ``threat_model`` says what it may touch:

* ``prompt-set``: nothing; it replays fixed prompts. Its outputs do not depend on the model.
* ``text-encoder``: the base model's text encoder only (Ring-A-Bell, MMA-Diffusion): a transfer attack.
* ``white-box``: gradients through the *defended* sampler (UnlearnDiff, P4D). Against an inference-time
  defense it must go through :class:`defenses.base.DefendedPipeline`, not the bare UNet: that is what
  makes it adaptive.

Every prompt gets an :class:`AttackOutput`, success or not: a prompt the attack could not process is
returned with ``status="failed"`` and counted in the report, never dropped.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from benchmark.component import Component

if TYPE_CHECKING:
    from benchmark.judges.base import Judge
    from benchmark.models.base import LoadedModel
    from benchmark.stages.generate import SharedGenerations
    from benchmark.tasks import Task
    from defenses.base import DefendedPipeline
    from prompts.base import Prompt


class ThreatModel(str, Enum):
    PROMPT_SET = "prompt-set"
    TEXT_ENCODER = "text-encoder"
    WHITE_BOX = "white-box"


@dataclass
class AttackOutput:
    prompt_id: str
    text: str | None  # the adversarial prompt (None if the attack produced embeddings only)
    status: str = "ok"  # "ok" | "failed"
    message: str = ""
    seconds: float = 0.0
    queries: int = 0  # forward/backward passes of the attacked model, as the attack counts them
    embeds: torch.Tensor | None = None  # (seq, dim) prompt embedding for embedding-space attacks
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackContext:
    """What an attack may use; what it should use is bounded by its threat model."""

    model: LoadedModel  # the undefended base model
    defended: DefendedPipeline  # the defended sampler (white-box attacks differentiate through it)
    task: Task
    judge: Judge  # the task's concept judge (for early stopping)
    sampler: dict[str, Any]  # num_inference_steps, guidance_scale, height, width
    data_dir: str | None = None
    # The run's generate-stage store for this defense (``None`` outside a run): images an attack draws
    # through the defended sampler are stored there and become the run's images (see ``generate``).
    generations: SharedGenerations | None = None

    def generate(self, texts: list[str], seeds: list[int], guidance_scale: float) -> tuple[list[Any], list[bool]]:
        """Images of ``texts`` through the defended sampler, each from its evaluation seed, at the run's
        sampler settings, and whether the defense blocked each. Inside a run they go through the generate
        stage's store: an image an attack checks is drawn once and is the image the run records."""
        s = self.sampler
        settings = {"guidance_scale": guidance_scale, "num_inference_steps": s["num_inference_steps"],
                    "height": s["height"], "width": s["width"]}
        if self.generations is not None:
            return self.generations.generate(texts, seeds, **settings)
        from benchmark.stages.generate import draw

        images, blocked, _, _ = draw(self.defended, seeds, prompts=texts, **settings)
        return images, blocked


# Models small enough for the CPU, on which attacks use their documented ``mini`` budgets.
SMALL_MODELS = ("sd-mini", "tiny-random")


def preset_budget(attack: str, preset: str, model_name: str | None, paper: dict[str, Any], mini: dict[str, Any],
                  options: Any) -> dict[str, Any]:
    """The budget of ``preset`` (``auto``: ``mini`` on :data:`SMALL_MODELS`, ``paper`` otherwise), with every
    budget option the user set (not None) on top."""
    if preset not in ("auto", "paper", "mini"):
        raise ValueError(f"{attack}: preset must be auto, paper or mini, got {preset!r}")
    if preset == "auto":
        preset = "mini" if model_name in SMALL_MODELS else "paper"
    budget = dict(mini if preset == "mini" else paper)
    for key in budget:
        value = getattr(options, key, None)
        if value is not None:
            budget[key] = value
    return budget


class Attack(Component):
    """Base class of attacks: set ``threat_model``, declare ``Options``, implement :meth:`run`."""

    threat_model: ClassVar[ThreatModel] = ThreatModel.PROMPT_SET
    # False for attacks that need user-supplied data (a prompt file); ``--attack all`` leaves them out.
    runs_without_options: ClassVar[bool] = True

    def budget(self) -> dict[str, Any]:
        """The attack's budget (iterations, queries ...) as reported next to its ASR."""
        return {}

    def allowed_against(self, defense: Any) -> bool:
        """Whether this attack applies to that defense (``--attack all`` uses it)."""
        if self.threat_model is ThreatModel.WHITE_BOX:
            return bool(getattr(defense, "differentiable", True))
        return True

    @abstractmethod
    def run(self, prompts: list[Prompt], ctx: AttackContext) -> list[AttackOutput]:
        """One output per prompt, in order."""
