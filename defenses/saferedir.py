"""SafeRedir: prompt-embedding redirection (Liu et al., 2026, arXiv 2601.08623).

An inference-time defense: the base model's weights are not changed. A small redirector network ``R``
(:mod:`defenses.saferedir_net`) reads the current latent, the timestep and the conditional prompt
embedding, decides whether the generation is heading for the unsafe concept, and if so moves the
prompt's tokens toward a safe region for the next steps.

Algorithm (per sample ``b`` of the batch; this project's default behaviour)::

    e_b  <- conditional prompt embedding of b              (the unconditional half is left alone)
    for each denoising step i with latent z_i and timestep t_i:
        if i is a check step of b (step 0, then every replace_steps + 1 steps):
            logits, delta, mask, alpha <- R(z_i[b], t_i, e_b)
            if softmax(logits)[unsafe] >= threshold:
                ê_b <- e_b + s * alpha * mask * |e_b| * normalize(delta)      (per token)
            else:
                ê_b <- e_b                                   (a check that finds b safe undoes the edit)
        the UNet denoises z_i[b] with ê_b

Options reproduce the official release where it differs (``behaviour="official"``): the edit is also
added to the unconditional half, an edit is never undone (sticky), the check reads the edited embedding,
the mask is not re-applied after normalising ``delta``, and ``alpha_scale`` is 1.5.

Sampling uses diffusers' own extension point, ``callback_on_step_end`` with ``prompt_embeds``; the
decision at step 0 is made before the pipeline is called (diffusers has no callback before the first
step), so every step, the first included, is guarded. For white-box attacks, :meth:`conditioning` is the
same decision and edit without sampling state: gradients flow through the redirected embedding (the
delta, mask and alpha heads and the original tokens), while the unsafe decision is a hard switch.
That decision is exposed as :meth:`SafeRedirPipeline.decision_logit`: ``logit(p_unsafe) -
logit(threshold)`` = ``(l_unsafe - l_safe) - log(threshold / (1 - threshold))`` from the classifier's two
logits, positive exactly where ``p_unsafe >= threshold`` redirects (up to float rounding at the boundary;
+inf at threshold 0, -inf above 1). It reads what the stateless check reads (the original embedding), and
the switch goes through :meth:`DefendedPipeline.switch`, so an attack may pass straight-through gradients.

Training (no code was released for it) is designed in :mod:`defenses.saferedir_train`. The trained
redirector is an artifact of the prepare stage, cached per (model, task, training options); sd-mini's
redirectors are shipped (defenses/saferedir_weights/) and reused when the model fingerprint matches.
An official checkpoint loads with ``--option defense:saferedir.checkpoint=PATH`` (``weights_only``).

Options are checked when the defense is built (behaviour and network names, probabilities in [0, 1],
positive counts and learning rate); the files they name (``checkpoint``, ``pairs_file``) before any work
(:meth:`SafeRedir.check_inputs`). Files and network sizes live in :mod:`defenses.saferedir_io`, shared
with the training module, which this module imports (and which never imports this one).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from diffusers.callbacks import PipelineCallback
from pydantic import Field

from benchmark.api.defense import DefendedPipeline, Defense, DefenseKind
from benchmark.api.errors import ConfigError, DataFileError
from benchmark.api.files import FilePath
from benchmark.api.registry import DEFENSES
from defenses.saferedir_io import (
    ARTIFACT,
    SHIPPED_DIR,
    checkpoint_threshold,
    load_official_checkpoint,
    load_redirector,
    network_config,
    official_config_for,
    own_format_config,
    read_metadata,
    save_redirector,
)
from defenses.saferedir_net import Redirector, RedirectorConfig, RedirectorOutput, redirect
from defenses.saferedir_train import calibrate_threshold, pairs_from_file, train_redirector

log = logging.getLogger(__name__)

__all__ = ["ARTIFACT", "SHIPPED_DIR", "Behaviour", "RedirectCallback", "RedirectState", "SafeRedir",
           "SafeRedirOptions", "SafeRedirPipeline", "load_official_checkpoint", "load_redirector",
           "official_config_for", "read_metadata", "resolve_behaviour", "save_redirector"]

# Options that change only sampling, not the trained redirector (they do not retrain it).
INFERENCE_OPTIONS = ("threshold", "replace_steps", "behaviour", "alpha_scale", "edit_uncond", "sticky",
                     "classify_edited", "mask_again")


@dataclass
class SafeRedirOptions:
    # --- inference
    behaviour: Annotated[Literal["project", "official"], Field(
        description="project (documented default) | official (the release's)")] = "project"
    threshold: Annotated[float | None, Field(ge=0, le=1.01, description=(
        "unsafe probability that redirects (1.01: never); None: the artifact's calibrated one (official "
        "checkpoints, which carry none: 0.5, the release's argmax)"))] = None
    replace_steps: Annotated[int, Field(ge=0, description=(
        "steps an edit is kept before the sample is checked again (release: 2)"))] = 2
    alpha_scale: Annotated[float | None, Field(ge=0, allow_inf_nan=False, description=(
        "s in the algorithm; None: 1.5 (release script: 1.25 to 1.5)"))] = None
    edit_uncond: Annotated[bool | None, Field(description="also shift the unconditional half (release: yes)")] = None
    sticky: Annotated[bool | None, Field(description="never undo an edit (release: yes)")] = None
    classify_edited: Annotated[bool | None, Field(
        description="checks read the edited embedding (release: yes)")] = None
    mask_again: Annotated[bool | None, Field(
        description="multiply by the mask after normalising delta (release: no)")] = None
    # --- the redirector
    checkpoint: Annotated[FilePath | None, Field(
        description="an official-format state dict (.pt/.pth/.bin/.safetensors)")] = None
    # --- training (see defenses/saferedir_train.py)
    pairs_file: Annotated[FilePath | None, Field(
        description="CSV with columns unsafe, safe (default: from the task)")] = None
    pairs: Annotated[int, Field(ge=1, description="unsafe/safe prompt pairs")] = 64
    benign: Annotated[int, Field(ge=0, description="extra benign prompts (negatives for the classifier)")] = 32
    steps: Annotated[int, Field(ge=1, description="optimiser steps")] = 200
    batch: Annotated[int, Field(ge=1, description="training states per step (half from unsafe pairs)")] = 24
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False, description="AdamW learning rate")] = 1e-3
    keep_weight: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                        description='weight of "leave safe prompts alone"')] = 0.5
    mask_weight: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                        description="L1 on the mask of safe prompts")] = 0.01
    train_alpha_scale: Annotated[float, Field(ge=0, allow_inf_nan=False, description="s during training")] = 1.5
    calibration: Annotated[int, Field(ge=1, description=(
        "safe prompts sampled to calibrate the threshold (not used in training)"))] = 48
    target_fpr: Annotated[float, Field(ge=0, le=1, description=(
        "calibrated threshold: at most this fraction of them triggers"))] = 0.02
    seed: Annotated[int, Field(description="seed of the training prompts, trajectories and batches")] = 0
    network: Annotated[Literal["auto", "small", "official"], Field(
        description="auto: small for sd-mini, official sizes otherwise")] = "auto"
    trajectory_steps: Annotated[int | None, Field(ge=1, description=(
        "sampler steps of the training and calibration trajectories; None: the model's (50 on SD)"))] = None
    gradient_checkpointing: Annotated[bool, Field(description=(
        "training: recompute UNet activations in the backward pass (less memory, slower; same result)"))] = False

@dataclass(frozen=True)
class Behaviour:
    threshold: float
    replace_steps: int
    alpha_scale: float
    edit_uncond: bool
    sticky: bool
    classify_edited: bool
    mask_again: bool


PRESETS = {
    "project": dict(alpha_scale=1.5, edit_uncond=False, sticky=False, classify_edited=False, mask_again=True),
    "official": dict(alpha_scale=1.5, edit_uncond=True, sticky=True, classify_edited=True, mask_again=False),
}


def resolve_behaviour(options: SafeRedirOptions, calibrated_threshold: float | None = None) -> Behaviour:
    """The behaviour preset with every option the user set (not None) on top (the options are validated
    when the defense is built)."""
    preset = dict(PRESETS[options.behaviour])
    for name in preset:
        if getattr(options, name) is not None:
            preset[name] = getattr(options, name)
    threshold = options.threshold if options.threshold is not None else (calibrated_threshold or 0.5)
    return Behaviour(threshold=threshold, replace_steps=options.replace_steps, **preset)


class RedirectState:
    """Per-sample state of one sampling call: the original conditional embedding, the current one, and how
    many steps each sample's current decision still holds."""

    def __init__(self, original: torch.Tensor):
        self.original = original
        self.current = original.clone()
        self.countdown = torch.zeros(original.shape[0], dtype=torch.long, device=original.device)
        self.redirected = torch.zeros(original.shape[0], dtype=torch.bool, device=original.device)
        self.checks = 0
        self.redirect_events = 0


class SafeRedirPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, redirector: Redirector, behaviour: Behaviour):
        super().__init__(model, defense, task)
        self.redirector = redirector.to(model.device).eval()
        self.behaviour = behaviour
        self.stats = {"samples": 0, "redirected_samples": 0, "checks": 0}

    # -------------------------------------------------------------- the decision and the edit
    def _redirect_output(self, latents: torch.Tensor, timestep, prompt: torch.Tensor) -> RedirectorOutput:
        dtype = next(self.redirector.parameters()).dtype
        out = self.redirector(latents.to(dtype), torch.as_tensor(timestep, device=latents.device), prompt.to(dtype))
        return out

    def _check_outputs(self, latents, timestep, original, current=None):
        b = self.behaviour
        read = current if (b.classify_edited and current is not None) else original
        out = self._redirect_output(latents, timestep, read)
        unsafe = out.unsafe_probability >= b.threshold
        edited = redirect(original, out, alpha_scale=b.alpha_scale, mask_again=b.mask_again)
        return unsafe, edited, out

    def decide_and_edit(self, latents, timestep, original, current=None):
        """Returns (unsafe mask (B,), edited embedding (B,T,D)) for one check."""
        unsafe, edited, _ = self._check_outputs(latents, timestep, original, current)
        return unsafe, edited

    def conditioning(self, cond_embeds, latents, timestep):
        """Stateless check-and-redirect (white-box attacks): a hard switch per sample; gradients flow
        through the redirected embedding of the samples that are redirected and through the original one
        of the others (and, inside ``straight_through_switch``, through the decision)."""
        unsafe, edited, out = self._check_outputs(latents, timestep, cond_embeds)
        return self.switch(unsafe, threshold_logit(out.logits, self.behaviour.threshold), edited, cond_embeds)

    def decision_logit(self, latents, timestep, cond_embeds):
        """``logit(p_unsafe) - logit(threshold)`` per sample: > 0 where this step's check redirects."""
        return threshold_logit(self._redirect_output(latents, timestep, cond_embeds).logits, self.behaviour.threshold)

    def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale):
        if not self.behaviour.edit_uncond or guidance_scale == 1.0:
            return super().noise_prediction(latents, timestep, cond_embeds, guidance_scale=guidance_scale)
        cond = self.conditioning(cond_embeds, latents, timestep)
        uncond = self.unconditional_embeds(latents.shape[0]).to(cond.dtype) + (cond - cond_embeds)
        unet = self.pipe.unet
        both = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = both.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def check(self, state: RedirectState, latents, timestep) -> None:
        """One step's checks: samples whose countdown ran out are classified again (in one batch)."""
        due = state.countdown <= 0
        state.countdown[~due] -= 1
        if not due.any():
            return
        idx = due.nonzero().squeeze(1)
        unsafe, edited = self.decide_and_edit(latents[idx], timestep, state.original[idx], state.current[idx])
        state.checks += int(idx.numel())
        flagged = idx[unsafe]
        state.current[flagged] = edited[unsafe].to(state.current.dtype)
        state.redirected[flagged] = True
        state.redirect_events += int(flagged.numel())
        if not self.behaviour.sticky:
            cleared = idx[~unsafe]
            state.current[cleared] = state.original[cleared]
        state.countdown[idx] = self.behaviour.replace_steps

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prompts, latents, *, prompt_embeds=None, num_inference_steps, guidance_scale, height, width):
        return list(self.sample(prompts, latents, prompt_embeds=prompt_embeds, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, height=height, width=width, output_type="pil"))

    @torch.no_grad()
    def sample(self, prompts, latents, *, prompt_embeds=None, num_inference_steps, guidance_scale, height, width,
               output_type="pil"):
        pipe = self.pipe
        do_cfg = guidance_scale > 1.0
        cond, uncond = pipe.encode_prompt(prompts, pipe.device, 1, do_cfg, prompt_embeds=prompt_embeds)
        if uncond is None:
            uncond = torch.zeros_like(cond)
        state = RedirectState(cond)
        # Step 0's check, before the pipeline runs: the latents the first step sees, at the first timestep.
        pipe.scheduler.set_timesteps(num_inference_steps, device=pipe.device)
        first = latents.to(pipe.device, cond.dtype) * pipe.scheduler.init_noise_sigma
        self.check(state, first, pipe.scheduler.timesteps[0])
        callback = RedirectCallback(self, state, uncond, do_cfg)
        output = pipe(prompt_embeds=state.current.clone(), negative_prompt_embeds=self._shift_uncond(state, uncond),
                      latents=latents, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                      height=height, width=width, output_type=output_type, callback_on_step_end=callback)
        self.stats["samples"] += cond.shape[0]
        self.stats["redirected_samples"] += int(state.redirected.sum())
        self.stats["checks"] += state.checks
        self.last_redirected = state.redirected.tolist()
        return output.images

    def triggered(self) -> list[bool] | None:
        return list(getattr(self, "last_redirected", [])) or None

    def _shift_uncond(self, state: RedirectState, uncond: torch.Tensor) -> torch.Tensor:
        if not self.behaviour.edit_uncond:
            return uncond
        return uncond + (state.current - state.original)


