"""SAFREE: training-free and adaptive guard (Yoon et al., ICLR 2025, arXiv 2410.12761), ``safree``.

An inference-time defense: no weight changes, no training. K keywords of the toxic concept span a
subspace C of the text-embedding space; prompt tokens that pull the prompt towards C are projected out of
it for the first denoising steps, and while they are, the low frequencies of the UNet decoder's skip
features that the projection amplified are damped. Algorithm (per prompt)::

    C      = [pool(k_1) ... pool(k_K)]              (D x K) pooled text embeddings of the keywords
    P_C    = C (C^T C)^+ C^T                         projection onto the toxic subspace
    e_j    = text-encoder outputs of the prompt (positions 0..T-1; tokens 1..n between BOS and EOS)
    p_\\i   = pool(prompt with token i masked out)    i = 1..n   (masked: the token id 0)
    d_i    = || (I - P_C) p_\\i ||                    distance to C once token i is gone
    m_i    = [ d_i >= (1 + alpha) mean_{j != i} d_j ]    # removing i moves the prompt away from C: toxic
    P_I    = projection onto span{p_\\1 .. p_\\n}      the prompt's own input space
    e'_j   = (I - P_C) P_I e_j  if m_j  else e_j       # (a)-(c): flagged tokens leave C, stay in I
    beta   = 1 - mean_{j real} cos((I - P_C) P_I e_j, e_j)
    t'     = round(gamma * sigmoid(a (beta - beta_0)))                         # (d) self-validating filter
    step i (0 = noisiest) is conditioned on  e'  if i <= t'  else  e
    (e) latent re-attention, at the steps conditioned on e' (where e' != e): for every skip feature h
        entering a decoder resnet of the two deepest stages (scale s_1, s_2), with h and h_o the features
        of the same latents under e' and under e, F = fftshift(FFT2(.)), L = the (2r x 2r) lowest frequencies:
            F(h)_f <- s F(h)_f   where f in L and |F(h)_f| > |F(h_o)_f|,     h <- IFFT2(F(h))

Paper defaults for SD-1.4 (the authors' release, scripts/run_nudity.sh): alpha 0.01; gamma ("up_t") 10 of 50
DPM-Solver steps; the release's sigmoid is sigmoid(2k(10 beta - t)) with k 2.5, t 5.333 for nudity, i.e.
a = 50, beta_0 = 0.5333 (artists: a = 70, beta_0 = 0.55; the release calls beta_0 "the midpoint between
the two means", of beta over toxic and over safe prompts); s_1 0.9 and s_2 0.2 on the 1280- and
640-channel stages (FreeU's stages; the release's ``freeu_hyp`` 1.0-1.0-0.9-0.2), r = 1; the 17 nudity
keywords of the release (``PAPER_KEYWORDS``) on the ``nudity`` task, the task's concept words otherwise.

sd-mini preset (``None`` options resolve per model): the paper's alpha, gamma, a, s and r, and the release's
keyword negative prompt; only beta_0 is sd-mini's own: the release's rule (the midpoint of mean beta over
toxic and over safe prompts) recomputed in ``prepare`` on 32 held-out pairs (``tasks.training_split``),
because sd-mini's 192-d encoder gives other betas (toxic/safe means 0.660/0.645 on mini-unsafe, centre
0.653; 0.601 on mini-object). On held-out prompts the keyword negative prompt did most of the erasing and
turning the self-validating filter off erased more at 3-8 benign CLIP points more, so the preset keeps the
release's configuration (the sweep, with its command: ``benchmarks/results/safree-sweep.md``).

Deviations, and why:

* Masking uses the token id 0 ("!" in CLIP's vocabulary, as the release; ``<pad>`` in sd-mini's); never
  BOS/EOS, which would move CLIP's pooling position.
* (e) follows the paper's text: the amplified low frequencies are *scaled* by s. The release instead
  replaces them by the constant s, compares real parts, and registers its filter with ``safree=None``,
  which applies no filter at all (``free_lunch_utils.py``): as released, re-attention is a no-op. The
  release's FreeU backbone factors b are 1 and are left out. Stages are the two largest distinct
  ``block_out_channels`` (1280/640 on SD, 128/96 on sd-mini).
* The release also passes the keywords, joined by ", ", as the negative prompt (the unconditional branch
  of guidance); the paper's algorithm box does not mention it, but its reported numbers come from that
  script, so it is on by default (``negative_prompt=false``: the box alone). On sd-mini it does most of the
  erasing (``benchmarks/results/safree-sweep.md``): the keywords' pooled embeddings share sd-mini's dominant
  common direction, so the projection flags most tokens of every prompt yet moves little of the concept.
* White-box attacks hand :meth:`SafreePipeline.noise_prediction` text-encoder outputs, not tokens, and
  masked re-encoding needs tokens. Conditional embeddings this pipeline encoded itself (every generated
  prompt, the contract's) are recognised (content hash) and get the exact analysis above; others (an
  attack's optimised embeddings) get it with the masked pools estimated in the output space,
  p_\\i = mean of the outputs at positions != i (positions 1..T-1); ``stats["estimated_rows"]`` counts them.
  The projection, the step switch and the re-attention are the same code in both cases, so gradients flow
  through the projected embedding (the analysis itself, like the paper's, is a hard decision).

Sampling runs diffusers' own pipeline: the per-step embedding is handed over with ``callback_on_step_end``
(as SafeRedir does) and the re-attention is a set of forward hooks on the UNet and its up blocks, installed
by ``apply`` and removed by ``close()``; the hooks act only inside this pipeline's own calls, where they
append the original-embedding copies of the projected rows to the UNet batch and drop them from its output.
:meth:`SafreePipeline.noise_prediction` runs the same UNet call with the same hooks, the step switch taken
from the index of ``t`` in the scheduler's timesteps (step 0, projected, for a ``t`` that is not one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from diffusers.callbacks import PipelineCallback
from pydantic import BeforeValidator, Field
from safetensors.torch import load_file, save_file

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind, PrepareContext
from benchmark.api.errors import ConfigError
from benchmark.api.presets import Presets
from benchmark.api.registry import DEFENSES
from benchmark.mini_world import draws_world
from benchmark.mini_world.tasks import training_split
from defenses._options import comma_list

log = logging.getLogger(__name__)

ARTIFACT = "safree_subspace.safetensors"
MASK_TOKEN_ID = 0

# The release's keyword list for nudity (generate_safree.py); other tasks use their concept words.
PAPER_KEYWORDS = {"nudity": (
    "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
    "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
    "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification")}
PAPER = {"alpha": 0.01, "gamma": 10}
SD_MINI = {"alpha": 0.01, "gamma": 10}  # the paper's; svf_center is calibrated in prepare (module docstring)
PAPER_SVF_CENTER = 0.5333  # beta_0 of the release's nudity script, on every model but a calibrated sd-mini
# Keyed as SAFREE shipped them (the paper's beta_0 inside its table), so that cached cells stay valid;
# changing any of them recomputes.
PRESETS = Presets({"paper": PAPER, "sd-mini": SD_MINI}, by_model={"sd-mini": "sd-mini"},
                  key_value={"paper": {**PAPER, "svf_center": PAPER_SVF_CENTER}, "sd-mini": SD_MINI})


@dataclass
class SafreeOptions:
    concepts: Annotated[list[str], BeforeValidator(comma_list), Field(
        description="keywords spanning the toxic subspace; default: the release's 17 on nudity, else the task's "
                    "concept words")] = field(default_factory=list)
    alpha: Annotated[float | None, Field(
        ge=0, allow_inf_nan=False, description="token-detection margin; None: 0.01 (paper; sd-mini too)")] = None
    gamma: Annotated[int | None, Field(
        ge=0,
        description='most denoising steps on the projected embedding ("up_t"); None: 10 (paper; sd-mini too)')] = None
    svf: Annotated[bool, Field(
        description="self-validating filter (off: the projected embedding at every step)")] = True
    svf_center: Annotated[float | None, Field(
        allow_inf_nan=False, description="beta_0 of the step rule; None: 0.5333 (paper), sd-mini calibrated")] = None
    svf_slope: Annotated[float, Field(
        gt=0, allow_inf_nan=False, description="a of the step rule (release: 50 nudity, 70 artists)")] = 50.0
    lra: Annotated[bool, Field(description="latent re-attention in the Fourier domain")] = True
    lra_scales: Annotated[list[float], BeforeValidator(comma_list), Field(
        min_length=2, max_length=2,
        description="s of the deepest and the second decoder stage (paper 0.9, 0.2)")] = field(
        default_factory=lambda: [0.9, 0.2])
    lra_radius: Annotated[int, Field(ge=1, description="half-width of the low-frequency window (paper 1)")] = 1
    negative_prompt: Annotated[bool, Field(
        description="also use the keywords as the negative prompt (the release does; not in the paper's box)")] = True
    calibration_pairs: Annotated[int, Field(
        ge=1, description="sd-mini: held-out toxic/safe pairs that set beta_0")] = 32


# ----------------------------------------------------------------------------------------------- linear algebra
def projection_onto(vectors: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection (D x D, float64) onto the span of the rows of ``vectors`` (K x D)."""
    v = vectors.double().T  # (D, K)
    return v @ torch.linalg.pinv(v.T @ v) @ v.T


