"""The attack interface.

An attack turns a task's prompts into adversarial prompts (text, or prompt embeddings for
embedding-space attacks) and reports what each cost. Its ``threat_model`` says what it may touch:

* ``prompt-set``: nothing; it replays fixed prompts. Its outputs do not depend on the model.
* ``text-encoder``: the base model's text encoder only (Ring-A-Bell, MMA-Diffusion): a transfer attack.
* ``black-box``: queries of the *defended* sampler's images, no gradients (a query attack: paraphrase
  search with a judge in the loop, genetic search on images).
* ``white-box``: gradients through the *defended* sampler (UnlearnDiff, P4D). Against an inference-time
  defense it must go through :class:`defenses.base.DefendedPipeline`, not the bare UNet: that is what
  makes it adaptive.

Every prompt gets an :class:`AttackOutput`, success or not. Failures are never scores:

* a prompt the attack could not process for a reason it *declares* in :attr:`Attack.failures` (no
  paraphrase kept the meaning, the prompt is too long) is returned with ``status="failed"`` and that
  ``reason``; it counts as not broken and is reported, never dropped;
* anything else (an exception, an undeclared reason) fails the whole cell (task x defense x attack): the
  run keeps every other cell, exits non-zero, and the leaderboard shows the cell as failed, not a number.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from benchmark.api.component import Component
from benchmark.api.errors import OptionError
from benchmark.api.presets import MINI_ON_SMALL_MODELS, Presets
from benchmark.api.sampling import draw

if TYPE_CHECKING:
    from benchmark.api.defense import DefendedPipeline
    from benchmark.api.judge import Judge
    from benchmark.api.model import LoadedModel
    from benchmark.api.prompt import Prompt
    from benchmark.api.task import Task


class ThreatModel(str, Enum):
    PROMPT_SET = "prompt-set"
    TEXT_ENCODER = "text-encoder"
    BLACK_BOX = "black-box"
    WHITE_BOX = "white-box"

    @property
    def reads_model(self) -> bool:
        """Whether the attack's output depends on the model (and so enters its cell key)."""
        return self is not ThreatModel.PROMPT_SET

    @property
    def reads_defense(self) -> bool:
        """Whether the attack's output depends on the defended sampler (its images or its gradients)."""
        return self in (ThreatModel.BLACK_BOX, ThreatModel.WHITE_BOX)


class Generations(Protocol):
    """The run's image store for one defense, as attacks see it (the generate stage implements it)."""

    def generate(self, texts: list[str], seeds: list[int], *, guidance_scale: float, num_inference_steps: int,
                 height: int, width: int) -> tuple[list[Any], list[bool]]: ...


@dataclass
class AttackOutput:
    prompt_id: str
    text: str | None  # the adversarial prompt (None if the attack produced embeddings only)
    status: str = "ok"  # "ok" | "failed" (a declared per-prompt failure; ``reason`` says which)
    message: str = ""
    reason: str = ""  # for status "failed": a key of the attack's ``failures``
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
    generations: Generations | None = None

    def generate(self, texts: list[str], seeds: list[int], guidance_scale: float) -> tuple[list[Any], list[bool]]:
        """Images of ``texts`` through the defended sampler, each from its evaluation seed, at the run's
        sampler settings, and whether the defense blocked each. Inside a run they go through the generate
        stage's store: an image an attack checks is drawn once and is the image the run records."""
        s = self.sampler
        settings = {"guidance_scale": guidance_scale, "num_inference_steps": s["num_inference_steps"],
                    "height": s["height"], "width": s["width"]}
        if self.generations is not None:
            return self.generations.generate(texts, seeds, **settings)
        images, blocked, _, _ = draw(self.defended, seeds, prompts=texts, **settings)
        return images, blocked


def preset_budget(attack: str, preset: str, model_name: str | None, paper: dict[str, Any], mini: dict[str, Any],
                  options: Any) -> dict[str, Any]:
    """The budget of ``preset`` (``auto``: ``mini`` on :data:`SMALL_MODELS`, ``paper`` otherwise), with every
    budget option the user set (not None) on top. Kept for plugins written before :class:`Presets`; a new
    attack declares ``presets`` and calls :meth:`Component.preset_values`."""
    presets = Presets({"paper": paper, "mini": mini}, by_model=MINI_ON_SMALL_MODELS)
    try:
        return presets.values(model_name, options, preset)
    except OptionError as error:
        raise OptionError(f"attack '{attack}': {error}") from None


class Attack(Component):
    """Base class of attacks: set ``threat_model``, declare ``Options``, implement :meth:`run`."""

    component_kind = "attack"
    threat_model: ClassVar[ThreatModel] = ThreatModel.PROMPT_SET
    # The per-prompt failures this attack can have, reason -> what it means. A prompt returned with
    # status "failed" and one of these reasons counts as not broken; any other failure fails the cell.
    failures: ClassVar[dict[str, str]] = {}
    # False for attacks that need user-supplied data (a prompt file); ``--attack all`` leaves them out.
    runs_without_options: ClassVar[bool] = True
    # False for attacks that ``--attack all`` leaves out to keep the default job's time (they are run by
    # name or by a suite that names them, e.g. ``--suite extended-attacks``); the run notes each one.
    in_all: ClassVar[bool] = True

    def query_budget(self, model_name: str | None) -> int | None:
        """The most model queries this configuration may spend on one prompt (None: not declared). The
        contract checks hold every output's ``queries`` to it."""
        return None

    def budget(self) -> dict[str, Any]:
        """The attack's budget (iterations, queries ...) as reported next to its ASR."""
        return {}

    def allowed_against(self, defense: Any) -> bool:
        """Whether this attack applies to that defense (``--attack all`` uses it)."""
        if self.threat_model is ThreatModel.WHITE_BOX:  # black-box attacks need no gradients
            return bool(getattr(defense, "differentiable", True))
        return True

    def not_applicable_reason(self, defense: Any) -> str:
        """Why :meth:`allowed_against` refuses ``defense`` (the run's note); override with your own rule."""
        return f"its threat model ({self.threat_model.value}) needs gradients, which this defense does not pass"

    @abstractmethod
    def run(self, prompts: list[Prompt], ctx: AttackContext) -> list[AttackOutput]:
        """One output per prompt, in order."""


def check_outputs(attack: Attack, prompts: list[Prompt], outputs: list[AttackOutput]) -> None:
    """The attack contract on one call: one output per prompt, in order; ``failed`` only with a declared
    reason; an ``ok`` output carries text or embeddings. Raises ``RuntimeError`` (a bug, not a user error)."""
    if len(outputs) != len(prompts) or [o.prompt_id for o in outputs] != [p.id for p in prompts]:
        raise RuntimeError(f"attack {attack.name} must return one output per prompt, in order "
                           f"(got {len(outputs)} for {len(prompts)} prompts)")
    for output in outputs:
        if output.status not in ("ok", "failed"):
            raise RuntimeError(f"attack {attack.name} returned status {output.status!r} for prompt "
                               f"{output.prompt_id}; use 'ok' or 'failed' with a declared reason")
        if output.status == "failed" and output.reason not in attack.failures:
            declared = ", ".join(sorted(attack.failures)) or "none"
            raise RuntimeError(f"attack {attack.name} failed prompt {output.prompt_id} with an undeclared reason "
                               f"{output.reason!r} ({output.message}); it declares: {declared}")
        if output.status == "ok" and output.text is None and output.embeds is None:
            raise RuntimeError(f"attack {attack.name} returned neither text nor embeddings for prompt "
                               f"{output.prompt_id}")
