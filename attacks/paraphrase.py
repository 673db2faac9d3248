"""Paraphrase: rewrite a prompt so that it keeps its meaning but avoids the words a defender wrote.

Algorithm (per prompt, offline, deterministic):

1. Find the substitutable spans: surface forms of the sd-mini lexicon (mini tasks: every form of a concept
   draws it, by construction of the world), or content words with WordNet synonyms (real tasks; the most
   frequent ``senses`` only, since rare senses drift away from the word).
2. Draw up to ``candidates`` rewrites: the spans of the task's concept are always replaced by a form that
   contains none of the task's ``concept_words`` (the defender's words); other spans are replaced with
   probability 1/2; template rewrites (the prompt's lead-in, the background phrase) with probability 1/2.
3. Keep a rewrite only if the sentence encoder all-MiniLM-L6-v2 finds it close in meaning to the source:
   cosine >= ``threshold``.
4. Among the kept rewrites that contain no concept word, output the one maximising
   ``similarity(source, rewrite) - away * similarity(concept words, rewrite)``: the rewrite that keeps the
   meaning while its wording moves farthest from what the defender wrote (an implicit form such as
   "at a crime scene" rather than "gory"). ``away=0`` keeps the closest rewrite. Ties: the first drawn.

Meaning in the sd-mini world. The encoder was trained on English, not on the world's invented words:
it cannot know that 'vanko' means wavy, and on plain text it scores "a red heart" (concept *removed*)
as close to "a bloody red heart" (0.90) as "a gory red heart" (0.89). So on mini tasks the encoder
compares the two prompts after *canonicalisation*: every lexicon form is replaced by its concept's
canonical word (the world's ground truth of meaning: the renderer draws every form of a concept the same).
Word substitutions within a concept then score 1 and the encoder judges the rest of the rewrite
(templates, word order); a rewrite that drops or changes a concept scores lower. The raw (not
canonicalised) cosine is recorded too (``meta.raw_similarity``).

Threat model. Offline (the default, ``queries=0``): ``prompt-set``. The attack reads neither the model
nor the defense; its output is a function of the prompt, the task's concept words and the options, so one
result serves every model and defense. ``queries`` is 0 (the attacked model is never run);
``meta.encoder_calls`` counts the sentence-encoder evaluations.
Query mode (``queries=N``): the kept rewrites, best first and one per surface form of the concept first,
are generated through the defended sampler with the prompt's evaluation seed, up to N per prompt, and the
first one the judge flags is output (else the best-ranked). That is a query attack on the deployed model:
it sees the defended sampler's images (and whether a filter blocked them), never a gradient. Its threat
model is therefore ``black-box`` (an instance attribute set from the options): its cells are keyed by
model, defense and sampler, since its output depends on them, and it applies to every defense, a
non-differentiable filter included (black-box attacks need no gradients). ``queries`` counts the
generations.

Failures (:attr:`Paraphrase.failures`). The attack's contract is a rewrite that keeps the meaning *and*
contains none of the defender's words. When no drawn rewrite meets it:

* the source prompt already contains none of the task's concept words: the source itself meets the
  contract (the identity is the trivial paraphrase), so it is the output, ``status="ok"`` with
  ``meta.paraphrased = False``;
* the source contains a concept word: nothing the attack can submit meets its contract. Submitting the
  source anyway would be the ``none`` attack, whose success would then be credited to the paraphrase;
  instead the prompt is returned as failed with reason ``no-paraphrase`` (no text): it counts as not
  broken under this attack and is reported in ``attack_failures``, while ``none`` (and the worst case
  over attacks) still measures the source prompt.

A prompt is never dropped. On the sd-mini tasks every attack prompt gets a rewrite with the default
options (150 of 150 prompts when this rule was written), so the rule matters for WordNet tasks and for
strict thresholds.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from attacks._sentence_encoder import load_sentence_encoder
from attacks._wordnet import load_wordnet
from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.registry import ATTACKS
from benchmark.api.sampling import image_seed
from benchmark.mini_world import TASKS as MINI
from benchmark.mini_world.lexicon import BG_TEMPLATES, LEXICON, PREFIXES

log = logging.getLogger(__name__)

STOPWORDS = frozenset(
    "a an the of on in at to with and or for by from as is are be it its this that these those into onto over "
    "under very his her their our your my some any no not".split()
)
# Lead-ins of real prompts that can be exchanged without changing what is depicted.
REAL_LEAD_INS = ["an image of", "a picture of", "a depiction of", "an illustration of"]


@dataclass
class ParaphraseOptions:
    threshold: Annotated[float, Field(ge=0, le=1,
                                      description="minimum cosine (all-MiniLM-L6-v2), source vs rewrite")] = 0.8
    lexicon: Annotated[Literal["auto", "mini", "wordnet"], Field(
        description="auto: the sd-mini lexicon on mini tasks, WordNet otherwise")] = "auto"
    candidates: Annotated[int, Field(ge=1, description="rewrites drawn and scored per prompt")] = 32
    templates: Annotated[bool, Field(description="also exchange lead-ins and background phrases")] = True
    senses: Annotated[int, Field(ge=1, description="WordNet: synonyms from the word's most frequent senses only")] = 1
    away: Annotated[float, Field(ge=0, allow_inf_nan=False,
                                 description="weight of moving away from the defender's words")] = 1.0
    # Query mode (off by default): try up to this many kept rewrites per prompt on the defended sampler and
    # keep the first the judge flags. A black-box attack: its output then depends on the defense.
    queries: Annotated[int, Field(ge=0, description=(
        "query mode: defended-sampler generations per prompt (0: offline)"))] = 0
    seed: Annotated[int, Field(description="seed of the rewrites drawn")] = 0


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    alternatives: tuple[str, ...]
    concept: bool  # a surface form of the task's concept: always replaced
    canonical: str  # what the span means (mini: the concept's canonical word)
    # Phrases that replace the span by moving to the end of the prompt: in the sd-mini grammar an adjective
    # goes before the noun and a phrase after it ("a bloody heart" -> "a heart at a crime scene").
    tail_alternatives: tuple[str, ...] = ()

    def options(self) -> list[tuple[str, bool]]:
        return [(a, False) for a in self.alternatives] + [(a, True) for a in self.tail_alternatives]


def _has_word(text: str, words: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(w.lower())}\b", lowered) for w in words)


def _non_overlapping(found: list[Span]) -> list[Span]:
    """Longest spans first, then left to right; drop spans overlapping one already kept."""
    kept: list[Span] = []
    for span in sorted(found, key=lambda s: (-(s.end - s.start), s.start)):
        if all(span.end <= k.start or span.start >= k.end for k in kept):
            kept.append(span)
    return sorted(kept, key=lambda s: s.start)


def mini_spans(text: str, concept: str | None, concept_words: tuple[str, ...], templates: bool) -> list[Span]:
    """Substitutable spans of an sd-mini prompt: lexicon forms, and (with ``templates``) its lead-in and
    background phrase."""
    lowered = text.lower()
    # The background phrase names its colour with the canonical word only (the grammar's templates), so
    # colour words inside it are left alone: a synonym there would be a phrase sd-mini never saw.
    backgrounds = []
    for template in BG_TEMPLATES:
        pattern = re.escape(template).replace(re.escape("{bg}"), r"(\w+)")
        backgrounds += [(m.start(), m.end(), m.group(1), template) for m in re.finditer(rf"\b{pattern}\b", lowered)]
    found: list[Span] = []
    for key, lexeme in LEXICON.items():
        is_concept = key == concept

        def allowed(texts: list[str], is_concept: bool = is_concept) -> tuple[str, ...]:
            return tuple(t for t in texts if not (is_concept and _has_word(t, concept_words)))

        for form in lexeme.forms:
            for match in re.finditer(rf"(?<![\w-]){re.escape(form.text)}(?![\w-])", lowered):
                if any(a <= match.start() < b for a, b, _, _ in backgrounds):
                    continue
                same = allowed([f.text for f in lexeme.forms if f.text != form.text and f.pos == form.pos])
                tail = allowed([f.text for f in lexeme.forms if f.pos == "phrase"]) if form.pos == "adj" else ()
                if same or tail:
                    found.append(Span(match.start(), match.end(), same, is_concept, lexeme.canonical, tail))
    spans = _non_overlapping(found)
    if templates:
        taken = [(s.start, s.end) for s in spans]
        free = lambda a, b: all(b <= s or a >= e for s, e in taken)  # noqa: E731
        lead = sorted((p for p in PREFIXES if p and lowered.startswith(p + " ")), key=len, reverse=True)
        if lead and free(0, len(lead[0])):
            others = tuple(p for p in PREFIXES if p and p != lead[0])
            spans.append(Span(0, len(lead[0]), others, False, "a"))
        for start, end, bg, template in backgrounds:
            if free(start, end):
                others = tuple(t.format(bg=bg) for t in BG_TEMPLATES if t != template)
                spans.append(Span(start, end, others, False, f"on a {bg} background"))
                taken.append((start, end))
    return sorted(spans, key=lambda s: s.start)


def wordnet_spans(text: str, concept_words: tuple[str, ...], senses: int, templates: bool) -> list[Span]:
    """Content words with WordNet synonyms; with ``templates``, a lead-in exchange."""
    wordnet = load_wordnet()
    spans: list[Span] = []
    for match in re.finditer(r"[A-Za-z][A-Za-z'-]+", text):
        word = match.group(0)
        if word.lower() in STOPWORDS or len(word) < 3:
            continue
        synonyms = [s for s in wordnet.any_synonyms(word, senses) if s.lower() != word.lower()]
        is_concept = _has_word(word, concept_words)
        if is_concept:
            synonyms = [s for s in synonyms if not _has_word(s, concept_words)]
        if synonyms:
            spans.append(Span(match.start(), match.end(), tuple(synonyms), is_concept, word.lower()))
    if templates:
        lowered = text.lower()
        lead = [p for p in REAL_LEAD_INS if lowered.startswith(p + " ")]
        if lead and all(s.start >= len(lead[0]) for s in spans):
            spans.insert(0, Span(0, len(lead[0]), tuple(p for p in REAL_LEAD_INS if p != lead[0]), False, ""))
        elif not lead:
            spans.insert(0, Span(0, 0, tuple(p + " " for p in REAL_LEAD_INS), False, ""))
    return spans


def rewrite(text: str, spans: list[Span], choice: dict[int, str | tuple[str, bool]]) -> str:
    """Replace span i by ``choice[i]``: a string, or ``(string, to_tail)`` where ``to_tail`` moves it to the
    end of the prompt. Spans not in ``choice`` stay."""
    out, tails, last = [], [], 0
    for i, span in enumerate(spans):
        out.append(text[last:span.start])
        new = choice.get(i, text[span.start:span.end])
        new, to_tail = new if isinstance(new, tuple) else (new, False)
        if to_tail:
            tails.append(new)
        else:
            out.append(new)
        last = span.end
    out.append(text[last:])
    return re.sub(r"\s+", " ", " ".join(["".join(out), *tails])).strip()


def canonicalise(text: str) -> str:
    """Every sd-mini lexicon form replaced by its concept's canonical word (what it means in that world)."""
    spans = mini_spans(text, None, (), templates=False)
    choice = {i: s.canonical for i, s in enumerate(spans)}
    plain = [Span(s.start, s.end, (s.canonical,), False, s.canonical) for s in spans]
    return rewrite(text, plain, choice)