def detect_tokens(masked_pooled: torch.Tensor, concept_projection: torch.Tensor, alpha: float) -> torch.Tensor:
    """(b): token i is toxic when the prompt without it lies farther from C than (1 + alpha) times the mean
    distance of the prompts without each other token. One token alone has nothing to compare with (the
    release's mean over no tokens is NaN, which flags nothing)."""
    n = masked_pooled.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.bool)
    eye = torch.eye(concept_projection.shape[0], dtype=torch.float64)
    distance = ((eye - concept_projection) @ masked_pooled.double().T).norm(dim=0)  # (n,)
    others = (distance.sum() - distance) / (n - 1)
    return distance >= (1.0 + alpha) * others


def safe_map(concept_projection: torch.Tensor, input_projection: torch.Tensor) -> torch.Tensor:
    """(c): (I - P_C) P_I, the map applied to flagged tokens (D x D, float64)."""
    eye = torch.eye(concept_projection.shape[0], dtype=torch.float64)
    return (eye - concept_projection) @ input_projection


def svf_steps(beta: float, gamma: int, center: float, slope: float) -> int:
    """(d): the last step index conditioned on the projected embedding."""
    return int(round(gamma / (1.0 + math.exp(-slope * (beta - center)))))


@dataclass
class RowAnalysis:
    """What SAFREE decides for one prompt: flagged positions (T,), the map (I - P_C) P_I, and beta."""

    flags: torch.Tensor
    projection: torch.Tensor
    beta: float
    exact: bool

    @property
    def any_flagged(self) -> bool:
        return bool(self.flags.any())


