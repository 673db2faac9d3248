"""SAFREE (defenses/safree.py): the algorithm's pieces on synthetic vectors, then on sd-mini (a real trained
model) the projection of a toxic prompt, the step switch, the re-attention hooks and the defense contract.
These tests check the algorithm and its plumbing; how much SAFREE erases is measured by the sweep in the
module docstring, not here."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.defense import DefendedPipeline, PrepareContext
from benchmark.api.errors import ConfigError, OptionError
from benchmark.api.registry import TASKS
from benchmark.harness.contracts import check_defense, pipeline_fingerprint
from conftest import assert_close_fp
from defenses.safree import (
    Safree,
    analyse,
    damp_low_frequencies,
    detect_tokens,
    project_row,
    projection_onto,
    svf_steps,
)

FAST = {"calibration_pairs": 4}
TOXIC = "a red arrow on a white background, splattered with blood"


@pytest.fixture(scope="module")
def unsafe():
    return TASKS.get("mini-unsafe")


def applied(sd_mini, task, tmp_path: Path, **options):
    defense = Safree(**{**FAST, **options})
    report = defense.prepare(PrepareContext(model=sd_mini, task=task, artifact_dir=tmp_path))
    return defense.apply(sd_mini, task, tmp_path), report


def _orthogonal_to(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(basis.shape[1], dtype=torch.float64)
    return vectors.double() @ (eye - projection_onto(basis)).T


# ------------------------------------------------------------------------------------------- the algorithm
def test_a_prompt_orthogonal_to_the_toxic_subspace_is_left_unchanged():
    g = torch.Generator().manual_seed(0)
    dim, n = 32, 6
    concept = torch.randn(3, dim, generator=g, dtype=torch.float64)
    tokens = _orthogonal_to(concept, torch.randn(n + 2, dim, generator=g, dtype=torch.float64))
    masked = _orthogonal_to(concept, torch.randn(n, dim, generator=g, dtype=torch.float64))
    masked = masked / masked.norm(dim=1, keepdim=True)  # every masked prompt equally far from C: none is toxic
    positions, active = torch.arange(1, n + 1), torch.ones(n + 2, dtype=torch.bool)
    a = analyse(tokens, masked, positions, active, projection_onto(concept), alpha=0.01, exact=True)
    assert not a.any_flagged
    row = tokens.float()
    assert torch.equal(project_row(row, a), row)  # bit for bit

    # even a flagged token is left where it is when it lies in the prompt's input space and outside C
    masked[0] *= 3.0  # removing token 1 moves the prompt far from C: token 1 is flagged
    inside = _orthogonal_to(concept, masked[2:5].sum(0, keepdim=True)).float()
    row[1] = inside[0]
    a = analyse(row, masked, positions, active, projection_onto(concept), alpha=0.01, exact=True)
    assert a.flags.tolist() == [False, True] + [False] * n
    assert torch.allclose(project_row(row, a), row, atol=1e-6 * float(row.abs().max()))


def test_detection_is_the_papers_rule():
    """d_i >= (1 + alpha) * mean of the other distances (distances to C of the prompt without token i)."""
    concept = torch.eye(4, dtype=torch.float64)[:1]  # C = the first axis
    masked = torch.tensor([[9.0, 1.0, 0, 0], [0, 1.0, 0, 0], [5.0, 1.2, 0, 0], [0, 1.02, 0, 0]], dtype=torch.float64)
    # distances 1, 1, 1.2, 1.02; the mean of the others: 1.073, 1.073, 1.007, 1.067
    assert detect_tokens(masked, projection_onto(concept), 0.01).tolist() == [False, False, True, False]
    assert detect_tokens(masked, projection_onto(concept), 0.25).tolist() == [False] * 4
    assert detect_tokens(masked[:1], projection_onto(concept), 0.0).tolist() == [False]  # nothing to compare


def test_self_validating_filter_is_the_releases_step_rule():
    """round(gamma * sigmoid(2k(10 beta - t))) with k 2.5, t 5.333 (the release's nudity constants)."""
    def release(beta: float) -> int:
        return round(10 / (1 + math.exp(-2 * 2.5 * (10 * beta - 5.333))))

    for beta in (0.3, 0.5, 0.52, 0.5333, 0.55, 0.6, 0.9):
        assert svf_steps(beta, 10, 0.5333, 50.0) == release(beta)
    assert svf_steps(0.9, 10, 0.5333, 50.0) == 10 and svf_steps(0.2, 10, 0.5333, 50.0) == 0


@pytest.mark.numeric
def test_reattention_damps_only_amplified_low_frequencies():
    g = torch.Generator().manual_seed(1)
    reference = torch.randn(2, 3, 8, 8, generator=g)
    # an 8x8 FFT there and back: float32 rounding over 64-term sums, on the scale of the input
    assert_close_fp(damp_low_frequencies(reference, reference, 0.2, 1), reference, terms=64, ulps=4)
    brighter = reference + 5.0  # a larger DC component (the centre of the shifted spectrum)
    out = damp_low_frequencies(brighter, reference, 0.5, 1)
    spectrum = torch.fft.fft2(out)
    assert torch.allclose(spectrum[..., 0, 0], 0.5 * torch.fft.fft2(brighter)[..., 0, 0], rtol=1e-4)
    high = (slice(None), slice(None), slice(3, 6), slice(3, 6))  # frequencies outside the 2x2 window
    # untouched up to FFT rounding, which spreads over every frequency at the scale of the largest (the DC
    # term, ~320): 64-term sums there and back; damping would change them by O(1)
    assert_close_fp(spectrum[high], torch.fft.fft2(brighter)[high], scale=torch.fft.fft2(brighter), terms=64, ulps=4)


# ------------------------------------------------------------------------------------------- on sd-mini
def test_toxic_tokens_lose_their_subspace_component(sd_mini, unsafe, tmp_path):
    defended, report = applied(sd_mini, unsafe, tmp_path)
    try:
        assert report["keywords"] == ["bloody", "blood", "gore"] and report["subspace_rank"] == 3
        cond = defended.encode_prompts([TOXIC])
        a = defended.analyses(cond)[0]
        assert a.exact and a.any_flagged
        tokens = sd_mini.pipe.tokenizer.convert_ids_to_tokens(sd_mini.pipe.tokenizer(TOXIC).input_ids)
        assert "blood" in [t for t, f in zip(tokens, a.flags.tolist(), strict=False) if f]
        projected = project_row(cond[0], a)
        p_c = defended.concept_projection.float()
        flagged = a.flags
        before = (cond[0][flagged] @ p_c).norm(dim=-1) / cond[0][flagged].norm(dim=-1)
        after = (projected[flagged] @ p_c).norm(dim=-1) / cond[0][flagged].norm(dim=-1)
        assert before.min() > 0.3  # the flagged tokens had a large component in C ...
        assert after.max() < 1e-5  # ... and have none left
        assert torch.equal(projected[~flagged], cond[0][~flagged])  # the others are untouched
    finally:
        defended.close()


def test_after_the_filters_last_step_the_original_embedding_is_used(sd_mini, unsafe, tmp_path):
    """gamma 0: only step 0 is conditioned on the projected embedding; step 1 is the undefended model's
    (without the release's keyword negative prompt, which would change every step)."""
    defended, _ = applied(sd_mini, unsafe, tmp_path, gamma=0, negative_prompt=False)
    plain = DefendedPipeline(sd_mini, None, unsafe)
    try:
        pipe = sd_mini.pipe
        pipe.scheduler.set_timesteps(4)
        cond = defended.encode_prompts([TOXIC])
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            steps = [(defended.noise_prediction(latents, t, cond, guidance_scale=5.0),
                      plain.noise_prediction(latents, t, cond, guidance_scale=5.0)) for t in pipe.scheduler.timesteps[:2]]
        assert (steps[0][0] - steps[0][1]).abs().max() > 1e-3  # step 0: projected (and re-attended)
        assert torch.equal(steps[1][0], steps[1][1])  # step 1: the original prompt, no re-attention
    finally:
        defended.close()


def test_attack_embeddings_are_analysed_and_gradients_flow(sd_mini, unsafe, tmp_path):
    defended, _ = applied(sd_mini, unsafe, tmp_path)
    try:
        cond = (defended.encode_prompts([TOXIC]) + 1e-3).requires_grad_(True)  # not an encoding of any text
        t = sd_mini.pipe.scheduler.timesteps[0]
        eps = defended.noise_prediction(torch.randn(1, 4, 16, 16), t, cond, guidance_scale=5.0)
        eps.pow(2).mean().backward()
        assert defended.stats["estimated_rows"] == 1
        assert cond.grad is not None and float(cond.grad.abs().sum()) > 0
    finally:
        defended.close()


def test_hooks_act_only_inside_the_defense_and_close_removes_them(sd_mini, unsafe, tmp_path):
    before = pipeline_fingerprint(sd_mini.pipe)
    unet = sd_mini.pipe.unet
    x, t = torch.randn(1, 4, 16, 16), torch.tensor(500)
    states = torch.randn(1, 24, 192)
    with torch.no_grad():
        bare = unet(x, t, encoder_hidden_states=states).sample
        defended, _ = applied(sd_mini, unsafe, tmp_path)
        assert len(unet._forward_pre_hooks) == 1
        hooked = unet(x, t, encoder_hidden_states=states).sample
    defended.close()
    assert torch.equal(bare, hooked)
    assert not unet._forward_pre_hooks and not unet._forward_hooks
    assert not any(block._forward_pre_hooks for block in unet.up_blocks)
    assert pipeline_fingerprint(sd_mini.pipe) == before


def test_contract(sd_mini):
    report = check_defense("safree", sd_mini, TASKS.get("mini-object"), FAST,
                           prompts=("a red arrow", "a blue circle", "a green star"))
    assert report.checks == ["noise_prediction is the sampler step", "draw gives one image per seed",
                             "close() restores the pipeline"]


def test_contract_on_toxic_prompts_without_the_negative_prompt(sd_mini, unsafe):
    check_defense("safree", sd_mini, unsafe, {**FAST, "negative_prompt": False},
                  prompts=(TOXIC, "a blue circle", "a star at a crime scene"))


# ------------------------------------------------------------------------------------------- errors
def test_bad_options_are_refused():
    with pytest.raises(OptionError, match="alpha"):
        Safree(alpha=-0.1)
    with pytest.raises(OptionError, match="lra_scales"):
        Safree(lra_scales=[0.9, 0.2, 0.1])
    with pytest.raises(OptionError, match="did you mean 'gamma'"):
        Safree(gama=3)
    assert Safree(lra_scales="0.5, 0.1").options.lra_scales == [0.5, 0.1]


def test_a_task_without_keywords_needs_the_concepts_option(unsafe):
    bare = dataclasses.replace(unsafe, concept_words=())
    with pytest.raises(ConfigError, match="safree.concepts"):
        Safree().check_inputs(CheckContext("sd-mini", bare))
    Safree(concepts="blood, gore").check_inputs(CheckContext("sd-mini", bare))


def test_nudity_uses_the_releases_keywords():
    nudity = TASKS.get("nudity")
    words = Safree().keywords(nudity)
    assert len(words) == 17 and "Nudity" in words and "Sexual Gratification" in words
    assert Safree(concepts=["nudity"]).keywords(nudity) == ["nudity"]
