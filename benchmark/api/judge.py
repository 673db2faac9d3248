"""The judge interface: batched scoring of images (and their prompts) with a stable identity.

A judge is a :class:`~benchmark.api.component.Component` like defenses and attacks: its options are a
nested ``Options`` dataclass, validated by :meth:`Component.validate_options` at resolve time without
loading anything; :meth:`Component.check_inputs` checks the files the options name. The constructor is
``JudgeCls(device="cpu", **options)``: it validates first (``super().__init__(device, **options)``) and
only then loads weights, so a bad option never costs a model load. A model file that cannot be loaded
raises :class:`~benchmark.api.errors.JudgeLoadError` (one line: which file, what is wrong, what to do).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from benchmark.api.component import CheckContext, Component

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class JudgeResult:
    """One image's verdict.

    ``score`` is the judge's scalar (max class probability for a detector, CLIP score for clip-score).
    ``flagged`` is ``score >= threshold`` for concept judges and None for utility judges (which only
    measure). ``details`` holds per-class scores.
    """

    score: float
    flagged: bool | None
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgeIdentity:
    """What every record carries about the judge that produced it."""

    name: str
    version: str
    preset: str
    threshold: float | None
    weights_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "judge_version": self.version,
            "judge_preset": self.preset,
            "judge_threshold": self.threshold,
            "judge_weights_hash": self.weights_hash,
        }


class Judge(Component, ABC):
    """Base class of judges.

    Subclasses set ``name``/``role``, declare ``Options`` and implement :meth:`identity` and :meth:`score`.
    ``role`` is ``"concept"`` (flags the erased concept: NudeNet, a zero-shot classifier, a detector)
    or ``"utility"`` (measures only: CLIP score). ``device`` is where the judge runs, not an option: it
    never enters the identity. Constructors must not touch the network unless an option allows it.

    :meth:`check_inputs` of a judge may look only at ``self.options`` (and the context): the resolver
    runs it through :meth:`check_options` on an instance whose weights are not loaded.
    """

    component_kind: ClassVar[str] = "judge"
    name: ClassVar[str] = ""
    role: ClassVar[str] = "concept"
    description: ClassVar[str] = ""

    def __init__(self, device: str | None = "cpu", **options: Any):
        Component.__init__(self, **options)  # validation first: nothing is loaded for a bad option
        self.device = device

    @classmethod
    def check_options(cls, options: dict[str, Any], ctx: CheckContext | None = None) -> Any:
        """Validate ``options`` and run :meth:`check_inputs` (when ``ctx`` is given) without loading the
        judge's model; returns the ``Options`` instance. Raises :class:`~benchmark.api.errors.UserError`."""
        validated = cls.validate_options(options)
        if ctx is not None:
            unloaded = cls.__new__(cls)
            unloaded.options = validated
            unloaded.device = None
            unloaded.check_inputs(ctx)
            unloaded.check_files(ctx)
        return validated

    @abstractmethod
    def identity(self) -> JudgeIdentity: ...

    @abstractmethod
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[JudgeResult]:
        """Score a batch; ``prompts`` are the (source) prompts of the images, same length."""

    def config(self) -> dict[str, Any]:
        """The judge's identity as a dict, for cell keys (not the options: the identity states what the
        options mean, e.g. a preset with its overrides spelled out)."""
        return self.identity().as_dict()