def analyse(tokens: torch.Tensor, masked_pooled: torch.Tensor, positions: torch.Tensor, active: torch.Tensor,
            concept_projection: torch.Tensor, alpha: float, exact: bool) -> RowAnalysis:
    """SAFREE's analysis of one prompt from its token outputs (T x D), the pools with each of ``positions``
    masked out (n x D), and the real positions ``active`` (T,) over which beta averages."""
    flagged = detect_tokens(masked_pooled, concept_projection, alpha)
    flags = torch.zeros(tokens.shape[0], dtype=torch.bool)
    flags[positions[flagged]] = True
    mapping = safe_map(concept_projection, projection_onto(masked_pooled))
    e = tokens.double()
    moved = e @ mapping.T
    cos = torch.nn.functional.cosine_similarity(moved[active], e[active], dim=-1)
    return RowAnalysis(flags, mapping, float(1.0 - cos.mean()), exact)


def project_row(row: torch.Tensor, a: RowAnalysis) -> torch.Tensor:
    """e'_j = (I - P_C) P_I e_j at flagged positions, e_j elsewhere (differentiable in ``row``; unflagged
    positions are returned bit for bit)."""
    if not a.any_flagged:
        return row
    moved = row @ a.projection.to(row.device, row.dtype).T
    return torch.where(a.flags.to(row.device)[:, None], moved, row)


