"""Prompt sets: loaders for the published attack / benchmark prompt files, and the named sets.

Each named set is a data file, ``prompts/sets/<name>.yaml`` (see :mod:`prompts.spec`), registered by that
file alone; ``PROMPT_SETS.get(name)`` returns its :class:`~prompts.spec.PromptSetSpec` and
``spec.load(data_dir, limit)`` returns ``list[Prompt]``. The loaders live in :mod:`prompts.formats`, one
module per source format, and are re-exported here. Third-party files live in a data directory
(``--data-dir``, ``$UNLEARN_ARENA_DATA`` or ``./data``) laid out as ``<data_dir>/<origin>/<file>``;
``toy-attack`` and ``toy-benign`` ship with the package. Any other file loads with :func:`load_prompt_file`.

Importing this package registers nothing and imports neither torch nor numpy.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.api.prompt import Prompt, PromptFileError
from benchmark.api.registry import PROMPT_SETS
from prompts.formats._hub import datasets_available, network_allowed
from prompts.formats._read import PromptFileNotFoundError
from prompts.formats.coco import load_coco_captions
from prompts.formats.generic import load_prompt_file
from prompts.formats.i2p import load_i2p
from prompts.formats.mma_diffusion import load_mma_diffusion
from prompts.formats.ring_a_bell import load_concept_prompt_pairs, load_concept_vector, load_ring_a_bell
from prompts.formats.unlearndiff import load_unlearndiff
from prompts.spec import DATA_ENV, FileCheck, PromptSetSpec, load_prompt_set_file, resolve_data_dir


def load_prompt_set(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Prompt]:
    """Load a registered prompt set by name (unknown names fail with a 'did you mean' hint)."""
    return PROMPT_SETS.get(name).load(data_dir=data_dir, limit=limit)


__all__ = [
    "DATA_ENV",
    "FileCheck",
    "Prompt",
    "PromptFileError",
    "PromptFileNotFoundError",
    "PromptSetSpec",
    "datasets_available",
    "load_coco_captions",
    "load_concept_prompt_pairs",
    "load_concept_vector",
    "load_i2p",
    "load_mma_diffusion",
    "load_prompt_file",
    "load_prompt_set",
    "load_prompt_set_file",
    "load_ring_a_bell",
    "load_unlearndiff",
    "network_allowed",
    "resolve_data_dir",
]
