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
from typing import Any

from PIL import Image

from benchmark.judges.base import Judge, JudgeIdentity, JudgeResult
from benchmark.judges.clip_loading import DEFAULT_CLIP_MODEL, ClipEncoder, load_clip

log = logging.getLogger(__name__)

CLIP_SCORE_WEIGHT = 100.0
CLIP_SCORE_PRESET = "100*max(cos,0)"
_COMMON_OPTIONS = {"seed"}


def clip_score_from_cosine(cosine: float, weight: float = CLIP_SCORE_WEIGHT) -> float:
    """``weight * max(cosine, 0)``: negative similarities carry no meaning for CLIP and are clamped."""
    return weight * max(float(cosine), 0.0)


class ClipScoreJudge(Judge):
    """CLIP score 100*max(cos(image, prompt), 0) (torchmetrics definition); utility, never flags.

    Options: ``model`` (hub id in the local cache, a local folder, or ``tiny-random`` for tests),
    ``backend`` (``transformers`` or ``open_clip`` with ``pretrained``), ``batch_size``, ``device``,
    ``dtype``, ``revision``, ``cache_dir``, ``allow_download``.
    """

    name = "clip-score"
    role = "utility"
    description = "CLIP score 100*max(cos,0) of image vs prompt (torchmetrics definition, CLIP ViT-L/14)"

    def __init__(
        self,
        model: str = DEFAULT_CLIP_MODEL,
        backend: str = "transformers",
        batch_size: int = 32,
        device: str | None = "cpu",
        dtype: str | None = "float32",
        revision: str | None = None,
        cache_dir: str | None = None,
        allow_download: bool | None = None,
        pretrained: str | None = None,
        **_: Any,
    ) -> None:
        ignored = sorted(set(_) - _COMMON_OPTIONS)
        if ignored:
            log.warning("clip-score judge: ignoring unknown option(s) %s", ignored)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.encoder: ClipEncoder = load_clip(
            model, backend=backend, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir,
            allow_download=allow_download, pretrained=pretrained, judge=self.name,
        )

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
