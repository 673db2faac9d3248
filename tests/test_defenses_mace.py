"""MACE (defenses/mace.py, defenses/mace_masks.py).

On sd-mini (the trained world, the sd-mini preset): the contract, that the fused edit lowers the concept
tokens' attention inside the concept's exact mask on held-out renders, and that it keeps the retention
concepts (their noise predictions move by less than a stated tolerance, under half as much as the concept's). The closed forms and the
world's masks are checked exactly. On tiny-random (random weights) only the attention-mask path's plumbing
is tested: those images say nothing about erasure.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.defense import PrepareContext
from benchmark.api.errors import ConfigError, OptionError
from benchmark.api.registry import TASKS
from benchmark.harness.contracts import check_defense, pipeline_fingerprint
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY
from defenses.mace import DELTA_FILE, Mace, projection_weights, ridge_solve, shared_positions
from defenses.mace_masks import (
    AttentionRecorder,
    concept_positions,
    contains_word,
    install_probe,
    replace_word,
    world_data,
    world_mask,
)
from defenses.weight_edit import cross_attention_modules

FAST_OPTIONS = {"steps": 2, "images": 2, "prompts": 4}  # the contract test's budget (tests/test_contracts.py)
# The algorithm test runs the sd-mini preset itself (120 steps, 8 images, 30 prompts: ~7 s on one core).
PRESET: dict = {}  # no options: the sd-mini preset
RETENTION_PROMPTS = ["a red star on a blue background", "a green circle", "a yellow heart on a black background",
                     "a striped white square", "a purple moon"]
CONCEPT_PROMPTS = ["a red arrow on a blue background", "a green arrow", "an image of a yellow arrow"]


@pytest.fixture(scope="module")
def mini_object():
    return TASKS.get("mini-object")


@pytest.fixture(scope="module")
def trained(sd_mini, mini_object, tmp_path_factory):
    """MACE prepared once on mini-object with the sd-mini preset: (artifact dir, prepare metadata)."""
    folder = tmp_path_factory.mktemp("mace")
    meta = Mace(**PRESET).prepare(PrepareContext(model=sd_mini, task=mini_object, artifact_dir=folder))
    return folder, meta


def eps(pipe, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
        x = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(0))
        return pipe.unet(x, 400, encoder_hidden_states=cond).sample


def masked_concept_attention(pipe, data) -> float:
    """Mean over the examples of the concept word's cross-attention mass inside its mask (all probed layers),
    at a mid-range timestep: the quantity MACE's attention loss suppresses."""
    import copy

    unet = copy.deepcopy(pipe.unet).eval()
    recorder = install_probe(unet, list(cross_attention_modules(unet)))
    total = []
    with torch.no_grad():
        for example in data.examples:
            noise = torch.randn(example.latents.shape, generator=torch.Generator().manual_seed(1))
            t = torch.tensor([300])
            noisy = pipe.scheduler.add_noise(example.latents, noise, t)
            cond, _ = pipe.encode_prompt([example.prompt], pipe.device, 1, False)
            recorder.clear()
            recorder.mode = "loss"
            recorder.positions = concept_positions(pipe.tokenizer, example.prompt, data.word, pooler=False)[None]
            recorder.mask = example.mask[None, None]
            unet(noisy, t, encoder_hidden_states=cond)
            total.append(float(sum(term.sum(dim=-1).mean() for term in recorder.terms)))
    return float(np.mean(total))


# ------------------------------------------------------------------------------------------ contract
def test_mace_keeps_the_defense_contract(sd_mini, mini_object):
    report = check_defense("mace", sd_mini, mini_object, FAST_OPTIONS,
                           prompts=("a red arrow", "a blue circle", "a green star"))
    assert "close() restores the pipeline" in report.checks


# ------------------------------------------------------------------------------------------ the algorithm
def test_mace_lowers_the_concept_and_keeps_the_retention_concepts(sd_mini, mini_object, trained):
    folder, meta = trained
    assert meta["masks"] == "world" and meta["images_per_concept"] == {"arrow": 8}
    # Held-out renders (another split seed than training) with their exact masks.
    held_out = world_data(sd_mini.pipe, "mini-object", "arrow", n_prompts=6, n_images=6, mapping=None, seed=7)
    before_attention = masked_concept_attention(sd_mini.pipe, held_out)
    base_retain, base_concept = eps(sd_mini.pipe, RETENTION_PROMPTS), eps(sd_mini.pipe, CONCEPT_PROMPTS)
    defended = Mace(**PRESET).apply(sd_mini, mini_object, folder)
    try:
        after_attention = masked_concept_attention(sd_mini.pipe, held_out)
        retain, concept = eps(sd_mini.pipe, RETENTION_PROMPTS), eps(sd_mini.pipe, CONCEPT_PROMPTS)
    finally:
        defended.close()
    # The concept: its tokens' attention inside the arrow's mask on held-out renders falls by over 15%
    # (measured 1.28 -> 0.99, -23%; the fusion's preserve term gives back part of the LoRA's own -99%).
    assert after_attention < 0.85 * before_attention, (before_attention, after_attention)
    retain_change = ((retain - base_retain).flatten(1).norm(dim=1) / base_retain.flatten(1).norm(dim=1)).max()
    concept_change = ((concept - base_concept).flatten(1).norm(dim=1) / base_concept.flatten(1).norm(dim=1)).min()
    # Retention (the stated tolerance): every retention prompt's noise prediction (t = 400) moves by under 3%
    # (measured at most 1.2%), and the least-moved concept prompt moves over twice as much as the most-moved
    # retention prompt (measured 3.8% vs 1.2%): the fused edit is concept-specific.
    assert retain_change < 0.03, float(retain_change)
    assert concept_change > 2 * retain_change, (float(concept_change), float(retain_change))


