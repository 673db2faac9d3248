"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024), ``uce``.

A closed-form edit of every cross-attention key and value projection W (the only weights that read the
text). For erased concepts E, each with a guide g_i, and a preserve set P::

    c_i   = text-encoder outputs of concept i (its last word token and every position after it)
    v_i*  = W_old g_i                          # what the guide's embedding produces at the same positions
    W_new = ( lam W_old + s_e sum_E v_i* c_i^T + s_p sum_P W_old c_j c_j^T )
            ( lam I     + s_e sum_E c_i  c_i^T + s_p sum_P c_j c_j^T )^-1

which minimises  s_e sum_E ||W c_i - v_i*||^2 + s_p sum_P ||W c_j - W_old c_j||^2 + lam ||W - W_old||^2.
Aligning the concept's and the guide's token sequences from their last word token onwards (and trimming to
the shorter tail) is how the authors align them too; the positions after the last word carry the
concept through the causal text encoder.

Defaults: erase scale 1, preserve scale max(0.1, 1/|P|); lam 0.1 on SD models (negligible next to
||c||^2 ~ 800 of CLIP-L outputs: the edit is set by the erase and preserve terms), 30 on sd-mini, whose
192-d outputs have ||c||^2 ~ 180 and whose few preserve words leave most directions unconstrained (the
lam sweep that chose 30, on the first shipped sd-mini: ``benchmarks/results/uce-sweep.md``).
E = the task's concept words; the guide = the task's guide concept ("" -- the empty prompt -- on the
sd-mini tasks, which have none); P = the task's retention concepts as words (sd-mini's labels such as
``object:star`` become their canonical word). Runs in seconds: one (d x d) solve per projection.

The artifact is the delta (edited - base) of the edited projections in a safetensors file.

Options are checked when the defense is built (lam > 0, scales >= 0; ``concepts`` and ``preserve`` take a
list or a comma-separated string); a task without concept words needs the option ``concepts`` (checked
before any work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BeforeValidator, Field

from benchmark.api.defense import Defense, DefenseKind, PrepareContext
from benchmark.api.errors import ConfigError
from benchmark.api.presets import Presets
from benchmark.api.registry import DEFENSES
from benchmark.mini_world import LEXICON
from defenses._options import comma_list
from defenses.weight_edit import WeightEditPipeline, artifact_file, cross_attention_modules, load_edit, save_edit

log = logging.getLogger(__name__)

DELTA_FILE = "uce_delta.safetensors"
DEFAULT_LAMB = 0.1
SD_MINI_LAMB = 30.0


# The per-model default of lamb, keyed as UCE shipped it ("defaults": {"lamb", "sd-mini lamb"}) so that its
# cached edits stay valid; changing it recomputes the edit.
PRESETS = Presets({"paper": {"lamb": DEFAULT_LAMB}, "sd-mini": {"lamb": SD_MINI_LAMB}}, by_model={"sd-mini": "sd-mini"},
                  key_value={"lamb": DEFAULT_LAMB, "sd-mini lamb": SD_MINI_LAMB})


@dataclass
class UceOptions:
    concepts: Annotated[list[str], BeforeValidator(comma_list), Field(
        description='erased concepts (a list or "a, b"); default: the task\'s concept words')] = field(
        default_factory=list)
    guide: Annotated[str | None, Field(
        description='what they map to; default: the task\'s guide concept ("" = the empty prompt)')] = None
    preserve: Annotated[list[str] | None, BeforeValidator(comma_list), Field(
        description="preserve set; default: the task's retention concepts as words")] = None
    lamb: Annotated[float | None, Field(
        gt=0, allow_inf_nan=False,
        description="ridge weight keeping W close to W_old; None: 0.1, or 30 on sd-mini")] = None
    erase_scale: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                        description="weight of the erased concepts' terms")] = 1.0
    preserve_scale: Annotated[float | None, Field(ge=0, allow_inf_nan=False,
                                                  description="None: max(0.1, 1 / |preserve set|)")] = None
    edit_keys: Annotated[bool, Field(description="edit W_k as well as W_v")] = True


def concept_word(label: str) -> str:
    """A retention concept as text: sd-mini's detector labels (``object:star``) become the world's
    canonical word; anything else is already text."""
    if label in LEXICON:
        return LEXICON[label].canonical
    return label.split(":", 1)[-1]


