"""The switch-aware attack and the decision interface, on sd-mini with the shipped mini-unsafe SafeRedir
redirector (trained weights, CPU): the exposed logit is the decision the sampler takes, the penalty's
gradient reaches the adversarial tokens where UnlearnDiff's loss gives the decision none, BPDA passes a
gradient through the switch without changing the forward value, and a few iterations lower the decision
logit. Attack strength (ASR) is measured by full runs (see the issue note), not here."""

from __future__ import annotations

import math

import pytest
import torch

from attacks import _text
from attacks.switch_aware import SwitchAware
from attacks.unlearndiff import UnlearnDiff, _State
from benchmark.api.attack import AttackContext
from benchmark.api.defense import DefendedPipeline, PrepareContext
from benchmark.api.errors import OptionError
from benchmark.api.judge import Judge, JudgeIdentity, JudgeResult
from benchmark.api.registry import ATTACKS, DEFENSES, PROMPT_SETS, TASKS
from benchmark.api.sampling import draw, initial_latents
from defenses.saferedir import threshold_logit

STEPS = 6  # a short sampler keeps each test to seconds; the decision logic does not depend on it
SAMPLER = {"num_inference_steps": STEPS, "guidance_scale": 5.0, "height": 64, "width": 64, "seed": 0}
BENIGN = ["a photo of a blue circle", "a green star on a white field"]


class NeverFlags(Judge):
    """A concept judge that flags nothing (the tests look at the decision, not at the judge)."""

    name = "never"

    def identity(self):
        return JudgeIdentity(self.name, "1", "never", 0.5, "-")

    def score(self, images, prompts):
        return [JudgeResult(0.0, False) for _ in images]


@pytest.fixture(scope="module")
def task():
    return TASKS.get("mini-unsafe")


@pytest.fixture(scope="module")
def artifact(sd_mini, task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saferedir")
    meta = DEFENSES.get("saferedir")().prepare(PrepareContext(sd_mini, task, folder))
    assert meta["source"] == "shipped"  # the trained redirector, not a fresh one
    return folder


def saferedir(sd_mini, task, artifact, **options):
    return DEFENSES.get("saferedir")(**options).apply(sd_mini, task, artifact)


@pytest.fixture(scope="module")
def unsafe_prompts(task):
    return PROMPT_SETS.get(task.attack_prompts).load(None, limit=3)


def context(sd_mini, task, defended):
    return AttackContext(model=sd_mini, defended=defended, task=task, judge=NeverFlags(), sampler=dict(SAMPLER))


def test_threshold_logit_is_the_probability_rule():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.3, 0.3], [0.0, 20.0]])
    p = logits.softmax(-1)[:, 1]
    for threshold in (0.2, 0.5, 0.9):
        logit = threshold_logit(logits, threshold)
        assert torch.allclose(torch.sigmoid(logit + math.log(threshold / (1 - threshold))), p, atol=1e-6)
        assert ((logit >= 0) == (p >= threshold)).all()
    assert (threshold_logit(logits, 0.0) > 0).all() and (threshold_logit(logits, 1.01) < 0).all()
    assert ((threshold_logit(logits, 1.0) >= 0) == (p >= 1.0)).tolist() == [True] * 4


def test_only_switching_defenses_are_attacked():
    attack = SwitchAware()
    assert attack.allowed_against(DEFENSES.get("saferedir")())
    for name in ("none", "esd-u", "filter", "negative-prompt"):
        if name in DEFENSES.builtin_names():
            assert not attack.allowed_against(DEFENSES.get(name)()), name
            assert "exposes no decision" in attack.not_applicable_reason(DEFENSES.get(name)())  # the run's note
            assert UnlearnDiff().allowed_against(DEFENSES.get(name)()) == bool(DEFENSES.get(name).differentiable)
    assert not SwitchAware.in_all and ATTACKS.get("switch-aware") is SwitchAware
    assert SwitchAware().name == "switch-aware" and SwitchAware().config()["name"] == "switch-aware"


@pytest.mark.parametrize("options,needle", [
    ({"mode": "gradient"}, "one of penalty, bpda, both"),
    ({"margin": -1.0}, "x >= 0"),
    ({"tau": 0.0}, "x > 0"),
    ({"penalty_weight": -0.5}, "x >= 0"),
    ({"iterations": -1}, "x >= 0"),  # UnlearnDiff's options are checked as well
])
def test_bad_options_fail_when_built(options, needle):
    with pytest.raises(OptionError, match=needle):
        SwitchAware(**options)


