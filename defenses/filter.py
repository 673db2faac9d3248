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

Checked before any work (:meth:`Filter.check_inputs`): with the mini-detector, the label (the option or
the task judge's) must be one of the detector's labels. The safety checker's weights are looked for when
the defense is applied (a run on a model without them fails that defense's cells with the message above).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind
from benchmark.api.errors import ConfigError, ModelUnavailableError
from benchmark.api.files import PathOrHubId, content_hash
from benchmark.api.registry import DEFENSES
from benchmark.hashing import stable_hash
from benchmark.mini_world import DETECTOR_DIR, draws_world

log = logging.getLogger(__name__)

SAFETY_CHECKER_HUB_ID = "CompVis/stable-diffusion-safety-checker"


@dataclass
class FilterOptions:
    detector: Annotated[Literal["auto", "mini-detector", "sd-safety-checker"], Field(
        description="auto: mini-detector on sd-mini")] = "auto"
    label: Annotated[str | None, Field(description="mini-detector label; default: the task's judge label")] = None
    threshold: Annotated[float, Field(
        ge=0, le=1.01, description="mini-detector: block at probability >= it (1.01: never)")] = 0.5
    checker: Annotated[PathOrHubId, Field(
        description="sd-safety-checker: a local folder or a hub id in the local cache")] = SAFETY_CHECKER_HUB_ID
    revision: Annotated[str | None, Field(description="hub revision (commit) of the checker")] = None


class FilterPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, detect):
        super().__init__(model, defense, task)
        self.detect = detect

    def blocked(self, images: Sequence[Image.Image]) -> list[bool]:
        return [bool(flag) for flag in self.detect(list(images))]


def detector_labels() -> list[str]:
    """The mini-detector's labels, read from its config (the network is not loaded)."""
    return list(json.loads((DETECTOR_DIR / "config.json").read_text())["labels"])


def mini_detector(label: str, threshold: float, device):
    from benchmark.mini_world import MiniDetector

    detector = MiniDetector.load(device=device)
    index = detector.index(label)

    def detect(images: list[Image.Image]) -> list[bool]:
        return (detector.predict(images)[:, index] >= threshold).tolist()

    return detect


class SafetyCheckerMissingError(ModelUnavailableError, FileNotFoundError):
    """The SD safety checker is neither a local folder nor in the local hub cache."""


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
        raise SafetyCheckerMissingError(
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

    def detector(self, model_name: str) -> str:
        if self.options.detector == "auto":
            return "mini-detector" if draws_world(model_name) else "sd-safety-checker"
        return self.options.detector

    def label(self, task) -> str:
        """The mini-detector label: the option, else the task judge's; a :class:`ConfigError` when there is
        none or the detector does not know it."""
        label = self.options.label or task.judge.options.get("label")
        labels = detector_labels()
        if not label:
            raise ConfigError(f"defense 'filter': task '{task.name}' names no mini-detector label; pass "
                              f"--option defense:filter.label=LABEL (the detector's labels: {', '.join(labels)})")
        if label not in labels:
            raise ConfigError(f"defense 'filter': the mini-detector has no label {label!r} (from "
                              f"{'option label' if self.options.label else f'task {task.name} judge'}); its labels "
                              f"are {', '.join(labels)}")
        return label

    def check_inputs(self, ctx) -> None:
        if self.detector(ctx.model) == "mini-detector":
            self.label(ctx.task)
        else:  # the checker must be on disk before any work (an offline lookup, nothing is loaded)
            checker_folders(self.options.checker, self.options.revision)

    def file_key(self, option: str) -> str:
        """A local ``checker`` enters the keys by the content of the checker and preprocessor folders it
        holds (not a whole pipeline folder's); a hub id as written, pinned by ``revision``."""
        value = self.file_options()[option]
        path = self.resolve_file(option, value)
        if option != "checker" or not path.is_dir():
            return super().file_key(option)
        return stable_hash(sorted({content_hash(folder) for folder in checker_folders(value, None)}))

    def apply(self, model, task, artifact_dir: Path) -> FilterPipeline:
        detector = self.detector(model.name)
        if detector == "mini-detector":
            detect = mini_detector(self.label(task), self.options.threshold, model.device)
        else:
            detect = sd_safety_checker(self.options.checker, self.options.revision, model.device)
        return FilterPipeline(model, self, task, detect)