def test_the_lora_training_lowers_its_loss(trained):
    _, meta = trained
    # Measured 4.74 -> 0.02 with the preset.
    assert meta["attention_loss_last_10pct"]["arrow"] < 0.1 * meta["attention_loss_first"]["arrow"]


def test_fusion_contexts_are_the_concept_tokens_unless_asked(sd_mini):
    from defenses.mace import fusion_contexts
    from defenses.mace_masks import ConceptData

    data = ConceptData("arrow", ["a red arrow on blue", "a green arrow"], ["a red star on blue", "a green star"])
    assert fusion_contexts(sd_mini.pipe, data, "concept", pooler=False).shape[0] == 2  # one "arrow" token each
    # The tail: "arrow on blue <end>" (4) + "arrow <end>" (2).
    assert fusion_contexts(sd_mini.pipe, data, "tail", pooler=False).shape[0] == 6
    assert fusion_contexts(sd_mini.pipe, data, "prompt", pooler=False).shape[0] == 2 * sd_mini.pipe.tokenizer.model_max_length


def test_fusion_reproduces_each_lora_on_its_own_tokens_and_preservation_limits_drift():
    gen = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 8
    w0 = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    # Two concepts whose contexts span disjoint halves of the input space, each with its own low-rank edit.
    e1 = torch.cat([torch.randn(20, 6, generator=gen, dtype=torch.float64), torch.zeros(20, 6, dtype=torch.float64)], 1)
    e2 = torch.cat([torch.zeros(20, 6, dtype=torch.float64), torch.randn(20, 6, generator=gen, dtype=torch.float64)], 1)
    d1 = torch.randn(d_out, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, d_in, generator=gen, dtype=torch.float64)
    d2 = torch.randn(d_out, 1, generator=gen, dtype=torch.float64) @ torch.randn(1, d_in, generator=gen, dtype=torch.float64)
    fused = ridge_solve(w0, 1e-6, [(e1, e1 @ (w0 + d1).T, 1.0), (e2, e2 @ (w0 + d2).T, 1.0)])
    assert torch.allclose(e1 @ fused.T, e1 @ (w0 + d1).T, atol=1e-4)
    assert torch.allclose(e2 @ fused.T, e2 @ (w0 + d2).T, atol=1e-4)
    # A preserve set inside the first concept's span pulls the fused weights back towards W0 there.
    keep = e1[:3]
    drift_free = (keep @ fused.T - keep @ w0.T).norm()
    kept = ridge_solve(w0, 1e-6, [(e1, e1 @ (w0 + d1).T, 1.0), (keep, keep @ w0.T, 100.0)])
    assert (keep @ kept.T - keep @ w0.T).norm() < 0.1 * drift_free


def test_cfr_aligns_the_words_the_prompts_share(sd_mini):
    tok = sd_mini.pipe.tokenizer
    old, new = shared_positions(tok, "a red arrow on a blue background", "a red star on a blue background")
    length = tok.model_max_length
    assert 3 not in old and old[:3] == [0, 1, 2] and old == new  # the object word (position 3) is left out
    assert old[-1] == length - 1 and len(old) == length - 1
    old, new = shared_positions(tok, "a bloody red star", "a red star")
    assert old[:2] == [0, 1] and new[:2] == [0, 1] and old[2] == 3 and new[2] == 2 and len(old) == len(new)
    assert replace_word("a bloody star, bloody", "bloody", "") == "a star,"


def test_concept_positions_mark_the_word_and_optionally_the_end_token(sd_mini):
    tok = sd_mini.pipe.tokenizer
    plain = concept_positions(tok, "a red arrow on blue", "arrow", pooler=False)
    assert plain.nonzero().flatten().tolist() == [3]
    pooled = concept_positions(tok, "a red arrow on blue", "arrow", pooler=True)
    assert pooled.nonzero().flatten().tolist() == [3] + list(range(6, tok.model_max_length))


