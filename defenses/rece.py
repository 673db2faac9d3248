"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024), ``rece``.

UCE's closed-form edit of the cross-attention key/value projections, then E epochs that each derive, in
closed form, the embedding that *still* regenerates the concept under the edited projections, and erase
that embedding too. Every W below is one of the edited projections (all cross-attention W_k and W_v);
W_0 are the base model's, c the concept's text-encoder outputs, g the guide's, P the preserve set::

    W_1 <- UCE(W_0; concepts -> guide, preserve P)                       # defenses/uce.py, unchanged
    for e in 1..E:
        # the adversarial embedding: what the edited model must read to produce the concept's original
        # keys and values, with the paper's ridge term keeping it small (regularisation towards 0)
        c'_e  = argmin_x  sum_W ||W_e x - W_0 c||^2 + reg ||x||^2
              = (reg I + sum_W W_e^T W_e)^-1 (sum_W W_e^T W_0) c          # per token position
        # erase it as UCE does, anchored at the current weights
        W_{e+1} = ( lam W_e + s_e (W_e g) c'_e^T + s_p sum_P (W_e p) p^T )
                  ( lam I   + s_e  c'_e c'_e^T  + s_p sum_P p p^T )^-1

Token positions are aligned as in UCE (the last word token onwards, trimmed to the shorter of concept and
guide; the authors use all 77 positions, whose extra first one, BOS, is the same for every prompt). Each
epoch's erase step holds the earlier erasures only through its anchor lam ||W - W_e||^2, as the authors'
released code does (``edit_model_adversarial`` starts from the current weights and erases the new
embeddings only). ``accumulate=true`` is the other reading of "erase c' too": every epoch re-solves UCE
from W_0 with the concepts and every c' found so far in the erased set (not the paper's; not the preset).

The concept score recorded per epoch (``epoch_records`` in the prepare metadata) is the fraction of the
concept's original key/value displacement from the guide that an embedding x reproduces under weights W::

    score(x; W) = sum_W <W x - W_0 g, W_0 c - W_0 g> / sum_W ||W_0 c - W_0 g||^2      (1: the concept, 0: the guide)

Per epoch: ``adv_score_found`` (c'_e under the weights it was derived from), ``adv_score_after`` (after
its erase step), ``adv_score_final`` (after the last epoch), ``concept_score`` (the concept itself).
Later epochs lower the score of what earlier ones found (tests/test_defenses_rece.py; on sd-mini with the
preset, mini-object: found 0.95 / 0.91 -> final 0.75 / 0.31; mini-unsafe: 0.88 / 0.83 -> 0.48 / 0.46).

Paper defaults for SD-1.4 (the authors' README "Notes" and scripts/, github.com/CharlesGong12/RECE):
the UCE stage as UCE (erase scale 1, lam 0.1); the erase step's coefficients (the paper's Eq. 3)
lam_1 = 0.1 (preserve scale) and lam_2 = 0.1 (lam); regularisation reg = 0.1 with 3 epochs for nudity
(2 epochs for the I2P unsafe concepts; reg 1e-3 and 1 epoch for styles and "difficult" objects). Both W_k
and W_v are edited (their ``with_to_k=True``) and the derivation sums over all of them, K and V alike.
Here: reg 0.1 and 3 epochs on SD models; lam and the scales resolve exactly as ``uce``'s (0 epochs *is*
``uce``), so the preserve set is the task's retention concepts (the authors' nudity run preserves " ").

