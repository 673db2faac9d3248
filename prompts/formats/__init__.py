"""Prompt-file formats: one module per source format, each turning its files into ``list[Prompt]``.

=================  ==============================================================================
``generic``        any CSV / TSV / JSON / JSONL / TXT prompt file (:func:`load_prompt_file`)
``unlearndiff``    UnlearnDiff's prompt CSVs (Diffusion-MU-Attack ``prompts/*.csv``)
``i2p``            I2P, from a CSV or (when allowed) the Hugging Face hub
``mma_diffusion``  MMA-Diffusion's adversarial NSFW prompts
``ring_a_bell``    Ring-A-Bell's inverted prompts, concept-vector prompt pairs and concept vectors
``coco``           benign COCO captions (Diffusion-MU-Attack ``prompts/coco_10k.csv``)
``mini``           sd-mini's generated prompt sets
=================  ==============================================================================

A prompt-set file (``prompts/sets/*.yaml``) names its loader by a key of :data:`FORMATS`; the loader is
imported only when the set is used. Every loader takes the file's path first and ``limit=`` (plus the
set's ``options`` as keywords), and raises a :class:`~benchmark.api.errors.UserError` on bad input.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

FORMATS: dict[str, str] = {
    "prompt-file": "prompts.formats.generic:load_prompt_file",
    "unlearndiff": "prompts.formats.unlearndiff:load_unlearndiff",
    "i2p": "prompts.formats.i2p:load_i2p",
    "mma-diffusion": "prompts.formats.mma_diffusion:load_mma_diffusion",
    "ring-a-bell": "prompts.formats.ring_a_bell:load_ring_a_bell",
    "coco": "prompts.formats.coco:load_coco_captions",
    "sd-mini": "prompts.formats.mini:load_sd_mini",
}
"""Format name (the ``format`` key of a prompt-set file) -> ``"module:function"`` of its loader."""

GENERATED_FORMATS: frozenset[str] = frozenset({"sd-mini"})
"""Formats whose prompts are generated, not read: their sets have no file (and no sha256)."""


def format_loader(name: str) -> Callable[..., Any]:
    """The loader function of a format (imported now); ``KeyError`` for an unknown name."""
    module_name, _, attr = FORMATS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


__all__ = ["FORMATS", "GENERATED_FORMATS", "format_loader"]
