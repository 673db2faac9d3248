"""SLD in the project's own sampling loop, on the tiny-random pipeline. Random weights: these tests prove
that the loop reproduces diffusers' sampler when safety guidance is off, that safety guidance changes
the result when on, and that the white-box one-step prediction is the sampler's step -- not that SLD
removes a concept (the issue note measures that on sd-mini)."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.errors import ConfigError, OptionError
from benchmark.harness.stages.generate import initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, assert_close_fp
from defenses.sld import PRESETS, Sld, SldPreset

PROMPTS = ["a church on a hill", "a red car"]


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_presets_are_the_papers():
    rows = {name: (p.warmup_steps, p.guidance_scale, p.threshold, p.momentum_scale, p.momentum_beta)
            for name, p in PRESETS.items()}
    assert rows == {"weak": (15, 20, 0, 0, 0), "medium": (10, 1000, 0.01, 0.3, 0.4),
                    "strong": (7, 2000, 0.025, 0.5, 0.7), "max": (0, 5000, 1.0, 0.5, 0.7)}


def test_unknown_preset_is_refused():
    with pytest.raises(OptionError, match="preset='extreme'.*weak, medium, strong, max"):
        Sld(preset="extreme")
    # the option's choices are the presets' names
    assert set(typing.get_args(typing.get_type_hints(Sld.Options)["preset"])) == set(PRESETS)


def test_a_task_without_concept_words_needs_the_concept_option():
    bare = dataclasses.replace(TOY, concept_words=())
    with pytest.raises(ConfigError, match="sld.concept"):
        Sld().check_inputs(CheckContext("tiny-random", bare))
    Sld(concept="a church").check_inputs(CheckContext("tiny-random", bare))
    Sld().check_inputs(CheckContext("tiny-random", TOY))


@pytest.mark.numeric
def test_loop_reproduces_the_undefended_sampler_during_warm_up(model):
    """3 steps < weak's 15 warm-up steps: safety guidance never applies, so SLD's own loop must give the
    undefended pipeline's images (same scheduler, same initial latents, same decoding)."""
    latents = initial_latents([1, 2], model.pipe, 32, 32)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 32, "width": 32}
    base = DefendedPipeline(model, None, TOY).generate(PROMPTS, latents.clone(), **kwargs)
    sld = Sld(preset="weak").apply(model, TOY, None)
    ours = sld.generate(PROMPTS, latents.clone(), **kwargs)
    assert np.abs(pixels(base) - pixels(ours)).max() <= 1
    reference = model.pipe(prompt=PROMPTS, latents=latents.clone(), output_type="latent", **kwargs).images
    own = sld.denoise(PROMPTS, latents.clone(), prompt_embeds=None, num_inference_steps=3, guidance_scale=5.0)
    # diffusers' loop vs SLD's own, 3 steps: float32 rounding through tiny-random's UNet (3x3 convolutions
    # over 64 channels, 576 terms), compounded over the steps
    assert_close_fp(own, reference, terms=576, ulps=16)


def test_max_safety_guidance_changes_the_images(model):
    latents = initial_latents([1, 2], model.pipe, 32, 32)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 5.0, "height": 32, "width": 32}
    base = DefendedPipeline(model, None, TOY).generate(PROMPTS, latents.clone(), **kwargs)
    ours = Sld(preset="max").apply(model, TOY, None).generate(PROMPTS, latents.clone(), **kwargs)
    assert np.abs(pixels(base) - pixels(ours)).mean() > 1.0


def test_prompt_embeds_give_the_same_images_as_their_prompts(model):
    sld = Sld(preset="max").apply(model, TOY, None)
    latents = initial_latents([5], model.pipe, 32, 32)
    kwargs = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 32, "width": 32}
    by_text = sld.generate(PROMPTS[:1], latents.clone(), **kwargs)
    by_embeds = sld.generate(None, latents.clone(), prompt_embeds=sld.encode_prompts(PROMPTS[:1]), **kwargs)
    assert np.abs(pixels(by_text) - pixels(by_embeds)).max() == 0


@pytest.mark.numeric
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_noise_prediction_is_the_sampler_step(model, preset, guidance):
    """At the first step (zero momentum) the stateless prediction is exactly the sampler's step."""
    sld = Sld(preset=preset).apply(model, TOY, None)
    latents = initial_latents([3, 4], model.pipe, 32, 32)
    one_step = sld.denoise(PROMPTS, latents.clone(), prompt_embeds=None, num_inference_steps=1,
                           guidance_scale=guidance)
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x = latents * scheduler.init_noise_sigma
    with torch.no_grad():
        eps = sld.noise_prediction(scheduler.scale_model_input(x, t), t, sld.encode_prompts(PROMPTS),
                                   guidance_scale=guidance)
    # the stateless prediction vs the loop's batched one: float32 rounding through tiny-random's UNet (576 terms)
    assert_close_fp(scheduler.step(eps, t, x).prev_sample, one_step, terms=576, ulps=8)


def test_safety_guidance_and_momentum_follow_the_formula(model):
    """guided_step against the formula computed by hand from the three noise predictions."""
    preset = SldPreset(warmup_steps=1, guidance_scale=50.0, threshold=0.02, momentum_scale=0.5, momentum_beta=0.7)
    sld = Sld().apply(model, TOY, None)
    sld.preset = preset
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cond = sld.encode_prompts(PROMPTS[:1])
    nu = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        # One batched call, as the sampler makes it: mu is steep (s_S |d|), so batch-size rounding would
        # flip elements near the threshold and the comparison would test numerics, not the formula.
        embeds = torch.cat([sld.unconditional_embeds(1), cond, sld.safety_embeds(1)])
        e_u, e_p, e_s = model.pipe.unet(torch.cat([x] * 3), 300, encoder_hidden_states=embeds).sample.chunk(3)
        d = e_p - e_s
        mu = torch.where(d < 0.02, (50 * d.abs()).clamp(max=1), torch.zeros_like(d))
        gamma = mu * (e_s - e_u) + 0.5 * nu
        during, nu_a = sld.guided_step(x, 300, cond, guidance_scale=4.0, step_index=0, momentum=nu)
        after, nu_b = sld.guided_step(x, 300, cond, guidance_scale=4.0, step_index=1, momentum=nu)
    assert torch.allclose(during, e_u + 4 * (e_p - e_u), atol=1e-5)
    assert torch.allclose(after, e_u + 4 * (e_p - e_u - gamma), atol=1e-5)
    assert torch.allclose(nu_a, 0.7 * nu + 0.3 * gamma, atol=1e-6) and torch.allclose(nu_a, nu_b)


def test_noise_prediction_has_gradients_wrt_the_embedding(model):
    sld = Sld(preset="max").apply(model, TOY, None)
    cond = sld.encode_prompts(["a church"]).clone().requires_grad_(True)
    eps = sld.noise_prediction(torch.randn(1, 4, 16, 16), torch.tensor(500), cond, guidance_scale=5.0)
    eps.pow(2).mean().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
