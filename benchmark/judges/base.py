"""The judge interface: batched scoring of images (and their prompts) with a stable identity."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


class Judge(ABC):
    """Base class of judges.

    Subclasses set ``name``/``role`` and implement :meth:`identity` and :meth:`score`.
    ``role`` is ``"concept"`` (flags the erased concept: NudeNet, a zero-shot classifier, a detector)
    or ``"utility"`` (measures only: CLIP score). Constructors take keyword options (``preset``,
    ``threshold``, ``device``, ...) and must not touch the network.
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = "concept"
    description: ClassVar[str] = ""

    @abstractmethod
    def identity(self) -> JudgeIdentity: ...

    @abstractmethod
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[JudgeResult]:
        """Score a batch; ``prompts`` are the (source) prompts of the images, same length."""

    def config(self) -> dict[str, Any]:
        """The judge's identity as a dict, for cell keys."""
        return self.identity().as_dict()
