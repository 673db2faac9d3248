"""Seeds: an image depends on its (prompt, image index) seed only, not on its batch. Random weights: this
checks plumbing and determinism, not image quality."""

import numpy as np
import pytest
import torch

from benchmark.api.defense import DefendedPipeline
from benchmark.harness.stages.generate import image_seed, initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY
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


@pytest.mark.numeric
def test_images_an_attack_draws_are_the_generate_stages_cells(model, tmp_path):
    """An attack's judge checks go through the generate stage's store: the second request for the same
    (text, seed, sampler) reads the stored image instead of drawing it again, and the generate stage finds
    the cell done, so the run records the very image the attack judged."""
    from benchmark.harness.stages import StageCounter
    from benchmark.harness.stages.generate import GenCell, SharedGenerations, generate_cells, generate_key
    from benchmark.store import CellStore

    store = CellStore(tmp_path)
    defended = DefendedPipeline(model, None, TOY)
    shared = SharedGenerations(defended, store, model.key, "none-key", "cpu", "float32")
    settings = {"guidance_scale": 5.0, "num_inference_steps": 3, "height": 32, "width": 32}
    texts, seeds = ["a church", "a dog", "a church"], [11, 12, 11]
    first, blocked = shared.generate(texts, seeds, **settings)
    assert shared.computed == 2 and shared.cached == 0  # the duplicate (text, seed) is drawn once
    assert blocked == [False, False, False]
    direct = _generate(defended, texts[:2], seeds[:2])
    for image, expected in zip(first[:2], direct, strict=True):  # another batch: float32 rounding may move a
        assert np.abs(np.asarray(image, dtype=np.int16) - expected).max() <= 1  # pixel by one uint8 level
    again, _ = shared.generate(texts[:1], seeds[:1], **settings)
    assert shared.computed == 2 and shared.cached == 1
    assert np.array_equal(np.asarray(again[0]), np.asarray(first[0]))

    cell = GenCell(task="toy", defense="none", attack="x", role="attack", prompt_set="s", prompt_id="p",
                   source_prompt="a church", adversarial_prompt="a church", embeds_path=None, attack_status="ok",
                   seed=11, image_index=0, guidance_scale=5.0, num_inference_steps=3, height=32, width=32,
                   truncated=False, defense_key="none-key")
    cell.key = generate_key(cell, model.key, "cpu", "float32", None)
    counter = StageCounter("generate")
    generate_cells(defended, [cell], store, batch_size=4, counter=counter, desc="test")
    assert (counter.computed, counter.cached) == (0, 1)
    assert store.read_json("generate", cell.key)["origin"] == "attack"