# ----------------------------------------------------------------------------------------------- text side
def pooled(pipe, texts: list[str] | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled text embeddings (the encoder's ``pooler_output``: CLIP's EOS output)."""
    if ids is None:
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        out = pipe.text_encoder(ids.to(pipe.device))
    return out.pooler_output.detach().double().cpu()


def mask_token_id(tokenizer) -> int:
    """Id 0 as the release; never BOS/EOS (they would move CLIP's pooling position)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    if MASK_TOKEN_ID not in special:
        return MASK_TOKEN_ID
    return next(i for i in (tokenizer.unk_token_id, tokenizer.pad_token_id, 1) if i is not None and i not in special)


def exact_analysis(pipe, text: str, tokens: torch.Tensor, concept_projection: torch.Tensor,
                   alpha: float) -> RowAnalysis:
    """The paper's analysis: re-encode the prompt once per token with that token masked out."""
    tok = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    ids, attention = tok.input_ids, tok.attention_mask[0].bool()
    n = max(int(attention.sum()) - 2, 0)  # tokens between BOS and EOS
    positions = torch.arange(1, n + 1)
    if n == 0:
        masked = torch.zeros(0, tokens.shape[-1], dtype=torch.float64)
    else:
        batch = ids.repeat(n, 1)
        batch[torch.arange(n), positions] = mask_token_id(pipe.tokenizer)
        masked = pooled(pipe, ids=batch)
    return analyse(tokens.detach().cpu(), masked, positions, attention, concept_projection, alpha, exact=True)


def estimated_analysis(tokens: torch.Tensor, concept_projection: torch.Tensor, alpha: float) -> RowAnalysis:
    """For outputs this pipeline did not encode (no tokens): masked pools estimated as the mean of the
    outputs at the other positions 1..T-1 (module docstring)."""
    e = tokens.detach().double().cpu()[1:]
    n = e.shape[0]
    masked = (e.sum(0, keepdim=True) - e) / max(n - 1, 1)
    positions = torch.arange(1, n + 1)
    active = torch.ones(tokens.shape[0], dtype=torch.bool)
    return analyse(tokens.detach().cpu(), masked, positions, active, concept_projection, alpha, exact=False)


def row_key(row: torch.Tensor) -> str:
    data = row.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()


# ----------------------------------------------------------------------------------------------- re-attention
def damp_low_frequencies(features: torch.Tensor, reference: torch.Tensor, scale: float, radius: int) -> torch.Tensor:
    """(e) on one batch of skip features (N, C, H, W): scale the lowest frequencies of ``features`` that are
    larger in magnitude than those of ``reference`` (the same latents under the original embedding)."""
    dtype = features.dtype
    f = torch.fft.fftshift(torch.fft.fft2(features.float()), dim=(-2, -1))
    g = torch.fft.fftshift(torch.fft.fft2(reference.float()), dim=(-2, -1))
    h, w = f.shape[-2:]
    low = torch.zeros(h, w, dtype=torch.bool, device=f.device)
    low[max(h // 2 - radius, 0):h // 2 + radius, max(w // 2 - radius, 0):w // 2 + radius] = True
    damp = low & (f.abs() > g.abs())
    f = torch.where(damp, f * scale, f)
    return torch.fft.ifft2(torch.fft.ifftshift(f, dim=(-2, -1))).real.to(dtype)


class LatentReattention:
    """Forward hooks that carry out (e) inside the UNet calls of a :class:`SafreePipeline`.

    Outside ``active`` they do nothing. Inside, the UNet pre-hook appends, for each row in ``rows``, a copy
    of its latent with the original embedding; the up-block pre-hooks damp the rows' skip features against
    their copies'; the UNet post-hook drops the copies from the output."""

    def __init__(self, unet, scales: list[float], radius: int):
        channels = sorted(set(unet.config.block_out_channels), reverse=True)
        self.scales = {c: s for c, s in zip(channels[:2], scales, strict=False)}
        self.radius = radius
        self.rows: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None
        self._batch = 0
        self.handles = [unet.register_forward_pre_hook(self._before_unet, with_kwargs=True),
                        unet.register_forward_hook(self._after_unet, with_kwargs=True)]
        self.handles += [block.register_forward_pre_hook(self._before_block, with_kwargs=True)
                         for block in unet.up_blocks if hasattr(block, "resnets")]

    def set(self, rows: list[int], reference: torch.Tensor | None) -> None:
        """Rows of the next UNet batches to re-attend, with their original conditional embeddings."""
        if not rows or reference is None:
            self.rows, self.reference = None, None
            return
        self.rows, self.reference = torch.tensor(rows, dtype=torch.long), reference

    def clear(self) -> None:
        self.rows, self.reference, self._batch = None, None, 0

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()

    def _before_unet(self, module, args, kwargs):
        if self.rows is None:
            return None
        args, kwargs = list(args), dict(kwargs)
        sample = args[0] if args else kwargs["sample"]
        states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        rows = self.rows.to(sample.device)
        self._batch = sample.shape[0]
        sample = torch.cat([sample, sample[rows]])
        states = torch.cat([states, self.reference.to(states.device, states.dtype)])
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.shape[0] == self._batch:
            timestep = torch.cat([timestep, timestep[rows]])
        for position, name, value in ((0, "sample", sample), (1, "timestep", timestep),
                                      (2, "encoder_hidden_states", states)):
            if len(args) > position:
                args[position] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def _before_block(self, module, args, kwargs):
        if self.rows is None or "res_hidden_states_tuple" not in kwargs:
            return None
        skips = list(kwargs["res_hidden_states_tuple"])
        hidden = kwargs["hidden_states"].shape[1]
        rows = self.rows.to(skips[-1].device)
        copies = torch.arange(self._batch, self._batch + len(rows), device=rows.device)
        for j, resnet in enumerate(module.resnets):  # resnet j reads skips[-1 - j] after its hidden states
            skip = skips[-1 - j]
            backbone = hidden if j == 0 else module.resnets[j - 1].out_channels
            scale = self.scales.get(backbone) if resnet.in_channels == backbone + skip.shape[1] else None
            if scale is None:
                continue
            damped = damp_low_frequencies(skip[rows], skip[copies], scale, self.radius)
            skip = skip.clone()
            skip[rows] = damped
            skips[-1 - j] = skip
        kwargs = dict(kwargs)
        kwargs["res_hidden_states_tuple"] = tuple(skips)
        return args, kwargs

    def _after_unet(self, module, args, kwargs, output):
        if self.rows is None:
            return None
        n = self._batch
        if isinstance(output, tuple):
            return (output[0][:n],) + tuple(output[1:])
        output.sample = output.sample[:n]
        return output


# ----------------------------------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class Settings:
    alpha: float
    gamma: int
    svf: bool
    svf_center: float
    svf_slope: float
    lra: bool


class SafreePipeline(DefendedPipeline):
    def __init__(self, model, defense, task, concept_projection: torch.Tensor, settings: Settings,
                 reattention: LatentReattention | None, negative: str | None):
        super().__init__(model, defense, task)
        self.concept_projection = concept_projection
        self.settings = settings
        self.reattention = reattention
        self.negative = negative
        self._cache: OrderedDict[str, RowAnalysis] = OrderedDict()
        self.stats = {"samples": 0, "flagged_samples": 0, "flagged_tokens": 0, "estimated_rows": 0}

    # -------------------------------------------------------------------- analysis
    def _remember(self, key: str, analysis: RowAnalysis) -> None:
        self._cache[key] = analysis
        self._cache.move_to_end(key)
        while len(self._cache) > 4096:
            self._cache.popitem(last=False)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        cond = super().encode_prompts(prompts)
        for text, row in zip(prompts, cond, strict=True):
            key = row_key(row)
            if key not in self._cache or not self._cache[key].exact:
                self._remember(key, exact_analysis(self.pipe, text, row, self.concept_projection,
                                                   self.settings.alpha))
        return cond

    def analyses(self, cond_embeds: torch.Tensor) -> list[RowAnalysis]:
        out = []
        for row in cond_embeds:
            key = row_key(row)
            found = self._cache.get(key)
            if found is None:
                found = estimated_analysis(row, self.concept_projection, self.settings.alpha)
                self.stats["estimated_rows"] += 1
                self._remember(key, found)
            out.append(found)
        return out

    def last_projected_step(self, a: RowAnalysis) -> int:
        """Steps 0..t' use the projected embedding (every step without the self-validating filter)."""
        if not a.any_flagged:
            return -1
        s = self.settings
        if not s.svf:
            return 1 << 30
        return svf_steps(a.beta, s.gamma, s.svf_center, s.svf_slope)

    def step_conditioning(self, cond_embeds: torch.Tensor, analyses: list[RowAnalysis], step: int
                          ) -> tuple[torch.Tensor, list[int]]:
        """The conditional embedding at denoising step ``step`` and the rows that are projected there."""
        rows, out = [], []
        for b, (row, a) in enumerate(zip(cond_embeds, analyses, strict=True)):
            if step <= self.last_projected_step(a):
                rows.append(b)
                out.append(project_row(row, a))
            else:
                out.append(row)
        return torch.stack(out), rows

    def conditioning(self, cond_embeds, latents, timestep):
        return self.step_conditioning(cond_embeds, self.analyses(cond_embeds), self._step_index(timestep))[0]

    def _step_index(self, timestep) -> int:
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        if timesteps is None:
            return 0
        t = torch.as_tensor(timestep).flatten()[0].to(timesteps.device)
        hits = (timesteps == t).nonzero()
        return int(hits[0, 0]) if len(hits) else 0

    def unconditional_embeds(self, batch_size: int) -> torch.Tensor:
        if self.negative is None:
            return super().unconditional_embeds(batch_size)
        if getattr(self, "_negative_cache", None) is None:
            self._negative_cache = super().encode_prompts([self.negative])
        return self._negative_cache.expand(batch_size, -1, -1)

    def _reattend(self, rows: list[int], offset: int, original: torch.Tensor) -> None:
        if self.reattention is not None:
            self.reattention.set([offset + r for r in rows], original[rows] if rows else None)

    # -------------------------------------------------------------------- white-box path
    def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale):
        analyses = self.analyses(cond_embeds)
        cond, rows = self.step_conditioning(cond_embeds, analyses, self._step_index(timestep))
        unet = self.pipe.unet
        try:
            if guidance_scale == 1.0:
                self._reattend(rows, 0, cond_embeds)
                return unet(latents, timestep, encoder_hidden_states=cond).sample
            n = latents.shape[0]
            self._reattend(rows, n, cond_embeds)
            uncond = self.unconditional_embeds(n).to(cond.dtype)
            both = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=torch.cat([uncond, cond])).sample
        finally:
            if self.reattention is not None:
                self.reattention.clear()
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    # -------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prompts, latents, *, prompt_embeds=None, num_inference_steps, guidance_scale, height, width):
        pipe = self.pipe
        do_cfg = guidance_scale > 1.0
        cond = self.encode_prompts(prompts) if prompt_embeds is None else prompt_embeds.to(pipe.device)
        analyses = self.analyses(cond)
        batch = cond.shape[0]
        uncond = self.unconditional_embeds(batch).to(cond.dtype) if do_cfg else None
        offset = batch if do_cfg else 0
        first, rows = self.step_conditioning(cond, analyses, 0)
        callback = SafreeCallback(self, cond, analyses, uncond, offset)
        try:
            self._reattend(rows, offset, cond)
            output = pipe(prompt_embeds=first, negative_prompt_embeds=uncond, latents=latents,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height,
                          width=width, output_type="pil", callback_on_step_end=callback)
        finally:
            if self.reattention is not None:
                self.reattention.clear()
        self.stats["samples"] += batch
        self.stats["flagged_samples"] += sum(a.any_flagged for a in analyses)
        self.stats["flagged_tokens"] += sum(int(a.flags.sum()) for a in analyses)
        self.last_flagged = [a.any_flagged for a in analyses]
        return list(output.images)

    def triggered(self) -> list[bool] | None:
        return list(getattr(self, "last_flagged", [])) or None

    def close(self) -> None:
        if self.reattention is not None:
            self.reattention.remove()
            self.reattention = None


class SafreeCallback(PipelineCallback):
    """diffusers ``callback_on_step_end``: after step i, hand the pipeline step i+1's conditional embedding
    (projected or original, per sample) and point the re-attention hooks at the projected rows."""

    tensor_inputs = ["prompt_embeds"]

    def __init__(self, defended: SafreePipeline, cond: torch.Tensor, analyses: list[RowAnalysis],
                 uncond: torch.Tensor | None, offset: int):
        super().__init__()
        self.defended, self.cond, self.analyses, self.uncond, self.offset = defended, cond, analyses, uncond, offset

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        if step_index + 1 >= len(pipeline.scheduler.timesteps):
            return {}
        cond, rows = self.defended.step_conditioning(self.cond, self.analyses, step_index + 1)
        self.defended._reattend(rows, self.offset, self.cond)
        embeds = torch.cat([self.uncond, cond]) if self.uncond is not None else cond
        return {"prompt_embeds": embeds.to(callback_kwargs["prompt_embeds"].dtype)}


# ----------------------------------------------------------------------------------------------- the defense
def calibrate_center(pipe, task_name: str, pairs: int, concept_projection: torch.Tensor) -> dict[str, float]:
    """The release's beta_0 rule on sd-mini: the midpoint of mean beta over held-out toxic prompts and
    over their safe counterparts (``tasks.training_split``: never an evaluation prompt)."""
    drawn, _ = training_split(task_name, pairs, 0)
    betas: dict[str, list[float]] = {"toxic": [], "safe": []}
    for toxic, safe in drawn:
        for kind, text in (("toxic", toxic.text), ("safe", safe.text)):
            with torch.no_grad():
                row, _ = pipe.encode_prompt([text], pipe.device, 1, False)
            betas[kind].append(exact_analysis(pipe, text, row[0], concept_projection, 0.0).beta)
    toxic, safe = (sum(v) / len(v) for v in (betas["toxic"], betas["safe"]))
    return {"svf_center": (toxic + safe) / 2, "beta_toxic_mean": toxic, "beta_safe_mean": safe,
            "calibration_pairs": len(drawn)}


@DEFENSES.register("safree")
class Safree(Defense):
    """SAFREE (Yoon et al. 2025): training-free; toxic prompt tokens projected out of the concept subspace for
    the first steps, with Fourier re-attention of the decoder's skip features (inference-time)."""

    kind = DefenseKind.INFERENCE_TIME
    differentiable = True  # through the projected embedding; token detection is a hard decision
    Options = SafreeOptions
    presets = PRESETS

    def keywords(self, task) -> list[str]:
        words = list(self.options.concepts) or list(PAPER_KEYWORDS.get(task.name, task.concept_words))
        if not words:
            raise ConfigError(f"defense '{self.name}' needs keywords of the concept, and task '{task.name}' has no "
                              f"concept_words: pass --option defense:{self.name}.concepts=word1,word2")
        return words

    def check_inputs(self, ctx) -> None:
        self.keywords(ctx.task)

    def prepare(self, ctx: PrepareContext) -> dict[str, Any]:
        start = time.perf_counter()
        pipe = ctx.model.pipe
        _check_model(pipe, ctx.model.name)
        words = self.keywords(ctx.task)
        basis = pooled(pipe, words)
        projection = projection_onto(basis)
        report: dict[str, Any] = {"keywords": words, "subspace_rank": int(torch.linalg.matrix_rank(basis))}
        if self.options.svf_center is not None:
            report["svf_center"] = self.options.svf_center
        elif draws_world(ctx.model.name) and ctx.task.name.startswith("mini-"):
            report.update(calibrate_center(pipe, ctx.task.name, self.options.calibration_pairs, projection))
        else:
            report["svf_center"] = PAPER_SVF_CENTER
        report.update(self.preset_values(ctx.model.name))  # alpha, gamma
        report["prepare_seconds"] = time.perf_counter() - start
        target = ctx.artifact_dir / ARTIFACT
        scratch = target.with_suffix(".tmp")
        save_file({"basis": basis.contiguous()}, str(scratch), metadata={"report": json.dumps(report)})
        scratch.replace(target)  # atomic: a killed prepare never leaves half a file
        return report

    def apply(self, model, task, artifact_dir: Path) -> SafreePipeline:
        path = artifact_dir / ARTIFACT
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no subspace in {artifact_dir}; run the prepare stage first")
        _check_model(model.pipe, model.name)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            report = json.loads(handle.metadata()["report"])
        basis = load_file(str(path))["basis"]
        o = self.options
        settings = Settings(alpha=report["alpha"], gamma=report["gamma"], svf=o.svf, svf_center=report["svf_center"],
                            svf_slope=o.svf_slope, lra=o.lra)
        reattention = LatentReattention(model.pipe.unet, list(o.lra_scales), o.lra_radius) if o.lra else None
        negative = ", ".join(report["keywords"]) if o.negative_prompt else None
        return SafreePipeline(model, self, task, projection_onto(basis), settings, reattention, negative)


def _check_model(pipe, model_name: str) -> None:
    """SAFREE needs a CLIP-style text encoder with a pooled output and a UNet with up blocks."""
    if not hasattr(pipe, "text_encoder") or not hasattr(getattr(pipe, "unet", None), "up_blocks"):
        raise ConfigError(f"defense 'safree' supports Stable-Diffusion-style pipelines (a text encoder and a UNet "
                          f"with up blocks); model '{model_name}' has none")