def token_tail(pipe, text: str) -> torch.Tensor:
    """Text-encoder outputs (as the UNet sees them) from the last word token to the end of the sequence."""
    tokens = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    last_word = int(tokens.attention_mask[0].sum()) - 2  # minus BOS and EOS; 0 (BOS) for the empty prompt
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt([text], pipe.device, 1, False)
    return embeds[0, max(last_word, 0):].double().cpu()


def aligned(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(len(a), len(b))
    return a[:n], b[:n]


def uce_edit(pipe, concepts: list[str], guide: str, preserve: list[str], *, lamb: float, erase_scale: float,
             preserve_scale: float, edit_keys: bool) -> dict[str, torch.Tensor]:
    """The closed-form UCE edit as ``{"unet.<projection>.weight": W_new - W_old}``."""
    guide_tail = token_tail(pipe, guide)
    erase_pairs = [aligned(token_tail(pipe, c), guide_tail) for c in concepts]
    keep = [token_tail(pipe, p) for p in preserve]
    delta: dict[str, torch.Tensor] = {}
    for name, module in cross_attention_modules(pipe.unet).items():
        for proj in (["to_k", "to_v"] if edit_keys else ["to_v"]):
            w_old = getattr(module, proj).weight.detach().double().cpu()  # (d_out, d_in)
            d_in = w_old.shape[1]
            numerator = lamb * w_old
            denominator = lamb * torch.eye(d_in, dtype=torch.float64)
            for c, g in erase_pairs:
                v_star = g @ w_old.T  # (n, d_out): the guide's outputs at the aligned positions
                numerator = numerator + erase_scale * v_star.T @ c
                denominator = denominator + erase_scale * c.T @ c
            for c in keep:
                numerator = numerator + preserve_scale * (c @ w_old.T).T @ c
                denominator = denominator + preserve_scale * c.T @ c
            # W_new = numerator @ denominator^-1, via a solve on the (symmetric) denominator.
            w_new = torch.linalg.solve(denominator, numerator.T).T
            delta[f"unet.{name}.{proj}.weight"] = (w_new - w_old).float()
    return delta


@DEFENSES.register("uce")
class Uce(Defense):
    """UCE (Gandikota et al. 2024): closed-form edit of cross-attention K/V mapping the concept to a guide."""

    kind = DefenseKind.WEIGHT_EDIT
    Options = UceOptions
    delta_file = DELTA_FILE  # the artifact's file name (subclasses that extend the edit name theirs)
    presets = PRESETS

    def check_inputs(self, ctx) -> None:
        self.sets(ctx.task)

    def sets(self, task) -> tuple[list[str], str, list[str]]:
        concepts = list(self.options.concepts) or list(task.concept_words)
        if not concepts:
            raise ConfigError(f"defense 'uce' needs concepts to erase, and task '{task.name}' has no concept_words: "
                              "pass --option defense:uce.concepts=WORD,WORD")
        guide = self.options.guide if self.options.guide is not None else task.guide_concept
        preserve = None if self.options.preserve is None else list(self.options.preserve)
        if preserve is None:
            preserve = [concept_word(label) for label in task.retention_concepts]
        preserve = [p for p in preserve if p not in concepts]
        return concepts, guide, preserve

    def edit_settings(self, model_name: str, n_preserve: int) -> dict[str, Any]:
        """The closed form's coefficients with their per-model defaults resolved (``uce_edit``'s keywords)."""
        o = self.options
        preserve_scale = o.preserve_scale
        if preserve_scale is None:
            preserve_scale = max(0.1, 1.0 / n_preserve) if n_preserve else 0.0
        lamb = self.preset_values(model_name)["lamb"]
        return {"lamb": lamb, "erase_scale": o.erase_scale, "preserve_scale": preserve_scale, "edit_keys": o.edit_keys}

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        concepts, guide, preserve = self.sets(ctx.task)
        settings = self.edit_settings(ctx.model.name, len(preserve))
        delta = uce_edit(ctx.model.pipe, concepts, guide, preserve, **settings)
        save_edit(artifact_file(ctx.artifact_dir, self.delta_file), delta, {"defense": self.name})
        return {"concepts": concepts, "guide": guide, "preserve": preserve,
                "preserve_scale": settings["preserve_scale"], "lamb": settings["lamb"],
                "edited_projections": len(delta),
                "delta_norm": float(sum(v.norm() ** 2 for v in delta.values()) ** 0.5)}

    def apply(self, model, task, artifact_dir: Path) -> WeightEditPipeline:
        path = artifact_file(artifact_dir, self.delta_file)
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no edit in {artifact_dir}; run the prepare stage first")
        return WeightEditPipeline(model, self, task, load_edit(path), as_delta=True)
