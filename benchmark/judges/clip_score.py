"""CLIP score: how well an image matches its prompt, the utility measure on benign prompts.

Definition (stated in every report through the judge preset): ``CLIPScore = 100 * max(cos(E_I, E_T), 0)``
with ``E_I``/``E_T`` CLIP's projected image/text embeddings. Hessel et al. (2021, "CLIPScore") define
``w * max(cos, 0)`` with ``w = 2.5``; ``torchmetrics.multimodal.CLIPScore`` and the text-to-image
unlearning literature use ``w = 100`` with the default ``openai/clip-vit-large-patch14``, which we follow
so that numbers are comparable with papers. Prompts longer than CLIP's 77 tokens are truncated (as the
Stable Diffusion pipeline truncates them), not rejected; ``details["prompt_truncated"]`` records it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from benchmark.api.judge import JudgeIdentity, JudgeResult
from benchmark.api.registry import JUDGES
from benchmark.judges.clip_loading import ClipEncoder, ClipJudge, ClipLoadOptions

log = logging.getLogger(__name__)

CLIP_SCORE_WEIGHT = 100.0
CLIP_SCORE_PRESET = "100*max(cos,0)"


def clip_score_from_cosine(cosine: float, weight: float = CLIP_SCORE_WEIGHT) -> float:
    """``weight * max(cosine, 0)``: negative similarities carry no meaning for CLIP and are clamped."""
    return weight * max(float(cosine), 0.0)


@JUDGES.register("clip-score")
class ClipScoreJudge(ClipJudge):
    """CLIP score 100*max(cos(image, prompt), 0) (torchmetrics definition); utility, never flags.

    The model is a hub id read from the local cache, a local folder, or ``tiny-random`` for tests (see
    :mod:`benchmark.judges.clip_loading`). Options: see :class:`ClipScoreJudge.Options`.
    """

    name = "clip-score"
    role = "utility"
    description = "CLIP score 100*max(cos,0) of image vs prompt (torchmetrics definition, CLIP ViT-L/14)"

    @dataclass
    class Options(ClipLoadOptions):
        """Only where the model comes from (see ClipLoadOptions)."""

    def __init__(self, device: str | None = "cpu", **options: Any) -> None:
        super().__init__(device, **options)
        self.batch_size = self.options.batch_size
        self.encoder: ClipEncoder = self.load_encoder()

    def identity(self) -> JudgeIdentity:
        return JudgeIdentity(
            name=self.name,
            version=f"clip:{self.encoder.version}",
            preset=CLIP_SCORE_PRESET,
            threshold=None,
            weights_hash=self.encoder.weights_hash,
        )

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[JudgeResult]:
        if len(images) != len(prompts):
            raise ValueError(
                f"clip-score needs one prompt per image, got {len(images)} images, {len(prompts)} prompts"
            )
        results: list[JudgeResult] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            image_emb = self.encoder.encode_images(images[start:stop])
            text_emb, truncated = self.encoder.encode_texts(prompts[start:stop])
            cosines = (image_emb * text_emb).sum(dim=-1).tolist()
            for cosine, cut in zip(cosines, truncated, strict=True):
                results.append(
                    JudgeResult(
                        score=clip_score_from_cosine(cosine),
                        flagged=None,
                        details={"cosine": float(cosine), "prompt_truncated": float(cut)},
                    )
                )
        return results
