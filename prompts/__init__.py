"""Prompt sets: loaders for the published attack / benchmark prompt files, and the named sets.

``PROMPT_SETS.get(name)`` returns a :class:`~prompts.sets.PromptSetSpec`; ``spec.load(data_dir, limit)``
returns ``list[Prompt]``. Third-party files live in a data directory (``--data-dir``, ``$UNLEARN_ARENA_DATA``
or ``./data``) laid out as ``<data_dir>/<origin>/<file>``; ``toy-attack`` and ``toy-benign`` ship with the
package. Any other file loads with :func:`load_prompt_file`.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.registry import PROMPT_SETS
from prompts.base import Prompt, PromptFileError
from prompts.loaders import (
    load_coco_captions,
    load_concept_prompt_pairs,
    load_concept_vector,
    load_i2p,
    load_mma_diffusion,
    load_prompt_file,
    load_ring_a_bell,
    load_unlearndiff,
)
from prompts.sets import DATA_ENV, PromptSetSpec, resolve_data_dir

UNLEARNDIFF_REPO = "https://github.com/OPTML-Group/Diffusion-MU-Attack"
I2P_HUB = "https://huggingface.co/datasets/AIML-TUDA/i2p"
MMA_HUB = "https://huggingface.co/datasets/YijunYang280/MMA-Diffusion-NSFW-adv-prompts-benchmark"
RING_A_BELL_REPO = "https://github.com/chiayi-hsu/Ring-A-Bell"


def _unlearndiff(name: str, file: str, what: str) -> PromptSetSpec:
    return PromptSetSpec(
        name=name,
        description=f"UnlearnDiff {what}, with evaluation seeds and guidance (Diffusion-MU-Attack)",
        source=UNLEARNDIFF_REPO,
        source_path=f"prompts/{file}",
        filename=f"Diffusion-MU-Attack/{file}",
        loader=load_unlearndiff,
    )


SPECS: list[PromptSetSpec] = [
    _unlearndiff("unlearndiff-nudity", "nudity.csv", "nudity prompts (142, from I2P)"),
    _unlearndiff("unlearndiff-vangogh", "vangogh.csv", "Van Gogh style prompts (50 painting titles)"),
    _unlearndiff("unlearndiff-church", "church.csv", "church object prompts (50)"),
    _unlearndiff("unlearndiff-parachute", "parachute.csv", "parachute object prompts (50)"),
    _unlearndiff("unlearndiff-garbage-truck", "garbage_truck.csv", "garbage-truck object prompts (50)"),
    _unlearndiff("unlearndiff-tench", "tench.csv", "tench object prompts (50)"),
    _unlearndiff("unlearndiff-violence", "violence.csv", "violence prompts (756, from I2P)"),
    _unlearndiff("unlearndiff-illegal", "illegal.csv", "illegal-activity prompts (727, from I2P)"),
    PromptSetSpec(
        name="i2p-sexual",
        description="I2P prompts in the 'sexual' category (931 of 4703), with seeds and guidance",
        source=f"{I2P_HUB} (i2p_benchmark.csv), or {UNLEARNDIFF_REPO}",
        source_path="prompts/i2p.csv",
        filename="Diffusion-MU-Attack/i2p.csv",
        loader=load_i2p,
        loader_kwargs={"categories": ("sexual",)},
        hub_dataset="AIML-TUDA/i2p",
    ),
    PromptSetSpec(
        name="i2p",
        description="I2P, all 4703 inappropriate-image prompts over 7 categories, with seeds and guidance",
        source=f"{I2P_HUB} (i2p_benchmark.csv), or {UNLEARNDIFF_REPO}",
        source_path="prompts/i2p.csv",
        filename="Diffusion-MU-Attack/i2p.csv",
        loader=load_i2p,
        hub_dataset="AIML-TUDA/i2p",
    ),
    PromptSetSpec(
        name="mma-diffusion-nsfw",
        description="MMA-Diffusion adversarial NSFW prompts (1000; text = adv_prompt, others in meta)",
        source=f"{MMA_HUB} (gated: accept its terms; see https://github.com/cure-lab/MMA-Diffusion)",
        source_path="the dataset's CSV, saved as mma-diffusion-nsfw-adv-prompts.csv",
        filename="MMA-Diffusion/mma-diffusion-nsfw-adv-prompts.csv",
        loader=load_mma_diffusion,
    ),
    PromptSetSpec(
        name="ring-a-bell-violence",
        description="Ring-A-Bell inverted violence prompts (250; K=77 tokens, eta=5.5)",
        source=RING_A_BELL_REPO,
        source_path="data/InvPrompt/Violence/Violence_eta_5.5_K_77.csv",
        filename="Ring-A-Bell/InvPrompt_Violence/Violence_eta_5.5_K_77.csv",
        loader=load_ring_a_bell,
    ),
    PromptSetSpec(
        name="coco-10k",
        description="Benign COCO captions (9969 rows of Diffusion-MU-Attack's coco_10k.csv) with seeds",
        source=UNLEARNDIFF_REPO,
        source_path="prompts/coco_10k.csv",
        filename="Diffusion-MU-Attack/coco_10k.csv",
        loader=load_coco_captions,
        benign=True,
    ),
    PromptSetSpec(
        name="toy-attack",
        description="8 short concept prompts (church, Van Gogh, parachute, ...) shipped for tests and demos",
        source="shipped with unlearn-arena",
        filename="toy_attack.txt",
        loader=load_prompt_file,
        packaged=True,
    ),
    PromptSetSpec(
        name="toy-benign",
        description="8 everyday captions shipped for tests and demos (benign utility set)",
        source="shipped with unlearn-arena",
        filename="toy_benign.txt",
        loader=load_prompt_file,
        packaged=True,
        benign=True,
    ),
]

for _spec in SPECS:
    PROMPT_SETS.add(_spec.name, _spec, _spec.description)

from prompts.mini import MINI_SETS  # noqa: E402  (sd-mini's sets come after the file-backed ones)

for _mini in MINI_SETS:
    PROMPT_SETS.add(_mini.name, _mini, _mini.description)


def load_prompt_set(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Prompt]:
    """Load a registered prompt set by name (unknown names fail with a 'did you mean' hint)."""
    return PROMPT_SETS.get(name).load(data_dir=data_dir, limit=limit)


__all__ = [
    "DATA_ENV",
    "SPECS",
    "Prompt",
    "PromptFileError",
    "PromptSetSpec",
    "load_coco_captions",
    "load_concept_prompt_pairs",
    "load_concept_vector",
    "load_i2p",
    "load_mma_diffusion",
    "load_prompt_file",
    "load_prompt_set",
    "load_ring_a_bell",
    "load_unlearndiff",
    "resolve_data_dir",
]
