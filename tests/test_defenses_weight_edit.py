"""ESD-x / ESD-u and UCE on the tiny-random pipeline: which weights they touch, that the shared pipeline is
restored on close, the cached safetensors delta, and UCE's closed form. Random weights: these tests prove
the algorithms' mechanics and plumbing, not that a concept is erased (the issue note measures that on
sd-mini)."""

from __future__ import annotations

import pytest
import torch

from benchmark.api.defense import PrepareContext
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, assert_close_fp
from defenses.esd import DELTA_FILE, EsdU, EsdX, esd_parameters
from defenses.uce import Uce, token_tail, uce_edit
from defenses.weight_edit import ArtifactPathError, WeightEditPipeline, artifact_file, cross_attention_modules

FAST_ESD = {"iterations": 3, "ddim_steps": 3, "lr": 1e-3}


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def eps_of(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        cond, _ = pipe.encode_prompt([prompt], pipe.device, 1, False)
        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        return pipe.unet(x, 500, encoder_hidden_states=cond).sample


def test_esd_x_and_u_train_disjoint_parameter_sets(model):
    x = set(esd_parameters(model.pipe.unet, "x"))
    u = set(esd_parameters(model.pipe.unet, "u"))
    cross = tuple(f"{n}." for n in cross_attention_modules(model.pipe.unet))
    assert x and u and not (x & u)
    assert all(n.startswith(cross) for n in x)
    assert not any(n.startswith(cross) or n.startswith(("time_embedding.", "conv_out.")) for n in u)


@pytest.mark.parametrize("cls", [EsdX, EsdU], ids=["esd-x", "esd-u"])
def test_esd_caches_a_delta_and_close_restores_the_pipeline(model, tmp_path, cls):
    before = snapshot(model.pipe.unet)
    defense = cls(**FAST_ESD)
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path))
    assert same(before, snapshot(model.pipe.unet)), "training must happen on a copy of the shared UNet"
    from safetensors.torch import load_file

    delta = load_file(str(tmp_path / DELTA_FILE))
    expected = {f"unet.{n}" for n in esd_parameters(model.pipe.unet, cls.method)}
    assert set(delta) == expected and meta["trained_parameters"] == len(expected)
    assert sum(float(v.abs().sum()) for v in delta.values()) > 0
    base_eps = eps_of(model.pipe, "a church")
    defended = defense.apply(model, TOY, tmp_path)
    try:
        assert not torch.allclose(eps_of(model.pipe, "a church"), base_eps)
    finally:
        defended.close()
    assert same(before, snapshot(model.pipe.unet))


