"""SLD: Safe Latent Diffusion (Schramowski et al., CVPR 2023), ``sld``.

Safety guidance added to classifier-free guidance at every denoising step, with the safety concept S
(default: the task's concept words joined by ", ")::

    e_u, e_p, e_S = eps(x_t, ""), eps(x_t, prompt), eps(x_t, S)
    mu     = min(1, s_S |e_p - e_S|)  where  e_p - e_S < lambda,  else 0        (elementwise)
    gamma  = mu (e_S - e_u) + s_m nu                                           # safety direction + momentum
    nu     <- beta_m nu + (1 - beta_m) gamma                                   # updated from step 0
    eps    = e_u + s_g (e_p - e_u - [step >= warm-up] gamma)

The four presets of the paper (warm-up steps, s_S, lambda, s_m, beta_m), used exactly as listed (the
warm-up counts denoising steps, so on sd-mini's 25-step schedule it covers a larger fraction than on
the paper's 50)::

    weak    15    20  0      0    0
    medium  10  1000  0.01   0.3  0.4
    strong   7  2000  0.025  0.5  0.7
    max      0  5000  1.0    0.5  0.7

The sampling loop is the project's own (diffusers has deprecated its SLD pipeline): the pipeline's own
scheduler, the given per-image initial latents, and the same VAE decoding as ``StableDiffusionPipeline``,
so with safety guidance inactive it reproduces the undefended images. Safety guidance is also applied at
guidance scale 1 (eps = e_p - gamma): a defense that switched itself off there would be bypassed by
sampling without guidance.

White-box attacks (:meth:`SldPipeline.noise_prediction`) get the stateless one-step prediction: the
momentum nu is sampling state that a single step does not have, so it is taken as zero (its value at the
first step); the warm-up is decided by the step index of ``t`` in the scheduler's current timesteps, and
counts as over for a ``t`` that is not one of them. This equals the sampler exactly at the first step and
for every step of a momentum-free preset (weak); attacks that unroll the sampler can carry the momentum
themselves with :meth:`SldPipeline.guided_step`.

The preset's name is checked when the defense is built; a task without concept words needs the option
``concept`` (checked before any work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from benchmark.api.defense import DefendedPipeline
from benchmark.api.registry import DEFENSES
from defenses._concept_defense import ConceptTextDefense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SldPreset:
    warmup_steps: int
    guidance_scale: float  # s_S
    threshold: float  # lambda
    momentum_scale: float  # s_m
    momentum_beta: float  # beta_m


PRESETS = {
    "weak": SldPreset(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SldPreset(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SldPreset(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SldPreset(0, 5000.0, 1.0, 0.5, 0.7),
}


@dataclass
class SldOptions:
    preset: Annotated[Literal["weak", "medium", "strong", "max"], Field(
        description="the paper's hyperparameter presets")] = "medium"
    concept: Annotated[str | None, Field(
        description='the safety concept; default: the task\'s concept words joined by ", "')] = None


class SldPipeline(DefendedPipeline):
    def __init__(self, model, defense, task, preset: SldPreset, concept: str):
        super().__init__(model, defense, task)
        self.preset = preset
        self.concept = concept
        self._safety_cache: torch.Tensor | None = None

    def safety_embeds(self, batch_size: int) -> torch.Tensor:
        if self._safety_cache is None:
            self._safety_cache = self.encode_prompts([self.concept])
        return self._safety_cache.expand(batch_size, -1, -1)

    # -------------------------------------------------------------------------------------- one step
    def guided_step(self, latents: torch.Tensor, timestep, cond_embeds: torch.Tensor, *, guidance_scale: float,
                    step_index: int | None, momentum: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """SLD's guided noise prediction at one step and the updated momentum. ``step_index`` None means
        "after the warm-up"; ``momentum`` None means zero."""
        n = latents.shape[0]
        cond = self.conditioning(cond_embeds, latents, timestep)
        embeds = torch.cat([self.unconditional_embeds(n).to(cond.dtype), cond, self.safety_embeds(n).to(cond.dtype)])
        eps = self.pipe.unet(torch.cat([latents] * 3), timestep, encoder_hidden_states=embeds).sample
        e_u, e_p, e_s = eps.chunk(3)
        p = self.preset
        difference = e_p - e_s
        mu = torch.clamp(difference.abs() * p.guidance_scale, max=1.0)
        mu = torch.where(difference < p.threshold, mu, torch.zeros_like(mu))
        gamma = mu * (e_s - e_u)
        if momentum is not None:
            gamma = gamma + p.momentum_scale * momentum
            new_momentum = p.momentum_beta * momentum + (1 - p.momentum_beta) * gamma
        else:
            new_momentum = (1 - p.momentum_beta) * gamma
        direction = e_p - e_u
        if step_index is None or step_index >= p.warmup_steps:
            direction = direction - gamma
        return e_u + guidance_scale * direction, new_momentum

    def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale: float) -> torch.Tensor:
        """Stateless: zero momentum; warm-up from the step index of ``timestep`` (module docstring)."""
        return self.guided_step(latents, timestep, cond_embeds, guidance_scale=guidance_scale,
                                step_index=self._step_index(timestep), momentum=None)[0]

    def _step_index(self, timestep) -> int | None:
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        if timesteps is None:
            return None
        t = torch.as_tensor(timestep).flatten()[0].to(timesteps.device)
        hits = (timesteps == t).nonzero()
        return int(hits[0, 0]) if len(hits) else None

    # -------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def denoise(self, prompts: list[str] | None, latents: torch.Tensor, *, prompt_embeds: torch.Tensor | None,
                num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
        """The full SLD sampling loop; returns the final latents."""
        pipe = self.pipe
        cond = prompt_embeds if prompt_embeds is not None else self.encode_prompts(prompts)
        cond = cond.to(pipe.device, pipe.unet.dtype)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=pipe.device)
        latents = latents.to(pipe.device, pipe.unet.dtype) * scheduler.init_noise_sigma
        step_kwargs = pipe.prepare_extra_step_kwargs(None, 0.0)  # what the pipeline passes (eta 0)
        momentum = None
        for index, t in enumerate(scheduler.timesteps):
            x = scheduler.scale_model_input(latents, t)
            eps, momentum = self.guided_step(x, t, cond, guidance_scale=guidance_scale, step_index=index,
                                             momentum=momentum)
            latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    @torch.no_grad()
    def generate(self, prompts, latents, *, prompt_embeds=None, num_inference_steps: int, guidance_scale: float,
                 height: int, width: int):
        pipe = self.pipe
        expected = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        if tuple(latents.shape[-2:]) != expected:
            raise ValueError(f"latents of spatial size {tuple(latents.shape[-2:])} do not match {height}x{width}")
        final = self.denoise(prompts, latents, prompt_embeds=prompt_embeds, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale)
        image = pipe.vae.decode(final / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])


@DEFENSES.register("sld")
class Sld(ConceptTextDefense):
    """SLD (Schramowski et al. 2023): safety guidance away from the concept; presets weak/medium/strong/max."""

    Options = SldOptions
    concept_option = "concept"

    def apply(self, model, task, artifact_dir: Path) -> SldPipeline:
        return SldPipeline(model, self, task, PRESETS[self.options.preset], self.concept_text(task))