def test_world_masks_are_the_renderers_exact_ones():
    from benchmark.mini_world import world

    labels = world.sample_labels(np.random.default_rng(3), object="arrow", gore=True, style="plain")
    gore = world_mask("gore", labels)
    changed = np.abs(world.render(labels) - world.render({**labels, "gore": False})).max(axis=-1) > 0
    assert gore.shape == (64, 64) and np.array_equal(gore > 0, changed) and 0 < gore.mean() < 0.9
    arrow = world_mask("object:arrow", labels)
    assert arrow.shape == (64, 64) and 0.05 < arrow.mean() < 0.6 and arrow.max() == 1.0
    assert world_mask("style:wavy", labels) is None


def test_world_data_renders_matching_images_for_prompts_that_name_the_concept(sd_mini):
    data = world_data(sd_mini.pipe, "mini-unsafe", "blood", n_prompts=5, n_images=2, mapping=None, seed=0)
    assert len(data.prompts) == 5 and all(contains_word(p, "blood") for p in data.prompts)
    assert not any(contains_word(m, "blood") for m in data.mapped)  # the safe counterpart drops the concept
    assert len(data.examples) == 2 and data.examples[0].latents.shape == (1, 4, 16, 16)
    assert all(e.mask is not None and e.mask.sum() > 0 for e in data.examples)


# ------------------------------------------------------------------------------------------ plumbing
def test_prepare_caches_a_delta_of_every_cross_attention_projection_and_close_restores(sd_mini, mini_object, trained):
    folder, meta = trained
    from safetensors.torch import load_file

    delta = load_file(str(folder / DELTA_FILE))
    assert set(delta) == {f"unet.{k}.weight" for k in projection_weights(sd_mini.pipe.unet)}
    assert meta["edited_projections"] == len(delta) == 2 * len(cross_attention_modules(sd_mini.pipe.unet))
    before = pipeline_fingerprint(sd_mini.pipe)
    Mace(**PRESET).apply(sd_mini, mini_object, folder).close()
    assert pipeline_fingerprint(sd_mini.pipe) == before


def test_attention_masks_on_a_model_without_a_world_plumbing_only(tmp_path):
    """tiny-random has random weights: this proves the attention-mask path runs end to end, not erasure."""
    model = TinyRandomModel().load(torch.device("cpu"), torch.float32)
    before = pipeline_fingerprint(model.pipe)
    defense = Mace(steps=2, images=2, prompts=3, image_steps=2)
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path))
    assert meta["masks"] == "attention" and meta["lamb"] == 1e3 and meta["lr"] == 1e-5  # the paper's defaults
    assert meta["images_per_concept"] == {"church": 2}
    assert pipeline_fingerprint(model.pipe) == before, "prepare must not touch the shared pipeline"
    defense.apply(model, TOY, tmp_path).close()
    assert pipeline_fingerprint(model.pipe) == before


def test_the_recorder_is_silent_unless_asked(sd_mini):
    recorder = AttentionRecorder()
    recorder.record(torch.rand(2, 16, 24), 1)
    assert recorder.terms == [] and recorder.maps is None


# ------------------------------------------------------------------------------------------ errors
def test_bad_options_fail_when_the_defense_is_built():
    with pytest.raises(OptionError, match="rank"):
        Mace(rank=0)
    with pytest.raises(OptionError, match="masks='world'"):
        Mace(masks="wrld")
    with pytest.raises(OptionError, match="did you mean 'steps'"):
        Mace(step=3)


def test_unsupported_inputs_fail_before_any_work(mini_object):
    from dataclasses import replace

    wordless = replace(mini_object, name="custom", concept_words=())
    with pytest.raises(ConfigError, match="concepts"):
        Mace().check_inputs(CheckContext(model="sd-mini", task=wordless))
    with pytest.raises(ConfigError, match="masks=world"):
        Mace(masks="world").check_inputs(CheckContext(model="sd-mini", task=TOY))
    with pytest.raises(ConfigError, match="masks=world"):
        Mace(masks="world").check_inputs(CheckContext(model="sd-1.4", task=mini_object))
    Mace().check_inputs(CheckContext(model="sd-mini", task=mini_object))


def test_a_concept_outside_the_vocabulary_is_a_clear_error(sd_mini, tmp_path):
    task = TASKS.get("mini-object")
    with pytest.raises(ConfigError, match="vocabulary"):
        Mace(concepts="zeppelin", masks="attention", steps=1, images=1, prompts=2, image_steps=1).prepare(
            PrepareContext(model=sd_mini, task=task, artifact_dir=tmp_path))


def test_apply_without_prepare_is_a_clear_error(sd_mini, mini_object, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        Mace().apply(sd_mini, mini_object, tmp_path)
