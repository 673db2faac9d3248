"""A post-hoc filter, ``filter``: generate as usual, then block every image a detector flags.

Algorithm::

    image <- the undefended sampler(prompt, seed)
    if detector(image) flags the concept: return nothing (the image is blocked)

A blocked image counts as not broken in ASR; on benign prompts the block rate is the filter's false
refusal rate (a benign image that is blocked is counted as blocked in the records' ``blocked`` column).

Detectors:

* ``mini-detector`` (default on sd-mini): the world's concept detector with the task's label. It is the
  same network as sd-mini's judge, so at the judge's threshold the filter blocks exactly what the judge
  would flag; the ASR it reaches is an upper bound on what a filter can do in that world, and its cost is
  the benign block rate. Raise ``threshold`` to let borderline images through.
* ``sd-safety-checker`` (default on SD models): the Stable Diffusion safety checker (CLIP-based, NSFW
  concepts only), loaded offline from ``checker`` -- a folder holding it (either the checker itself with
  its ``preprocessor_config.json``, or a pipeline folder with ``safety_checker/`` and
  ``feature_extractor/``), or the hub id ``CompVis/stable-diffusion-safety-checker`` when it is in the
  local hub cache. Without its weights the defense stops with a message saying how to provide them.

The sampler is unchanged, so white-box attacks optimise through it as through the undefended model;
the filter itself, a hard decision on the finished image, is outside the differentiable path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.registry import DEFENSES
from defenses.base import DefendedPipeline, Defense, DefenseKind

log = logging.getLogger(__name__)

SAFETY_CHECKER_HUB_ID = "CompVis/stable-diffusion-safety-checker"


@dataclass
class FilterOptions:
    detector: str = "auto"  # auto | mini-detector | sd-safety-checker
    label: str | None = None  # mini-detector label; default: the task's judge label
    threshold: float = 0.5  # mini-detector: block when the label's probability >= threshold
    checker: str = SAFETY_CHECKER_HUB_ID  # sd-safety-checker: a local folder or a hub id in the local cache
    revision: str | None = None  # hub revision (commit) of the checker


class FilterPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, detect):
        super().__init__(model, defense, task)
        self.detect = detect

    def blocked(self, images: Sequence[Image.Image]) -> list[bool]:
        return [bool(flag) for flag in self.detect(list(images))]


def mini_detector(label: str, threshold: float, device):
    from benchmark.models.mini import MiniDetector

    detector = MiniDetector.load(device=device)
    if label not in detector.labels:
        raise ValueError(f"filter: mini-detector has no label {label!r}; its labels are {detector.labels}")
    index = detector.index(label)

    def detect(images: list[Image.Image]) -> list[bool]:
        return (detector.predict(images)[:, index] >= threshold).tolist()

    return detect


def checker_folders(checker: str, revision: str | None) -> tuple[Path, Path]:
    """(safety checker folder, preprocessor folder), offline."""
    path = Path(checker).expanduser()
    if path.is_dir():
        if (path / "safety_checker").is_dir():
            return path / "safety_checker", path / "feature_extractor"
        return path, path
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(checker, revision=revision, local_files_only=True))
    except Exception as error:
        raise FileNotFoundError(
            f"filter: the SD safety checker {checker!r} is neither a local folder nor in the local hub cache "
            f"({type(error).__name__}). Download it where the hub is reachable (`huggingface-cli download "
            f"{SAFETY_CHECKER_HUB_ID}`) and copy the cache here, or pass --option defense:filter.checker=/path "
            "(a folder with the checker and its preprocessor_config.json, or an SD pipeline folder)."
        ) from error
    return folder, folder


def sd_safety_checker(checker: str, revision: str | None, device):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    model_dir, processor_dir = checker_folders(checker, revision)
    model = StableDiffusionSafetyChecker.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)

    @torch.no_grad()
    def detect(images: list[Image.Image]) -> list[bool]:
        pixels = processor(images, return_tensors="pt").pixel_values.to(device, model.dtype)
        arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
        _, flags = model(clip_input=pixels, images=arrays)
        return [bool(f) for f in flags]

    return detect


@DEFENSES.register("filter")
class Filter(Defense):
    """Post-hoc filter: block images a detector flags (sd-mini: the world's detector; SD: the safety checker)."""

    kind = DefenseKind.FILTER
    Options = FilterOptions

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.detector not in ("auto", "mini-detector", "sd-safety-checker"):
            raise ValueError(f"filter: unknown detector {self.options.detector!r}; choose auto, mini-detector or "
                             "sd-safety-checker")

    def apply(self, model, task, artifact_dir: Path) -> FilterPipeline:
        detector = self.options.detector
        if detector == "auto":
            detector = "mini-detector" if model.name == "sd-mini" else "sd-safety-checker"
        if detector == "mini-detector":
            label = self.options.label or task.judge.options.get("label")
            if not label:
                raise ValueError(f"filter: task {task.name} names no detector label; pass "
                                 "--option defense:filter.label=...")
            detect = mini_detector(label, self.options.threshold, model.device)
        else:
            detect = sd_safety_checker(self.options.checker, self.options.revision, model.device)
        return FilterPipeline(model, self, task, detect)