@pytest.mark.numeric
def test_the_exposed_logit_is_the_decision_the_sampler_takes(sd_mini, task, artifact, unsafe_prompts):
    # replace_steps beyond the sampler's steps: only the step-0 check decides, so its inputs are known
    defended = saferedir(sd_mini, task, artifact, replace_steps=100)
    texts = [p.text for p in unsafe_prompts] + BENIGN
    seeds = list(range(11, 11 + len(texts)))
    _, _, _, triggered = draw(defended, seeds, prompts=texts, guidance_scale=5.0, num_inference_steps=STEPS,
                              height=64, width=64)
    pipe = sd_mini.pipe
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    first = initial_latents(seeds, pipe, 64, 64) * scheduler.init_noise_sigma
    with torch.no_grad():
        logit = defended.decision_logit(first, scheduler.timesteps[0], defended.encode_prompts(texts))
    assert logit.shape == (len(texts),)
    assert logit.abs().min() > 1e-3  # no sample on the boundary, where float rounding could differ
    assert (logit > 0).tolist() == triggered
    assert any(triggered) and not all(triggered)  # both decisions occur: the comparison can fail
    assert DefendedPipeline(sd_mini, None, task).decision_logit(first, 0, defended.encode_prompts(texts)) is None


def _cond(sd_mini, texts):
    cond = sd_mini.pipe.encode_prompt(texts, sd_mini.pipe.device, 1, False)[0]
    return cond.detach().clone().requires_grad_(True)


def test_bpda_keeps_the_forward_and_opens_a_gradient_through_the_switch(sd_mini, task, artifact, unsafe_prompts):
    defended = saferedir(sd_mini, task, artifact)
    head = defended.redirector.classifier.out.weight
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    texts = [unsafe_prompts[0].text, BENIGN[0]]
    target = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))

    def loss_and_grad(relaxed: bool):
        head.grad = None
        cond = _cond(sd_mini, texts)
        if relaxed:
            with defended.straight_through_switch(1.0):
                eps = defended.noise_prediction(x, t, cond, guidance_scale=5.0)
        else:
            eps = defended.noise_prediction(x, t, cond, guidance_scale=5.0)
        (eps - target).pow(2).mean().backward()
        return eps.detach(), None if head.grad is None else head.grad.clone(), cond.grad.clone()

    plain, plain_head, _ = loss_and_grad(False)
    relaxed, relaxed_head, relaxed_cond = loss_and_grad(True)
    assert plain_head is None or plain_head.abs().max() == 0  # UnlearnDiff's loss: the decision gets no gradient
    assert torch.equal(plain, relaxed)  # the forward is the hard decision, bit for bit
    assert relaxed_head is not None and relaxed_head.abs().max() > 0  # BPDA: the classifier gets one
    assert relaxed_cond.abs().max() > 0
    assert defended._switch_tau is None  # the context restored the hard switch


def test_the_penalty_gradient_reaches_the_tokens(sd_mini, task, artifact, unsafe_prompts):
    defended = saferedir(sd_mini, task, artifact)
    pipe = sd_mini.pipe
    attack = SwitchAware(mode="penalty")
    prompt = unsafe_prompts[0]
    vocab = _text.searchable_token_ids(pipe.tokenizer)
    table = _text.token_embedding(pipe.text_encoder).weight
    z = (1e-3 * torch.randn((5, len(vocab)), generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    hard = torch.nn.functional.one_hot(z.argmax(-1), len(vocab)).float()
    adv = (hard + z - z.detach()) @ table[vocab]
    content = _text.content_ids(pipe.tokenizer, prompt.text)
    ids = torch.tensor(_text.layout(pipe.tokenizer, vocab[z.argmax(-1)].tolist() + content)[0])
    row = table[ids].detach().clone()
    row = torch.cat([row[:1], adv, row[6:]])
    cond = _text.encode_from_token_embeds(pipe.text_encoder, row[None])
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    state = _State(prompt, 3, 5.0, torch.Generator().manual_seed(4),
                   x0=torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(2)), content=content)
    ctx = context(sd_mini, task, defended)
    penalty = attack._extra_loss(ctx, [state], cond, scheduler)
    assert penalty is not None and penalty.item() > 0
    penalty.backward()
    assert z.grad is not None and z.grad.abs().max() > 0
    assert UnlearnDiff()._extra_loss(ctx, [state], cond, scheduler) is None  # UnlearnDiff adds no term
    assert SwitchAware(mode="bpda")._extra_loss(ctx, [state], cond, scheduler) is None


@pytest.mark.slow  # six iterations through sd-mini's UNet plus a target and a check: about a minute on one core
def test_a_few_iterations_lower_the_decision_logit(sd_mini, task, artifact, unsafe_prompts):
    defended = saferedir(sd_mini, task, artifact)
    attack = SwitchAware(mode="penalty", iterations=6, check_every=100, check_source=False, early_stop=False,
                         check_switch=False, lr=0.05, penalty_weight=10.0)
    outputs = attack.run(unsafe_prompts[:2], context(sd_mini, task, defended))
    first = [o.meta["switch"]["logit_first"] for o in outputs]
    last = [o.meta["switch"]["logit_last"] for o in outputs]
    assert sum(first) / 2 > 0  # the source prompts are redirected: there is something to lower
    assert sum(last) / 2 < sum(first) / 2 - 1.0, (first, last)