sd-mini preset: reg 0.1, 3 epochs (the paper's), lam UCE's sd-mini 30. On sd-mini sum_W W^T W has
eigenvalues 1..29 (10 cross-attention blocks, K and V), so reg 0.1 is a mild ridge (||c'|| ~ ||c||);
reg 1 and 10 shrink c' (||c'|| ~ 0.5 and 0.2 ||c||), which then regenerates less of the concept and is a
weaker adversary to erase. 1 and 3 epochs differed by one held-out prompt of 16, so the preset keeps the
paper's 3 (the held-out sweep: ``benchmarks/results/rece-sweep.md``). The edit takes about a second on two
CPU cores (a (d x d) solve per projection per epoch).

Options are checked when the defense is built (epochs >= 0, reg > 0, plus UCE's); a task without concept
words needs the option ``concepts`` (checked before any work). The artifact is the delta (edited - base)
of the edited projections in a safetensors file, like UCE's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from pydantic import Field
from tqdm.auto import tqdm

from benchmark.api.defense import DefenseKind, PrepareContext
from benchmark.api.errors import ConfigError
from benchmark.api.presets import Presets
from benchmark.api.registry import DEFENSES
from defenses.uce import DEFAULT_LAMB, SD_MINI_LAMB, Uce, UceOptions, aligned, token_tail, uce_edit
from defenses.weight_edit import artifact_file, cross_attention_modules, save_edit

log = logging.getLogger(__name__)

DELTA_FILE = "rece_delta.safetensors"

# The paper's setting for nudity on SD-1.4, and sd-mini's (the sweep: benchmarks/results/rece-sweep.md).
PAPER = {"epochs": 3, "reg": 0.1}
SD_MINI = {"epochs": 3, "reg": 0.1}
# UCE's lamb with RECE's own; keyed as RECE shipped them (UCE's two lamb entries beside the two tables), so
# that its cached edits stay valid. Changing any of them recomputes the edit.
PRESETS = Presets({"paper": {"lamb": DEFAULT_LAMB, **PAPER}, "sd-mini": {"lamb": SD_MINI_LAMB, **SD_MINI}},
                  by_model={"sd-mini": "sd-mini"},
                  key_value={"lamb": DEFAULT_LAMB, "sd-mini lamb": SD_MINI_LAMB, "paper": PAPER, "sd-mini": SD_MINI})

Weights = dict[str, torch.Tensor]  # "unet.<module>.<to_k|to_v>.weight" -> (d_out, d_in) float64


@dataclass
class ReceOptions(UceOptions):
    epochs: Annotated[int | None, Field(
        ge=0, description="derive-and-erase rounds after UCE; None: 3 (paper, nudity), 3 on sd-mini")] = None
    reg: Annotated[float | None, Field(
        gt=0, allow_inf_nan=False,
        description="ridge weight of the adversarial embedding's norm; None: 0.1 (paper), 0.1 on sd-mini")] = None
    accumulate: Annotated[bool, Field(
        description="each epoch re-solves UCE from W_0 with the concepts and every c' found so far "
                    "(False: the paper's step from W_e with the new c' only)")] = False


@dataclass
class EpochRecord:
    """What one epoch found and did, averaged over the erased concepts (scores as ``concept_score``)."""

    epoch: int
    adv_score_found: float  # this epoch's c' under the weights it was derived from (what the adversary reaches)
    adv_score_after: float  # ... under the weights after this epoch's erase step
    adv_score_final: float  # ... under the final weights (after every epoch)
    concept_score: float  # the concept itself after this epoch
    adv_norm_ratio: float  # ||c'|| / ||c||


@dataclass
class ReceResult:
    delta: dict[str, torch.Tensor]  # "unet.<projection>.weight" -> W_final - W_0 (float32)
    uce_concept_score: float  # score of the concept after the UCE stage
    epochs: list[EpochRecord] = field(default_factory=list)
    adversaries: list[list[torch.Tensor]] = field(default_factory=list)  # per epoch, per concept: c' (n, d_in)


def base_weights(pipe, edit_keys: bool) -> Weights:
    """The projections RECE edits, as float64 copies keyed like the artifact."""
    out: Weights = {}
    for name, module in cross_attention_modules(pipe.unet).items():
        for proj in (["to_k", "to_v"] if edit_keys else ["to_v"]):
            out[f"unet.{name}.{proj}.weight"] = getattr(module, proj).weight.detach().double().cpu()
    return out


def adversarial_embedding(current: Weights, original: Weights, concept: torch.Tensor, reg: float) -> torch.Tensor:
    """c' = (reg I + sum W'^T W')^-1 (sum W'^T W_0) c for each position (row) of ``concept``: the ridge
    least-squares embedding whose edited keys/values best reproduce the concept's original ones."""
    d_in = concept.shape[1]
    gram = reg * torch.eye(d_in, dtype=torch.float64)
    cross = torch.zeros(d_in, d_in, dtype=torch.float64)
    for key, w in current.items():
        gram = gram + w.T @ w
        cross = cross + w.T @ original[key]
    # rows: c'_i = M c_i with M = gram^-1 cross, i.e. C' = C M^T = (gram^-1 cross C^T)^T
    return torch.linalg.solve(gram, cross @ concept.T).T


def concept_score(weights: Weights, original: Weights, embedding: torch.Tensor, concept: torch.Tensor,
                  guide: torch.Tensor) -> float:
    """How much of the concept's original key/value displacement from the guide ``embedding`` reproduces
    under ``weights`` (1: all of it, 0: the guide's outputs); positions aligned from the first."""
    n = min(len(embedding), len(concept), len(guide))
    num = den = 0.0
    for key, w in weights.items():
        w0 = original[key]
        target = (concept[:n] - guide[:n]) @ w0.T
        num += float(((embedding[:n] @ w.T - guide[:n] @ w0.T) * target).sum())
        den += float((target * target).sum())
    return num / den


def erase_step(current: Weights, pairs: list[tuple[torch.Tensor, torch.Tensor]], keep: list[torch.Tensor], *,
               lamb: float, erase_scale: float, preserve_scale: float) -> Weights:
    """UCE's closed form anchored at the current weights: each (embedding, guide) pair is mapped to the
    guide's *current* outputs and the preserve set keeps its current outputs (as the authors' code)."""
    out: Weights = {}
    for key, w in current.items():
        d_in = w.shape[1]
        numerator = lamb * w
        denominator = lamb * torch.eye(d_in, dtype=torch.float64)
        for c, g in pairs:
            numerator = numerator + erase_scale * (g @ w.T).T @ c
            denominator = denominator + erase_scale * c.T @ c
        for p in keep:
            numerator = numerator + preserve_scale * (p @ w.T).T @ p
            denominator = denominator + preserve_scale * p.T @ p
        out[key] = torch.linalg.solve(denominator, numerator.T).T
    return out


def rece_edit(pipe, concepts: list[str], guide: str, preserve: list[str], *, lamb: float, erase_scale: float,
              preserve_scale: float, edit_keys: bool, epochs: int, reg: float, accumulate: bool = False) -> ReceResult:
    """UCE, then ``epochs`` rounds of derive-and-erase; the pipeline itself is left untouched."""
    original = base_weights(pipe, edit_keys)
    uce_delta = uce_edit(pipe, concepts, guide, preserve, lamb=lamb, erase_scale=erase_scale,
                         preserve_scale=preserve_scale, edit_keys=edit_keys)
    # uce_edit returns float32 deltas of the float64 solution: rebuild W_1 in float64 from them.
    current = {key: original[key] + uce_delta[key].double() for key in original}
    guide_tail = token_tail(pipe, guide)
    pairs = [aligned(token_tail(pipe, c), guide_tail) for c in concepts]
    keep = [token_tail(pipe, p) for p in preserve]

    def mean_score(weights: Weights, embeddings: list[torch.Tensor]) -> float:
        return sum(concept_score(weights, original, x, c, g) for x, (c, g) in zip(embeddings, pairs, strict=True)) / len(pairs)

    result = ReceResult(delta={}, uce_concept_score=mean_score(current, [c for c, _ in pairs]))
    for epoch in tqdm(range(1, epochs + 1), desc="RECE epochs", unit="epoch", leave=False):
        adversaries = [adversarial_embedding(current, original, c, reg) for c, _ in pairs]
        found = mean_score(current, adversaries)
        result.adversaries.append(adversaries)
        if accumulate:  # UCE from W_0 with an erased set grown by every embedding found so far
            found_pairs = [(x, g) for epoch_found in result.adversaries for x, (_, g) in zip(epoch_found, pairs, strict=True)]
            current = erase_step(original, pairs + found_pairs, keep, lamb=lamb, erase_scale=erase_scale,
                                 preserve_scale=preserve_scale)
        else:  # the paper's step: from the current weights, the new embeddings only
            current = erase_step(current, [(x, g) for x, (_, g) in zip(adversaries, pairs, strict=True)], keep, lamb=lamb,
                                 erase_scale=erase_scale, preserve_scale=preserve_scale)
        norm = sum(float(x.norm() / c.norm()) for x, (c, _) in zip(adversaries, pairs, strict=True)) / len(pairs)
        result.epochs.append(EpochRecord(epoch=epoch, adv_score_found=found,
                                         adv_score_after=mean_score(current, adversaries), adv_score_final=float("nan"),
                                         concept_score=mean_score(current, [c for c, _ in pairs]),
                                         adv_norm_ratio=norm))
    for record, adversaries in zip(result.epochs, result.adversaries, strict=True):
        record.adv_score_final = mean_score(current, adversaries)
        log.info("RECE %s", record)
    result.delta = {key: (current[key] - original[key]).float() for key in original}
    return result


@DEFENSES.register("rece")
class Rece(Uce):
    """RECE (Gong et al. 2024): UCE, then erase in closed form the embeddings that still regenerate the concept."""

    # Set here, not by the registry: the registry names a class only when it has no name yet, and this
    # one would inherit ``uce``'s.
    name = "rece"
    kind = DefenseKind.WEIGHT_EDIT
    Options = ReceOptions
    delta_file = DELTA_FILE  # ``apply`` (Uce's) loads it
    presets = PRESETS

    def sets(self, task) -> tuple[list[str], str, list[str]]:
        # Checked here so that the message names this defense and its option (UCE's would name ``uce``).
        if not self.options.concepts and not task.concept_words:
            raise ConfigError(f"defense 'rece' needs concepts to erase, and task '{task.name}' has no "
                              "concept_words: pass --option defense:rece.concepts=WORD,WORD")
        return super().sets(task)

    def resolved(self, model_name: str, n_preserve: int) -> dict[str, Any]:
        """``rece_edit``'s keywords: UCE's coefficients, then the epochs and reg of the model's preset."""
        values = self.preset_values(model_name)
        return {**self.edit_settings(model_name, n_preserve), "accumulate": self.options.accumulate,
                "epochs": values["epochs"], "reg": values["reg"]}

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        concepts, guide, preserve = self.sets(ctx.task)
        settings = self.resolved(ctx.model.name, len(preserve))
        result = rece_edit(ctx.model.pipe, concepts, guide, preserve, **settings)
        save_edit(artifact_file(ctx.artifact_dir, self.delta_file), result.delta, {"defense": self.name})
        return {"concepts": concepts, "guide": guide, "preserve": preserve, **settings,
                "edited_projections": len(result.delta),
                "delta_norm": float(sum(v.norm() ** 2 for v in result.delta.values()) ** 0.5),
                "uce_concept_score": result.uce_concept_score,
                "epoch_records": [vars(r) for r in result.epochs]}