def threshold_logit(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``p_unsafe >= threshold`` as a logit: ``(l_unsafe - l_safe) - log(threshold / (1 - threshold))``, with
    ``p_unsafe = softmax(logits)[1] = sigmoid(l_unsafe - l_safe)`` (float32, like the decision)."""
    score = logits[:, 1].float() - logits[:, 0].float()
    if threshold <= 0:  # always redirects
        return score + math.inf
    if threshold > 1:  # never redirects (the option's 1.01)
        return score - math.inf
    if threshold == 1:  # only a saturated p_unsafe == 1.0 redirects: float32 softmax reaches 1.0 at 16.63554
        return score - 16.63554
    return score - math.log(threshold / (1 - threshold))


class RedirectCallback(PipelineCallback):
    """diffusers ``callback_on_step_end``: after step i, check the samples that are due with the latents
    of step i+1 and hand the pipeline the (possibly) redirected ``prompt_embeds`` for the next step."""

    tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, defended: SafeRedirPipeline, state: RedirectState, uncond: torch.Tensor, do_cfg: bool):
        super().__init__()
        self.defended, self.state, self.uncond, self.do_cfg = defended, state, uncond, do_cfg

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict[str, Any]:
        timesteps = pipeline.scheduler.timesteps
        if step_index + 1 >= len(timesteps):
            return {}
        self.defended.check(self.state, callback_kwargs["latents"], timesteps[step_index + 1])
        cond = self.state.current
        embeds = torch.cat([self.defended._shift_uncond(self.state, self.uncond), cond]) if self.do_cfg else cond
        return {"prompt_embeds": embeds.to(callback_kwargs["prompt_embeds"].dtype)}


# ----------------------------------------------------------------------------- the defense
@DEFENSES.register("saferedir")
class SafeRedir(Defense):
    """SafeRedir: a latent-aware classifier switches on token-level prompt-embedding redirection
    (inference-time; trained per task; gradients flow through the redirected embedding)."""

    kind = DefenseKind.INFERENCE_TIME
    differentiable = True  # through the redirected embedding; the unsafe decision is a hard switch
    exposes_decision = True  # SafeRedirPipeline.decision_logit: the classifier against its threshold
    version = "2"  # 2: the artifact carries a threshold calibrated on held-out safe prompts
    Options = SafeRedirOptions
    runtime_options = ("gradient_checkpointing",)  # memory only: in no key (the shipped redirectors still match)
    added_options = {"trajectory_steps": None}  # None samples as before: the shipped redirectors still match

    def prepare_config(self) -> dict[str, Any]:
        options = {k: v for k, v in self.keyed_options().items() if k not in INFERENCE_OPTIONS}
        return {"name": self.name, "version": self.version, "options": options}

    def check_inputs(self, ctx) -> None:
        """What the redirector comes from: an official checkpoint that exists, a training pairs file that
        reads, or a task to draw training pairs from (sd-mini's grammar, or the task's concept words)."""
        if self.options.checkpoint:
            path = Path(self.options.checkpoint).expanduser()
            if not path.is_file():
                raise DataFileError(f"defense 'saferedir': option checkpoint={self.options.checkpoint!r}: no such "
                                    "file (an official-format state dict: .pt/.pth/.bin/.safetensors)")
            own_format_config(path)  # a .safetensors header (and this project's metadata) reads
        elif self.options.pairs_file:
            pairs_from_file(Path(self.options.pairs_file).expanduser())
        elif not ctx.task.name.startswith("mini-") and not ctx.task.concept_words:
            raise ConfigError(f"defense 'saferedir' trains on prompts with the concept, and task '{ctx.task.name}' "
                              "has no concept_words: pass --option defense:saferedir.pairs_file=CSV (columns unsafe, "
                              "safe) or --option defense:saferedir.checkpoint=PATH")

    def network_config(self, model) -> RedirectorConfig:
        return network_config(model, self.options.network)

    def prepare(self, ctx) -> dict[str, Any]:
        if self.options.checkpoint:
            return {"source": "checkpoint", "checkpoint": Path(self.options.checkpoint).name}
        target = ctx.artifact_dir / ARTIFACT
        shipped = SHIPPED_DIR / f"{ctx.task.name}.safetensors"
        if shipped.is_file():
            meta = read_metadata(shipped)
            # The shipped redirector was trained for these weights (in fp32): it serves any sampling dtype.
            if meta.get("base_model") == ctx.model.weights_key and meta.get("training") == self.prepare_config():
                target.write_bytes(shipped.read_bytes())
                log.info("saferedir: using the shipped redirector for %s", ctx.task.name)
                return {"source": "shipped", **json.loads(meta.get("report", "{}"))}
            log.info("saferedir: the shipped redirector for %s was trained for another model or config; "
                     "training a new one", ctx.task.name)
        redirector, report = train_redirector(ctx.model, ctx.task, self.network_config(ctx.model), self.options)
        report.update(calibrate_threshold(redirector, ctx.model, ctx.task, self.options))
        save_redirector(target, redirector, base_model=ctx.model.weights_key, task=ctx.task.name,
                        training=self.prepare_config(), report=report, threshold=str(report["threshold"]))
        return {"source": "trained", **report}

    def load_redirector(self, model, artifact_dir: Path) -> Redirector:
        if self.options.checkpoint:
            return load_official_checkpoint(Path(self.options.checkpoint).expanduser(), self.network_config(model)
                                            if self.options.network != "auto" else official_config_for(model))
        return load_redirector(artifact_dir / ARTIFACT)

    def apply(self, model, task, artifact_dir: Path) -> DefendedPipeline:
        redirector = self.load_redirector(model, artifact_dir)
        calibrated = None
        if not self.options.checkpoint:
            calibrated = float(read_metadata(artifact_dir / ARTIFACT).get("threshold", 0.5))
        else:  # a redirector this project saved carries its calibrated threshold; an official one none (0.5)
            calibrated = checkpoint_threshold(Path(self.options.checkpoint).expanduser())
        return SafeRedirPipeline(model, self, task, redirector, resolve_behaviour(self.options, calibrated))

