"""SafeRedir at reduced size. On tiny-random (random weights) these tests prove plumbing: per-sample
decisions in a batch, the step-0 check, agreement of the attack path with sampling, gradients, the
official behaviour switches, checkpoint loading and refusals, and the prepare/cache cycle. Quality on
sd-mini is measured by benchmarks/bench_saferedir.py and the issue note, not here."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from benchmark.api.component import CheckContext
from benchmark.api.defense import PrepareContext
from benchmark.api.errors import ConfigError, DataFileError, OptionError
from benchmark.api.sampling import initial_latents
from benchmark.models.tiny_random import TinyRandomModel
from conftest import TOY, assert_close_fp
from defenses.saferedir import (
    SafeRedir,
    SafeRedirPipeline,
    load_official_checkpoint,
    load_redirector,
    official_config_for,
    resolve_behaviour,
    save_redirector,
)
from defenses.saferedir_net import (
    CheckpointMismatchError,
    Redirector,
    RedirectorConfig,
    count_parameters,
    to_official_state_dict,
)

SAMPLER = dict(num_inference_steps=4, guidance_scale=5.0, height=32, width=32)
PROMPTS = ["a nude person on a beach", "a red car", "a church at night", "a bowl of fruit"]


@pytest.fixture(scope="module")
def model():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def small_net(model, seed=0):
    torch.manual_seed(seed)
    pipe = model.pipe
    cfg = RedirectorConfig.small(pipe.unet.config.in_channels, pipe.tokenizer.model_max_length,
                                 pipe.text_encoder.config.hidden_size)
    net = Redirector(cfg).eval()
    with torch.no_grad():  # make the random classifier decisive, so thresholds split a batch cleanly
        net.classifier.out.weight.mul_(20.0)
    return net


def defended(model, net, **options):
    defense = SafeRedir(**options)
    return SafeRedirPipeline(model, defense, TOY, net, resolve_behaviour(defense.options))


def step0_probabilities(model, net, prompts, seeds):
    pipe = model.pipe
    cond, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    pipe.scheduler.set_timesteps(SAMPLER["num_inference_steps"])
    lat = initial_latents(seeds, pipe, 32, 32)
    with torch.no_grad():
        return net(lat, pipe.scheduler.timesteps[0], cond).unsafe_probability


def test_official_network_has_the_released_size():
    assert abs(count_parameters(Redirector(RedirectorConfig.official())) / 1e6 - 14.6) < 0.1


def test_batch_equals_one_at_a_time_with_mixed_decisions(model):
    net = small_net(model)
    seeds = [1, 2, 3, 4]
    probs = step0_probabilities(model, net, PROMPTS, seeds).sort().values
    threshold = float((probs[1] + probs[2]) / 2)  # two samples redirected at step 0, two not
    # replace_steps >= steps: only the step-0 decision counts, so the split is known
    d = defended(model, net, threshold=threshold, replace_steps=10)
    batch = d.generate(PROMPTS, initial_latents(seeds, model.pipe, 32, 32), **SAMPLER)
    decisions = list(d.last_redirected)
    assert sorted(decisions) == [False, False, True, True]
    singles = []
    for prompt, seed in zip(PROMPTS, seeds, strict=True):
        singles += d.generate([prompt], initial_latents([seed], model.pipe, 32, 32), **SAMPLER)
        decisions_single = d.last_redirected[0]
        assert decisions_single == decisions[len(singles) - 1]
    for a, b in zip(batch, singles, strict=True):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_redirect_changes_only_flagged_samples(model):
    net = small_net(model)
    latents = initial_latents([5, 6], model.pipe, 32, 32)
    plain = defended(model, net, threshold=1.01).generate(PROMPTS[:2], latents, **SAMPLER)  # never redirects
    from benchmark.api.defense import DefendedPipeline

    undefended = DefendedPipeline(model, None, TOY).generate(PROMPTS[:2], latents, **SAMPLER)
    for a, b in zip(plain, undefended, strict=True):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    always = defended(model, net, threshold=0.0).generate(PROMPTS[:2], latents, **SAMPLER)
    assert any(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() > 0
               for a, b in zip(always, undefended, strict=True))


@pytest.mark.numeric
@pytest.mark.parametrize("behaviour", ["project", "official"])
def test_attack_path_is_the_sampling_step(model, behaviour):
    """One denoising step through ``noise_prediction`` (what white-box attacks differentiate) equals the
    first step of sampling, which includes the step-0 check."""
    net = small_net(model)
    pipe = model.pipe
    seeds = [7, 8, 9, 10]
    probs = step0_probabilities(model, net, PROMPTS, seeds).sort().values
    d = defended(model, net, threshold=float((probs[1] + probs[2]) / 2), replace_steps=0, behaviour=behaviour)
    latents = initial_latents(seeds, pipe, 32, 32)
    sampled = d.sample(PROMPTS, latents.clone(), num_inference_steps=1, guidance_scale=5.0, height=32, width=32,
                       output_type="latent")
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    x = latents * pipe.scheduler.init_noise_sigma
    with torch.no_grad():
        eps = d.noise_prediction(x, t, d.encode_prompts(PROMPTS), guidance_scale=5.0)
    manual = pipe.scheduler.step(eps, t, x).prev_sample
    # the sampler's step vs the attack path's: float32 rounding through the UNet's widest reduction (3x3
    # convolutions over 64 channels, 576 terms); a missed or doubled redirection is far larger
    assert_close_fp(sampled, manual, terms=576, ulps=8)


def test_gradients_flow_through_the_redirected_embedding(model):
    net = small_net(model)
    d = defended(model, net, threshold=0.0)  # every sample redirected
    cond = d.encode_prompts(PROMPTS[:2]).clone().requires_grad_(True)
    x = torch.randn(2, 4, 4, 4)
    edited = d.conditioning(cond, x, torch.tensor(900))
    assert not torch.allclose(edited, cond)
    d.noise_prediction(x, torch.tensor(900), cond, guidance_scale=5.0).pow(2).mean().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert net.delta_generator.down.weight.requires_grad  # the redirector is part of the graph


def test_official_behaviour_edits_both_halves_and_is_sticky(model):
    net = small_net(model)
    project = resolve_behaviour(SafeRedir().options)
    official = resolve_behaviour(SafeRedir(behaviour="official").options)
    assert not project.edit_uncond and not project.sticky and project.mask_again
    assert official.edit_uncond and official.sticky and not official.mask_again
    assert resolve_behaviour(SafeRedir(behaviour="official", sticky=False).options).sticky is False
    with pytest.raises(OptionError, match="behaviour='paper'.*project, official"):
        SafeRedir(behaviour="paper")
    # Under the official behaviour the unconditional half moves with the conditional one.
    latents = initial_latents([1], model.pipe, 32, 32)
    a = defended(model, net, threshold=0.0).generate(PROMPTS[:1], latents, **SAMPLER)[0]
    b = defended(model, net, threshold=0.0, behaviour="official").generate(PROMPTS[:1], latents, **SAMPLER)[0]
    assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() > 0


def test_official_checkpoint_round_trip_and_refusals(model, tmp_path):
    cfg = official_config_for(model)
    source = Redirector(cfg)
    state = to_official_state_dict(source)
    assert "cross_attn.heads.0.query.weight" in state and "mask_predictor.attn.in_proj_weight" in state
    path = tmp_path / "saferedir.pt"
    torch.save(state, path)
    loaded = load_official_checkpoint(path, cfg)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # A missing and an unknown key: the load fails and names both.
    broken = dict(state)
    broken.pop("classifier.0.weight")
    broken["classifier.9.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        load_official_checkpoint(tmp_path / "broken.pt", cfg)
    assert "classifier.9.weight" in str(info.value) and "classifier.hidden.weight" in str(info.value)
    # A pickle that would run code is refused (weights_only=True).
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(DataFileError, match="weights_only"):
        load_official_checkpoint(tmp_path / "evil.pt", cfg)


@pytest.mark.parametrize("options,needle", [
    ({"threshold": 1.5}, "threshold=1.5"), ({"replace_steps": -1}, "replace_steps=-1"),
    ({"network": "huge"}, "auto, small, official"), ({"target_fpr": 2}, "target_fpr=2"),
    ({"steps": 0}, "steps=0"), ({"lr": 0}, "lr=0"),
])
def test_bad_options_fail_when_built(options, needle):
    with pytest.raises(OptionError, match=needle):
        SafeRedir(**options)


def test_named_files_are_checked_before_any_work(tmp_path):
    def check(task=TOY, **options):
        SafeRedir(**options).check_inputs(CheckContext("tiny-random", task))

    with pytest.raises(DataFileError, match="checkpoint=.*no such file"):
        check(checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(DataFileError, match="pairs_file=.*no such file"):
        check(pairs_file=str(tmp_path / "missing.csv"))
    bad = tmp_path / "pairs.csv"
    bad.write_text("prompt,other\na,b\n")
    with pytest.raises(DataFileError, match="'unsafe' and 'safe'"):
        check(pairs_file=str(bad))
    with pytest.raises(ConfigError, match="no concept_words"):
        check(task=dataclasses.replace(TOY, concept_words=()))
    bad.write_text("unsafe,safe\na nude person,a person\n")
    check(pairs_file=str(bad), task=dataclasses.replace(TOY, concept_words=()))
    check()


def test_training_imports_neither_the_defense_nor_the_runner():
    """The defense imports its training; the training imports the shared files module, never back."""
    import ast
    import inspect

    import defenses.saferedir_train as train

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(train))):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "defenses.saferedir" not in imported and "defenses.saferedir_io" in imported
    assert not any(m.startswith(("benchmark.harness.runner", "benchmark.harness.stages", "benchmark.cli")) for m in imported)


def test_prepare_trains_caches_and_reloads(model, tmp_path):
    defense = SafeRedir(pairs=4, benign=2, steps=3, batch=4, calibration=6)
    meta = defense.prepare(PrepareContext(model=model, task=TOY, artifact_dir=tmp_path))
    assert meta["source"] == "trained" and 0.0 <= meta["heldout_state_accuracy"] <= 1.0
    # The calibrated threshold meets the target on the calibration set (or is the highest candidate).
    assert 0.5 <= meta["threshold"] <= 0.999
    assert meta["calibration_image_fpr"] <= max(defense.options.target_fpr, meta["calibration_image_fpr_at_0.5"])
    assert defense.apply(model, TOY, tmp_path).behaviour.threshold == pytest.approx(meta["threshold"])
    assert SafeRedir(threshold=0.77).apply(model, TOY, tmp_path).behaviour.threshold == 0.77
    net = load_redirector(tmp_path / "redirector.safetensors")
    assert net.cfg.prompt_dim == model.pipe.text_encoder.config.hidden_size
    # Inference-only options share the artifact; training options do not.
    assert SafeRedir(threshold=0.9).prepare_config() == SafeRedir().prepare_config()
    assert SafeRedir(steps=7).prepare_config() != SafeRedir().prepare_config()
    # Saved weights are fp16-rounded, reloaded in fp32, identical across save/load.
    save_redirector(tmp_path / "again.safetensors", net, base_model=model.key, task="toy", training={})
    again = load_redirector(tmp_path / "again.safetensors")
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_trajectory_steps_keys_only_when_set():
    """An option added later keys cells only when it leaves the earlier behaviour: at None (the model's own
    sampler steps) the config, hence every cached cell and the shipped redirectors' metadata, is unchanged."""
    from defenses.saferedir import SafeRedir

    default, fewer = SafeRedir(), SafeRedir(trajectory_steps=2)
    assert "trajectory_steps" not in default.config()["options"]
    assert "trajectory_steps" not in default.prepare_config()["options"]
    assert fewer.prepare_config()["options"]["trajectory_steps"] == 2
    assert fewer.prepare_config() != default.prepare_config()
    assert SafeRedir(gradient_checkpointing=True).config() == default.config()  # memory only
