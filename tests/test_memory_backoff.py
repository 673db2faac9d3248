"""Out-of-memory back-off: a batch that runs out of memory is halved and retried, logged and recorded; only a
batch of one that does not fit is an error (one that says what to do). The out-of-memory error is simulated
(``torch.OutOfMemoryError``, what CUDA raises), so this runs on CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from benchmark.api.attack import AttackContext
from benchmark.api.defense import DefendedPipeline
from benchmark.api.judge import Judge, JudgeIdentity, JudgeResult
from benchmark.api.memory import (
    Backoff,
    OutOfMemoryAtBatchOneError,
    is_out_of_memory,
    measured_batch_size,
    memory_hint,
    recording_backoffs,
)
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS
from benchmark.harness.stages import StageCounter
from benchmark.harness.stages.attack import run_attack
from benchmark.models.tiny_random import TinyRandomModel
from benchmark.store import CellStore
from conftest import TOY, assert_close_fp, run_cli


def fits_at_most(limit: int, seen: list[list[int]]):
    def process(batch):
        if len(batch) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch)} GiB")
        seen.append(list(batch))
    return process


def test_a_batch_that_does_not_fit_is_halved_until_it_fits_and_every_item_is_done_once():
    seen: list[list[int]] = []
    backoff = Backoff(8, "generate toy/none")
    backoff.run(list(range(11)), fits_at_most(3, seen))
    assert [i for batch in seen for i in batch] == list(range(11))  # in order, each once
    assert max(len(b) for b in seen) == 2 and backoff.batch_size == 2  # 8 -> 4 -> 2, kept for the rest
    assert backoff.events == [{"what": "generate toy/none", "from": 8, "to": 4},
                              {"what": "generate toy/none", "from": 4, "to": 2}]


def test_other_errors_are_not_retried():
    calls = []

    def process(batch):
        calls.append(batch)
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError, match="a bug"):
        Backoff(4, "x").run([1, 2, 3, 4], process)
    assert len(calls) == 1


def test_one_item_that_does_not_fit_says_what_to_do():
    with pytest.raises(OutOfMemoryAtBatchOneError, match=r"--dtype fp16 or bf16.*rerunning"):
        Backoff(4, "generate toy/none").run([1, 2], fits_at_most(0, []))


def test_what_counts_as_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


PLUGIN = '''
import torch

from benchmark.api import DefendedPipeline, Defense, DefenseKind, DEFENSES


class _Small(DefendedPipeline):
    def generate(self, prompts, latents, **kwargs):
        if latents.shape[0] > 2:  # a card that holds two images at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().generate(prompts, latents, **kwargs)

    def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale):
        if torch.is_grad_enabled() and latents.shape[0] > 1:  # and one white-box attack step at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB (simulated)")
        return super().noise_prediction(latents, timestep, cond_embeds, guidance_scale=guidance_scale)


@DEFENSES.register("small-card")
class SmallCard(Defense):
    """The undefended sampler on a simulated card that fits two images per batch."""

    kind = DefenseKind.INFERENCE_TIME

    def apply(self, model, task, artifact_dir):
        return _Small(model, self, task)
'''


def test_a_run_on_a_card_too_small_for_its_batch_finishes_and_records_the_halvings(tmp_path):
    plugin = tmp_path / "small_card.py"
    plugin.write_text(PLUGIN)
    result = run_cli("run", "--model", "tiny-random", "--task", "toy", "--defense", "small-card",
                     "--attack", "none,unlearndiff", "--option", "attack:unlearndiff.iterations=1",
                     "--max-prompts", "4", "--max-benign", "3", "--steps", "2", "--batch-size", "8",
                     "--plugin", str(plugin), "--out", str(tmp_path / "runs"))
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir() and (p / "records.parquet").is_file())
    records = pd.read_parquet(run_dir / "records.parquet")
    small = records[records.defense == "small-card"]
    assert len(small) > 0 and small.image_path.notna().all() and small.score.notna().all()  # nothing lost
    assert (records[records.attack == "unlearndiff"].attack_status == "ok").all()  # the attack finished too
    provenance = json.loads((run_dir / "provenance.json").read_text())
    halvings = [e for e in provenance["oom_backoffs"] if e["what"].startswith("generate toy/small-card")]
    assert halvings and all(e["to"] == e["from"] // 2 for e in halvings)  # each retry halves the batch
    assert halvings[0]["from"] > 2 and halvings[-1]["to"] <= 2  # down from the asked batch to what fits
    # The attack's own halvings (its prompt chunk: 4 prompts, then 2, then 1) name the attack, task and defense.
    attack = [(e["from"], e["to"]) for e in provenance["oom_backoffs"] if e["what"] == "attack unlearndiff toy/small-card"]
    assert attack == [(4, 2), (2, 1)]
    notes = (run_dir / "leaderboard.md").read_text()
    assert "out of memory at batch" in notes and "attack unlearndiff toy/small-card: out of memory at batch 4" in notes
    assert "batch halved" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ micro-batches
@pytest.mark.numeric
def test_micro_batches_accumulate_the_whole_batchs_gradient_and_restart_the_step_on_oom():
    torch.manual_seed(0)
    weight = torch.randn(3, requires_grad=True)
    x, y = torch.randn(6, 3), torch.randn(6)

    def step(part_fits: int | None) -> tuple[float, torch.Tensor, Backoff, list[int]]:
        weight.grad = None
        sizes: list[int] = []
        resets: list[int] = []

        def share(rows: slice) -> torch.Tensor:
            n = rows.stop - rows.start
            if part_fits is not None and n > part_fits:
                (weight * 2).sum().backward()  # a backward that got halfway: the step must start over
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            sizes.append(n)
            return (x[rows] @ weight - y[rows]).pow(2).mean() * (n / 6)

        def reset() -> None:
            resets.append(len(sizes))
            weight.grad = None

        backoff = Backoff(6, "prepare esd-x toy")
        loss = backoff.accumulate(6, share, reset)
        return loss, weight.grad.clone(), backoff, sizes

    whole_loss, whole_grad, _, sizes = step(None)
    assert sizes == [6]
    loss, grad, backoff, sizes = step(2)
    assert sizes == [1] * 6 and backoff.batch_size == 1  # 6 -> 3 -> 1, the step restarted each time
    assert backoff.events == [{"what": "prepare esd-x toy", "from": 6, "to": 3},
                              {"what": "prepare esd-x toy", "from": 3, "to": 1}]
    assert loss == pytest.approx(whole_loss, rel=1e-6)
    # the half-done backward was cleared: the gradient is the whole batch's up to the order of its 6 terms
    assert_close_fp(grad, whole_grad, terms=6, ulps=4)
    with pytest.raises(OutOfMemoryAtBatchOneError, match="one item alone does not fit"):
        step(0)


def test_halvings_inside_a_recording_block_reach_it_and_nowhere_else():
    with recording_backoffs() as outer:
        with recording_backoffs() as inner:
            Backoff(4, "attack a toy/none").run([1, 2, 3, 4], fits_at_most(2, []))
        Backoff(2, "attack b toy/none").run([1, 2], fits_at_most(1, []))
    Backoff(2, "generate toy/none").run([1, 2], fits_at_most(1, []))
    assert [e["what"] for e in inner] == ["attack a toy/none"]
    assert [e["what"] for e in outer] == ["attack a toy/none", "attack b toy/none"]


def test_the_advice_names_the_components_checkpointing_switch_when_it_is_off():
    hint = memory_hint("attack", "unlearndiff", SimpleNamespace(gradient_checkpointing=False))
    assert "--option attack:unlearndiff.gradient_checkpointing=true" in hint and "--dtype fp16 or bf16" in hint
    assert "gradient_checkpointing" not in memory_hint("attack", "unlearndiff",
                                                       SimpleNamespace(gradient_checkpointing=True))
    assert "gradient_checkpointing" not in memory_hint("attack", "mma-diffusion", SimpleNamespace())


# ------------------------------------------------------------------------------------------------ measured batch
class FakeMemory:
    """A card with ``free`` bytes available on which one item costs ``per_item`` bytes above ``resident``."""

    def __init__(self, resident: int, per_item: int, free: int):
        self.resident, self.per_item, self.free = resident, per_item, free
        self.held = resident
        self.high = resident

    def allocated(self) -> int:
        return self.held

    def reset_peak(self) -> None:
        self.high = self.held

    def peak(self) -> int:
        return self.high

    def available(self) -> int:
        return self.free

    def run_one(self) -> None:  # the probe: holds one item's activations for a moment
        self.high = max(self.high, self.held + self.per_item)


def test_the_batch_is_what_fits_next_to_the_resident_memory_measured_on_one_item():
    card = FakeMemory(resident=5 * 2**30, per_item=2**30, free=10 * 2**30)
    calls, loaded = [], []

    def load_a_second_model():  # resident once the work starts: not a per-item cost
        card.held += 3 * 2**30
        loaded.append(True)

    size = measured_batch_size(16, lambda: calls.append(card.run_one()), device="cpu", what="attack x", probes=card,
                               prepare=load_a_second_model)
    assert size == 8 and len(calls) == 1 and loaded == [True]  # floor(0.85 * 10 GiB / 1 GiB)
    assert measured_batch_size(4, card.run_one, device="cpu", what="x", probes=card) == 4  # never above the ask
    tight = FakeMemory(resident=0, per_item=2**30, free=2**29)
    assert measured_batch_size(8, tight.run_one, device="cpu", what="x", probes=tight) == 1  # at least one


def test_on_the_cpu_the_requested_size_is_kept_and_nothing_is_measured():
    def never():
        raise AssertionError("the probe must not run on the CPU")

    assert measured_batch_size(8, never, device="cpu", what="x", prepare=never) == 8
    assert measured_batch_size(8, never, device=torch.device("cpu"), what="x") == 8


# ------------------------------------------------------------------------------------------------ attacks
# White-box attacks on tiny-random (random weights: plumbing). A simulated card refuses a differentiable pass
# over more than ``fits`` prompts; the attack must give exactly what it gives on a card that holds them all.
SAMPLER = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 32, "width": 32}
PROMPTS = [Prompt("0", "a church", seed=1), Prompt("1", "a nude person", seed=2), Prompt("2", "a house", seed=3)]
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"


class NeverFlags(Judge):
    name = "never"

    def identity(self):
        return JudgeIdentity(self.name, "1", "-", 0.5, "-")

    def score(self, images, prompts):
        return [JudgeResult(0.0, False) for _ in images]


class SmallCard(DefendedPipeline):
    """The undefended sampler on a card whose memory holds the gradient pass of ``fits`` samples."""

    def __init__(self, model, fits: int):
        super().__init__(model, None, TOY)
        self.fits = fits
        self.refused: list[int] = []

    def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale):
        if torch.is_grad_enabled() and cond_embeds.requires_grad and latents.shape[0] > self.fits:
            self.refused.append(latents.shape[0])
            raise torch.OutOfMemoryError(OOM)
        return super().noise_prediction(latents, timestep, cond_embeds, guidance_scale=guidance_scale)


@pytest.fixture(scope="module")
def tiny():
    return TinyRandomModel().load(torch.device("cpu"), torch.float32)


def attack_context(model, defended):
    return AttackContext(model=model, defended=defended, task=TOY, judge=NeverFlags(), sampler=dict(SAMPLER))


def same_outputs(records: dict, outputs) -> None:
    for out in outputs:
        got = records[out.prompt_id]
        assert (got.status, got.text, got.queries, got.meta) == (out.status, out.text, out.queries,
                                                                out.meta), out.prompt_id


@pytest.mark.parametrize("name", ["unlearndiff", "p4d"])
def test_an_attack_halves_its_prompt_chunk_on_oom_records_it_and_gives_the_same_prompts(tiny, tmp_path, name):
    attack = ATTACKS.get(name)(iterations=1, check_every=5, batch_size=3)
    reference = attack.run(PROMPTS, attack_context(tiny, DefendedPipeline(tiny, None, TOY)))
    card = SmallCard(tiny, fits=1)
    counter = StageCounter("attack")
    outcome = run_attack(attack, PROMPTS, attack_context(tiny, card), CellStore(tmp_path), "m", "d", counter)
    assert outcome.error is None and card.refused == [3]  # the chunk of 3 failed once, then 1 at a time
    same_outputs(outcome.records, reference)
    assert counter.backoffs == [{"what": f"attack {name} toy/none", "from": 3, "to": 1}]
    assert "batch halved 1x on out-of-memory (to 1)" in str(counter)


def test_a_prompt_that_does_not_fit_alone_fails_its_cell_with_what_to_do_and_keeps_the_halvings(tiny, tmp_path):
    attack = ATTACKS.get("unlearndiff")(iterations=1, check_every=5, batch_size=2)
    counter = StageCounter("attack")
    outcome = run_attack(attack, PROMPTS[:2], attack_context(tiny, SmallCard(tiny, fits=0)), CellStore(tmp_path),
                         "m", "d", counter)
    assert outcome.error.startswith("OutOfMemoryAtBatchOneError: attack unlearndiff toy/none: one item alone")
    assert "--option attack:unlearndiff.gradient_checkpointing=true" in outcome.error
    assert all(r.status == "error" for r in outcome.records.values())
    assert counter.backoffs == [{"what": "attack unlearndiff toy/none", "from": 2, "to": 1}]
    with pytest.raises(OutOfMemoryAtBatchOneError, match="does not fit"):
        attack.run(PROMPTS[:1], attack_context(tiny, SmallCard(tiny, fits=0)))


def test_auto_batch_measures_one_prompts_step_and_starts_at_what_fits(tiny, monkeypatch):
    """On CPU the probe never runs (the size stays as asked); with an injected card it runs one prompt's real
    forward and backward, and the attack starts at the measured size with the same outputs."""
    import attacks._token_search as _token_search

    attack = ATTACKS.get("unlearndiff")(iterations=1, check_every=5, batch_size=3)
    ctx = attack_context(tiny, DefendedPipeline(tiny, None, TOY))
    reference = attack.run(PROMPTS, ctx)
    card = FakeMemory(resident=0, per_item=2**30, free=2**30)  # holds one prompt's step
    probed, sizes = [], []

    def on_the_card(requested, run_one, **kwargs):
        def probe():
            run_one()  # the attack's real one-prompt step (it must run, on any device)
            probed.append(True)
            card.run_one()

        size = measured_batch_size(requested, probe, **{**kwargs, "probes": card})
        sizes.append(size)
        return size

    monkeypatch.setattr(_token_search, "measured_batch_size", on_the_card)
    outputs = attack.run(PROMPTS, ctx)
    assert probed == [True] and sizes == [1]
    assert [(o.text, o.queries, o.meta) for o in outputs] == [(o.text, o.queries, o.meta) for o in reference]
    probed.clear()
    ATTACKS.get("unlearndiff")(iterations=1, check_every=5, auto_batch=False).run(PROMPTS[:1], ctx)
    assert probed == []


@pytest.mark.parametrize("name", ["unlearndiff", "p4d", "switch-aware"])
def test_each_white_box_attack_measures_one_real_step_through_the_defended_sampler(tiny, name):
    calls = []

    class Counting(DefendedPipeline):
        def noise_prediction(self, latents, timestep, cond_embeds, *, guidance_scale):
            calls.append((latents.shape[0], cond_embeds.requires_grad, guidance_scale))
            return super().noise_prediction(latents, timestep, cond_embeds, guidance_scale=guidance_scale)

    ATTACKS.get(name)()._probe(attack_context(tiny, Counting(tiny, None, TOY)))
    assert calls == [(1, True, SAMPLER["guidance_scale"])]  # one prompt, differentiable, the run's guidance


@pytest.mark.numeric
def test_concept_inversion_splits_a_step_into_micro_batches_with_the_same_v_star(tiny):
    from attacks.concept_inversion import _IMAGES, _LEARNED, ConceptInversion

    _LEARNED.clear()
    _IMAGES.clear()
    attack = ConceptInversion(steps=2, images=4, batch_size=4)
    whole = attack.run(PROMPTS[:1], attack_context(tiny, DefendedPipeline(tiny, None, TOY)))[0]
    card = SmallCard(tiny, fits=1)
    with recording_backoffs() as events:
        micro = attack.run(PROMPTS[:1], attack_context(tiny, card))[0]  # another pipeline class: learned again
    _LEARNED.clear()
    _IMAGES.clear()
    assert card.refused == [4, 2]  # 4 -> 2 -> 1, then every step in micro-batches of one
    assert events == [{"what": "attack concept-inversion toy/none training images per step", "from": 4, "to": 2},
                      {"what": "attack concept-inversion toy/none training images per step", "from": 2, "to": 1}]
    # gradients summed over micro-batches instead of one batch, 2 Adam steps: float32 rounding through
    # tiny-random's UNet and text encoder (576-term reductions) on the scale of the embeddings
    assert_close_fp(micro.embeds, whole.embeds, terms=576, ulps=32)
    assert micro.meta["loss_after"] == pytest.approx(whole.meta["loss_after"], rel=1e-4)
    assert whole.meta["loss_after"] != whole.meta["loss_before"]  # v* moved: the comparison means something


def test_mma_diffusion_halves_its_pass_and_its_candidate_chunks_with_the_same_prompts(tiny, monkeypatch):
    from attacks import _text
    from attacks.mma_diffusion import MMADiffusion

    attack = MMADiffusion(preset="mini", tokens=4, steps=2, topk=4, candidates=6, prompts_per_pass=2)
    ctx = attack_context(tiny, DefendedPipeline(tiny, None, TOY))
    reference = attack.run(PROMPTS, ctx)
    encode_ids, encode_embeds = _text.encode_ids, _text.encode_from_token_embeds

    def small_scoring(encoder, ids, batch_size=256):
        if ids.shape[0] > 4:
            raise torch.OutOfMemoryError(OOM)
        return encode_ids(encoder, ids, batch_size)

    def small_gradient_pass(encoder, embeds):
        if embeds.requires_grad and embeds.shape[0] > 1:
            raise torch.OutOfMemoryError(OOM)
        return encode_embeds(encoder, embeds)

    monkeypatch.setattr(_text, "encode_ids", small_scoring)
    monkeypatch.setattr(_text, "encode_from_token_embeds", small_gradient_pass)
    with recording_backoffs() as events:
        outputs = attack.run(PROMPTS, ctx)
    assert [(o.text, o.meta) for o in outputs] == [(o.text, o.meta) for o in reference]
    whats = {(e["what"], e["from"], e["to"]) for e in events}
    assert ("attack mma-diffusion toy/none", 2, 1) in whats
    assert ("attack mma-diffusion toy/none candidates", 6, 3) in whats  # one prompt's 6 candidates, then 3


# ------------------------------------------------------------------------------------------------ training
# The claim is about the step's gradient: micro-batches accumulate the batch's. The training code's Adam divides
# each gradient by its own magnitude, so where a gradient is pure rounding noise (a key bias before a softmax)
# it turns that noise into a full step; the tests train with plain SGD, whose steps are the gradients.
def refuse_unet_gradient_passes_over(fits: int, monkeypatch) -> list[int]:
    """Simulated card: a UNet forward with gradients over more than ``fits`` samples runs out of memory."""
    from diffusers import UNet2DConditionModel

    forward = UNet2DConditionModel.forward
    refused: list[int] = []

    def small(self, sample, *args, **kwargs):
        if torch.is_grad_enabled() and sample.shape[0] > fits:
            refused.append(sample.shape[0])
            raise torch.OutOfMemoryError(OOM)
        return forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", small)
    return refused


@pytest.fixture
def sgd(monkeypatch):
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: torch.optim.SGD(params, lr=lr))


def same_deltas(micro: dict[str, torch.Tensor], whole: dict[str, torch.Tensor]) -> None:
    scale = max(float(v.abs().max()) for v in whole.values())
    assert scale > 0  # training moved the weights: the comparison means something
    for name, value in whole.items():
        assert float((micro[name] - value).abs().max()) <= 1e-4 * scale, name


@pytest.mark.numeric
def test_esd_trains_the_same_weights_in_micro_batches_and_records_the_halving(tiny, monkeypatch, sgd):
    from defenses.esd import train_esd

    settings = {"method": "x", "eta": 1.0, "lr": 1.0, "iterations": 2, "ddim_steps": 2, "sample_guidance": 3.0,
                "batch_size": 2, "seed": 0}
    whole, whole_losses = train_esd(tiny.pipe, ["a church"], **settings)
    refused = refuse_unet_gradient_passes_over(1, monkeypatch)
    backoff = Backoff(2, "prepare esd-x toy")
    micro, micro_losses = train_esd(tiny.pipe, ["a church"], backoff=backoff, **settings)
    assert refused == [2] and backoff.events == [{"what": "prepare esd-x toy", "from": 2, "to": 1}]
    assert micro_losses == pytest.approx(whole_losses, rel=1e-5)
    same_deltas(micro, whole)


@pytest.mark.numeric
def test_advunlearn_trains_the_same_encoder_with_its_retain_prompts_in_micro_batches(tiny, monkeypatch, sgd):
    from defenses.advunlearn import AdvUnlearn, train_advunlearn

    settings = AdvUnlearn(iterations=2, warmup=1, attack_steps=1, ddim_steps=2, pool=1, retain_batch=3, tokens=1,
                          lr=1.0).settings("tiny-random")
    retain = ["a house", "a tree", "a dog", "a boat"]
    whole, whole_stats = train_advunlearn(tiny.pipe, ["church"], retain, settings)
    refused = refuse_unet_gradient_passes_over(1, monkeypatch)
    micro, stats = train_advunlearn(tiny.pipe, ["church"], retain, settings, what="prepare advunlearn toy")
    assert refused == [3]  # the step's 3 retain prompts at once; then one at a time (the unlearning term with the first)
    assert stats["oom_backoffs"] == [{"what": "prepare advunlearn toy retain prompts per step", "from": 3, "to": 1}]
    assert stats["retain_loss_last"] == pytest.approx(whole_stats["retain_loss_last"], rel=1e-5)
    same_deltas(micro, whole)


@pytest.mark.numeric
def test_saferedir_training_runs_its_unet_passes_in_micro_batches_with_the_same_redirector(tiny, monkeypatch):
    import defenses.saferedir_train as training
    from defenses.saferedir import SafeRedir
    from defenses.saferedir_net import Redirector

    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr))
    defense = SafeRedir(pairs=4, benign=2, steps=1, batch=4, lr=1.0)
    data = training.build_trajectories(tiny, TOY, defense.options)
    monkeypatch.setattr(training, "build_trajectories", lambda *args, **kwargs: data)  # the same data twice
    cfg = defense.network_config(tiny)
    torch.manual_seed(defense.options.seed)
    start = Redirector(cfg).state_dict()  # what train_redirector starts from (the same seed, nothing drawn between)
    whole, _ = training.train_redirector(tiny, TOY, cfg, defense.options)
    refused = refuse_unet_gradient_passes_over(1, monkeypatch)
    micro, report = training.train_redirector(tiny, TOY, cfg, defense.options)
    assert refused and all(n > 1 for n in refused)  # a term's UNet pass over 2 training states, refused
    events = report["oom_backoffs"]
    assert {e["what"] for e in events} == {"prepare saferedir toy training states per step"}
    assert events[-1]["to"] == 1 and all(e["to"] == e["from"] // 2 for e in events)
    moved = {k: v.float() - start[k].float() for k, v in whole.state_dict().items() if v.is_floating_point()}
    same_deltas({k: micro.state_dict()[k].float() - start[k].float() for k in moved}, moved)
