"""Seeds: an image depends on its (prompt, image index) seed only, not on its batch. Random weights: this
checks plumbing and determinism, not image quality."""

import numpy as np
import pytest
import torch

from benchmark.models.tiny_random import TinyRandomModel
from benchmark.stages.generate import image_seed, initial_latents
from benchmark.tasks import TOY
from defenses.base import DefendedPipeline
from defenses.negative_prompt import NegativePrompt


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def _generate(defended, prompts, seeds):
    latents = initial_latents(seeds, defended.pipe, 32, 32)
    images = defended.generate(prompts, latents, num_inference_steps=3, guidance_scale=5.0, height=32, width=32)
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_image_does_not_depend_on_its_batch(model):
    defended = DefendedPipeline(model, None, TOY)
    prompts = ["a church", "a red car", "a dog", "a cat"]
    seeds = [11, 12, 13, 14]
    batched = _generate(defended, prompts, seeds)
    singles = [_generate(defended, [p], [s])[0] for p, s in zip(prompts, seeds, strict=True)]
    pairs = _generate(defended, prompts[2:], seeds[2:])
    for a, b in zip(batched, singles, strict=True):
        assert np.abs(a - b).max() <= 1  # same up to one 8-bit level of float rounding
    for a, b in zip(batched[2:], pairs, strict=True):
        assert np.abs(a - b).max() <= 1
    # Different seeds do give different images: the check above is not vacuous.
    assert np.abs(batched[0] - _generate(defended, prompts[:1], [99])[0]).max() > 10


def test_seed_derivation():
    assert image_seed(1234, 0, "p", 0) == 1234 and image_seed(1234, 0, "p", 2) == 1236
    assert image_seed(None, 0, "p", 0) == image_seed(None, 0, "p", 0)
    assert image_seed(None, 0, "p", 0) != image_seed(None, 0, "q", 0)
    assert image_seed(None, 0, "p", 0) != image_seed(None, 1, "p", 0)


def test_negative_prompt_changes_the_image(model):
    plain = DefendedPipeline(model, None, TOY)
    negative = NegativePrompt().apply(model, TOY, None)
    assert negative.call_kwargs(2) == {"negative_prompt": ["church", "church"]}
    a = _generate(plain, ["a church"], [5])[0]
    b = _generate(negative, ["a church"], [5])[0]
    assert np.abs(a - b).max() > 0