def test_esd_is_reproducible_from_its_seed(model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        EsdX(**FAST_ESD).prepare(PrepareContext(model=model, task=TOY, artifact_dir=folder))
    from safetensors.torch import load_file

    da, db = load_file(str(a / DELTA_FILE)), load_file(str(b / DELTA_FILE))
    assert all(torch.allclose(da[k], db[k]) for k in da)


def test_apply_without_prepare_is_a_clear_error(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        EsdX().apply(model, TOY, tmp_path)


def test_artifact_files_never_leave_the_artifact_dir(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / DELTA_FILE).symlink_to(outside)
    with pytest.raises(ArtifactPathError):
        artifact_file(tmp_path / "art", DELTA_FILE)
    with pytest.raises(ArtifactPathError):
        artifact_file(tmp_path / "art", "../outside.safetensors")


def test_two_weight_edits_cannot_be_stacked_on_the_shared_pipeline(model):
    key = "unet." + esd_parameters(model.pipe.unet, "x")[0]
    zero = torch.zeros_like(dict(model.pipe.unet.named_parameters())[key.removeprefix("unet.")])
    first = WeightEditPipeline(model, EsdX(), TOY, {key: zero}, as_delta=True)
    try:
        with pytest.raises(RuntimeError, match="close"):
            WeightEditPipeline(model, EsdX(), TOY, {}, as_delta=True)
    finally:
        first.close()
    WeightEditPipeline(model, EsdX(), TOY, {}, as_delta=True).close()


def test_uce_maps_the_concept_to_its_guide_and_keeps_the_preserve_set(model):
    pipe = model.pipe
    concept, guide, keep = token_tail(pipe, "church"), token_tail(pipe, "a building"), token_tail(pipe, "a tree")
    n = min(len(concept), len(guide))

    def errors(delta):
        erase, preserve = [], []
        for name, module in cross_attention_modules(pipe.unet).items():
            w_old = module.to_v.weight.detach().double()
            w_new = w_old + delta[f"unet.{name}.to_v.weight"].double()
            target = guide[:n] @ w_old.T
            erase.append(((concept[:n] @ w_new.T - target).norm() / (concept[:n] @ w_old.T - target).norm()).item())
            preserve.append(((keep @ w_new.T - keep @ w_old.T).norm() / (keep @ w_old.T).norm()).item())
        return max(erase), max(preserve)

    common = {"lamb": 0.01, "erase_scale": 1.0, "edit_keys": True}
    erase_err, drift_free = errors(uce_edit(pipe, ["church"], "a building", [], preserve_scale=0.0, **common))
    _, drift_kept = errors(uce_edit(pipe, ["church"], "a building", ["a tree"], preserve_scale=1.0, **common))
    assert erase_err < 0.2, "the edited values of the concept must move most of the way to the guide's"
    assert drift_kept < 0.5 * drift_free, "the preserve set must reduce how much its own outputs move"


def test_uce_prepare_apply_close(model, tmp_path):
    before = snapshot(model.pipe.unet)
    defense = Uce(concepts="church, cathedral", preserve=["a tree"])
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path))
    assert meta["concepts"] == ["church", "cathedral"] and meta["guide"] == TOY.guide_concept
    assert meta["edited_projections"] == 2 * len(cross_attention_modules(model.pipe.unet))
    base_eps = eps_of(model.pipe, "church")
    defended = defense.apply(model, TOY, tmp_path)
    try:
        assert not torch.allclose(eps_of(model.pipe, "church"), base_eps)
    finally:
        defended.close()
    assert same(before, snapshot(model.pipe.unet))


def test_uce_default_preserve_set_uses_the_world_words():
    from benchmark.api.registry import TASKS
    from benchmark.mini_world.tasks import OBJECT_CONCEPT

    concepts, guide, preserve = Uce().sets(TASKS.get("mini-object"))
    assert concepts == [OBJECT_CONCEPT] and guide == ""
    assert "star" in preserve and OBJECT_CONCEPT not in preserve and all(":" not in p for p in preserve)


@pytest.mark.numeric
@pytest.mark.parametrize("make", ["esd-x", "uce"])
def test_noise_prediction_is_the_sampler_step_under_a_weight_edit(model, tmp_path, make):
    """A weight edit changes the UNet in place, so the inherited differentiable path must still equal one
    step of the defended sampler."""
    defense = EsdX(**FAST_ESD) if make == "esd-x" else Uce()
    defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path))
    defended = defense.apply(model, TOY, tmp_path)
    try:
        pipe = defended.pipe
        latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
        prompts = ["a church", "a red car"]
        step = pipe(prompt=prompts, latents=latents.clone(), num_inference_steps=1, guidance_scale=5.0,
                    height=32, width=32, output_type="latent").images
        pipe.scheduler.set_timesteps(1)
        t = pipe.scheduler.timesteps[0]
        x = latents * pipe.scheduler.init_noise_sigma
        with torch.no_grad():
            eps = defended.noise_prediction(pipe.scheduler.scale_model_input(x, t), t,
                                            defended.encode_prompts(prompts), guidance_scale=5.0)
        # the differentiable path vs the pipeline's step: float32 rounding through the UNet's widest
        # reduction (3x3 convolutions over 64 channels, 576 terms)
        assert_close_fp(pipe.scheduler.step(eps, t, x).prev_sample, step, terms=576, ulps=8)
    finally:
        defended.close()