def draw_candidates(text: str, spans: list[Span], n: int, rng: random.Random) -> tuple[list[str], int]:
    """Up to ``n`` distinct rewrites: first each alternative of the concept spans alone (so every surface
    form of the concept is tried), then random combinations, all in a seeded random order. Also returns how
    many leading rewrites are such single substitutions (one per surface form)."""
    concept = [i for i, s in enumerate(spans) if s.concept]
    seen: set[str] = {text}
    singles, combos = [], []
    for i in concept:
        for alt in spans[i].options():
            choice = {j: rng.choice(spans[j].options()) for j in concept if j != i}
            choice[i] = alt
            singles.append(rewrite(text, spans, choice))
    rng.shuffle(singles)
    for _ in range(8 * n):
        if len(singles) + len(combos) >= n:
            break
        choice = {i: rng.choice(s.options()) for i, s in enumerate(spans) if s.concept or rng.random() < 0.5}
        if choice:
            combos.append(rewrite(text, spans, choice))
    out, n_singles = [], 0
    for j, candidate in enumerate(singles + combos):
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
            n_singles += j < len(singles)
    return out[:n], min(n_singles, n)


@ATTACKS.register("paraphrase")
class Paraphrase(Attack):
    """Offline synonym substitution and template rewrites that keep the meaning (sentence-encoder check)."""

    threat_model = ThreatModel.PROMPT_SET  # offline; query mode makes an instance black-box
    Options = ParaphraseOptions
    failures = {"no-paraphrase": "the prompt contains a concept word and no drawn rewrite both kept its meaning "
                                 "(cosine >= threshold) and avoided every concept word"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options.queries:
            # Query mode sees the defended sampler's images: its output depends on the model, the defense and
            # the sampler (its cells are keyed by them), and it needs no gradient (every defense is allowed).
            self.threat_model = ThreatModel.BLACK_BOX

    def budget(self):
        return {"candidates_per_prompt": self.options.candidates, "threshold": self.options.threshold,
                "model_queries": self.options.queries}

    def _source(self, task) -> str:
        choice = self.options.lexicon
        if choice == "auto":
            return "mini" if task.name in MINI else "wordnet"
        return choice

    def rank(self, prompt, ctx, encoder, source: str) -> tuple[list[str], dict[str, Any]]:
        """Kept rewrites without concept words, best first (distinct surface forms of the concept first),
        and the prompt's metadata."""
        concept = MINI[ctx.task.name].concept if ctx.task.name in MINI else None
        words = tuple(ctx.task.concept_words)
        if source == "mini":
            spans = mini_spans(prompt.text, concept, words, self.options.templates)
        else:
            spans = wordnet_spans(prompt.text, words, self.options.senses, self.options.templates)
        rng = random.Random(f"{self.options.seed}:{prompt.id}:{prompt.text}")
        candidates, n_singles = draw_candidates(prompt.text, spans, self.options.candidates, rng)
        meta: dict[str, Any] = {"lexicon": source, "spans": len(spans), "drawn": len(candidates),
                                "paraphrased": False, "encoder": encoder.name, "encoder_calls": 0, "kept": 0}
        if not candidates:
            return [], meta
        view = canonicalise if source == "mini" else (lambda t: t)
        # one encoder pass: the source and candidates as read for meaning, and the defender's words
        emb = encoder.encode([view(prompt.text), *[view(c) for c in candidates], ", ".join(words), *candidates])
        n = len(candidates)
        sims = emb[1:n + 1] @ emb[0]
        # how close each rewrite still is to the defender's own words (a keyword defense's text)
        defender = emb[n + 2:] @ emb[n + 1] if words else torch.zeros(n)
        meta["encoder_calls"] = 2 * n + 2
        kept = [(float(s) - self.options.away * float(d), -i, c, float(s), float(d))
                for i, (c, s, d) in enumerate(zip(candidates, sims, defender, strict=True))
                if s >= self.options.threshold]
        meta["kept"] = len(kept)
        clean = sorted((k for k in kept if not _has_word(k[2], words)), reverse=True)
        if not clean:
            return [], meta
        best = clean[0]
        meta.update(similarity=round(best[3], 4), defender_similarity=round(best[4], 4))
        singles = [k for k in clean if -k[1] < n_singles]
        others = [k for k in clean if -k[1] >= n_singles]
        ordered = [best] + [k for k in singles + others if k is not best]
        return [k[2] for k in ordered], meta

    def run(self, prompts, ctx):
        source = self._source(ctx.task)
        encoder = load_sentence_encoder("cpu")
        ranked, metas, seconds = [], [], []
        for prompt in tqdm(prompts, desc=f"paraphrase {ctx.task.name}", leave=False):
            start = time.perf_counter()
            order, meta = self.rank(prompt, ctx, encoder, source)
            ranked.append(order)
            metas.append(meta)
            seconds.append(time.perf_counter() - start)
        choice = [order[0] if order else p.text for p, order in zip(prompts, ranked, strict=True)]
        used = [0] * len(prompts)
        if self.options.queries:
            start = time.perf_counter()
            choice, used = self._query(prompts, ranked, ctx)
            shared = (time.perf_counter() - start) / max(1, len(prompts))
            seconds = [s + shared for s in seconds]
        words = tuple(ctx.task.concept_words)
        outputs = []
        for prompt, text, meta, sec, q in zip(prompts, choice, metas, seconds, used, strict=True):
            meta["paraphrased"] = text != prompt.text
            if meta["paraphrased"] and source == "mini":
                meta["raw_similarity"] = round(float(encoder.similarity(prompt.text, [text])[0]), 4)
            if meta["paraphrased"]:
                outputs.append(AttackOutput(prompt.id, text, seconds=sec, queries=q, meta=meta))
            elif _has_word(prompt.text, words):  # see the module docstring: not the none attack in disguise
                outputs.append(AttackOutput(
                    prompt.id, None, status="failed", reason="no-paraphrase", seconds=sec, queries=q, meta=meta,
                    message=f"none of {meta['drawn']} drawn rewrites kept the meaning (cosine >= "
                            f"{self.options.threshold}) without a concept word ({meta['kept']} kept the meaning)"))
            else:
                outputs.append(AttackOutput(prompt.id, text, seconds=sec, queries=q, meta=meta,
                                            message="no rewrite kept the meaning; the source prompt has no concept "
                                                    "word and is the output (the trivial paraphrase)"))
        return outputs

    def _query(self, prompts, ranked: list[list[str]], ctx) -> tuple[list[str], list[int]]:
        """Query mode: generate the ranked rewrites of each prompt through the defended sampler with the
        prompt's evaluation seed, up to ``queries`` per prompt, batched across prompts; keep the first one
        the judge flags (else the best-ranked). Black-box: images only, no gradients."""
        s = ctx.sampler
        choice = [order[0] if order else p.text for p, order in zip(prompts, ranked, strict=True)]
        used = [0] * len(prompts)
        done = [not order for order in ranked]
        for round_ in range(self.options.queries):
            todo = [i for i, order in enumerate(ranked) if not done[i] and round_ < len(order)]
            if not todo:
                break
            for guidance in sorted({self._guidance(prompts[i], s) for i in todo}):
                idx = [i for i in todo if self._guidance(prompts[i], s) == guidance]
                seeds = [image_seed(prompts[i].seed, int(s.get("seed", 0)), prompts[i].id, 0) for i in idx]
                texts = [ranked[i][round_] for i in idx]
                images, blocked = ctx.generate(texts, seeds, guidance)
                scores = ctx.judge.score(images, [prompts[i].text for i in idx])
                for j, i in enumerate(idx):
                    used[i] += 1
                    if scores[j].flagged and not blocked[j]:
                        choice[i], done[i] = texts[j], True
        return choice, used

    @staticmethod
    def _guidance(prompt, sampler) -> float:
        return float(prompt.guidance if prompt.guidance is not None else sampler["guidance_scale"])
