"""The differentiable path that white-box attacks use (``DefendedPipeline.noise_prediction``) must be the
sampler the generate stage uses: one denoising step through it equals one step of ``generate``.
Random weights: plumbing and consistency, not quality."""

import pytest
import torch

from benchmark.api.defense import DefendedPipeline
from benchmark.harness.stages.generate import initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, assert_close_fp
from defenses.negative_prompt import NegativePrompt


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def one_step_through_pipeline(defended, prompts, latents, guidance):
    kwargs = dict(defended.call_kwargs(len(prompts)))
    out = defended.pipe(prompt=prompts, latents=latents.clone(), num_inference_steps=1, guidance_scale=guidance,
                        height=32, width=32, output_type="latent", **kwargs)
    return out.images


def one_step_through_noise_prediction(defended, prompts, latents, guidance):
    pipe = defended.pipe
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    cond = defended.encode_prompts(prompts)
    x = pipe.scheduler.scale_model_input(latents * pipe.scheduler.init_noise_sigma, t)
    with torch.no_grad():
        eps = defended.noise_prediction(x, t, cond, guidance_scale=guidance)
    return pipe.scheduler.step(eps, t, latents * pipe.scheduler.init_noise_sigma).prev_sample


@pytest.mark.numeric
@pytest.mark.parametrize("make", [lambda m: DefendedPipeline(m, None, TOY),
                                  lambda m: NegativePrompt().apply(m, TOY, None)], ids=["none", "negative-prompt"])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_noise_prediction_is_the_sampler_step(model, make, guidance):
    defended = make(model)
    prompts = ["a church", "a nude person"]
    latents = initial_latents([3, 4], model.pipe, 32, 32)
    a = one_step_through_pipeline(defended, prompts, latents, guidance)
    b = one_step_through_noise_prediction(defended, prompts, latents, guidance)
    # two code paths (the pipeline batches CFG its own way): equal up to float32 rounding through tiny-random's
    # UNet, whose longest reductions are 3x3 convolutions over 64 channels (576 terms)
    assert_close_fp(a, b, terms=576, ulps=8)


def test_noise_prediction_has_gradients_wrt_the_embedding(model):
    defended = NegativePrompt().apply(model, TOY, None)
    cond = defended.encode_prompts(["a church"]).clone().requires_grad_(True)
    x = torch.randn(1, 4, 4, 4)
    eps = defended.noise_prediction(x, torch.tensor(500), cond, guidance_scale=5.0)
    eps.pow(2).mean().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
