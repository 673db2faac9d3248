"""Random token search: a tutorial white-box attack written on the token-search base class.

Load it as a plugin: ``python -m benchmark run --plugin examples/plugins/random_token_search.py
--model tiny-random --task toy --defense none --attack random-token-search``.

Algorithm box (per prompt; the loop, the checks, the targets and the batching are the base class's,
:mod:`attacks._token_search`; this file writes only ``begin``, ``step`` and ``candidate``):

1. Start: ``tokens`` random vocabulary tokens (special tokens excluded) before the prompt, drawn from the
   prompt's own generator.
2. Step ``i``: propose one substitution (a random position, a random token); score the current and the
   proposed prompt with the base class's loss, ``|| eps_defended(x_t, t_i, c) - eps ||^2`` on the
   undefended target ``x0`` noised by one shared fresh noise at ``t_i`` (timesteps cycled in a seeded
   order); keep the proposal if its loss is lower. No gradient: a black-box-style search of a white-box loss.
3. Checks, early stop, outputs: the base class's (``check_every``, the judge; the latest candidate).

Defaults: this is no paper's method; ``paper`` = 40 iterations and a check every 10 on GPU models, ``mini``
= 8 iterations and a check every 4 on sd-mini and tiny-random; 3 tokens. Each iteration costs two
no-gradient forward passes of the defended sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from pydantic import Field

from attacks import _text
from attacks._token_search import SearchState, TokenSearchAttack, TokenSearchOptions
from benchmark.api.presets import MINI_ON_SMALL_MODELS, Presets
from benchmark.api.registry import ATTACKS

PAPER = {"iterations": 40, "check_every": 10}
MINI = {"iterations": 8, "check_every": 4}


@dataclass
class RandomTokenSearchOptions(TokenSearchOptions):
    tokens: Annotated[int, Field(ge=1, description="random tokens put before the prompt")] = 3


@dataclass
class _State(SearchState):
    content: list[int] = field(default_factory=list)  # the prompt's tokens
    adv: list[int] = field(default_factory=list)  # the searched tokens


@ATTACKS.register("random-token-search")
class RandomTokenSearch(TokenSearchAttack):
    """Random token substitutions kept when they lower the defended sampler's diffusion loss."""

    Options = RandomTokenSearchOptions
    State = _State
    in_all = False  # a tutorial: run by name
    presets = Presets({"paper": PAPER, "mini": MINI}, by_model=MINI_ON_SMALL_MODELS, key="presets")

    def make_state(self, prompt, seed, guidance, generator, tokenizer, budget) -> _State:
        return _State(prompt, seed, guidance, generator, content=_text.content_ids(tokenizer, prompt.text))

    def begin(self, ctx, states: list[_State], budget: dict[str, Any]) -> dict[str, Any]:
        pipe = ctx.defended.pipe
        vocab = _text.searchable_token_ids(pipe.tokenizer)
        for st in states:
            st.adv = vocab[torch.randint(len(vocab), (self.options.tokens,), generator=st.generator)].tolist()
        scheduler = self._scheduler(ctx)
        order = torch.randperm(len(scheduler.timesteps), generator=torch.Generator().manual_seed(self.options.seed))
        return {"vocab": vocab, "scheduler": scheduler, "order": order, "tokenizer": pipe.tokenizer}

    def _losses(self, ctx, search: dict[str, Any], states: list[_State], tokens: list[list[int]],
                t: torch.Tensor) -> torch.Tensor:
        """The base class's loss of each prompt with ``tokens`` in front (no gradient)."""
        ids = [_text.layout(search["tokenizer"], adv + st.content)[0] for st, adv in zip(states, tokens, strict=True)]
        pipe = ctx.defended.pipe
        with torch.no_grad():
            cond = _text.encode_ids(pipe.text_encoder, torch.tensor(ids, device=pipe.device)).to(pipe.unet.dtype)
            return self.diffusion_losses(ctx, states, cond, t, search["scheduler"])

    def step(self, ctx, search: dict[str, Any], active: list[_State], it: int) -> None:
        timesteps = search["scheduler"].timesteps
        t = timesteps[search["order"][(it - 1) % len(timesteps)]]
        proposals = []
        for st in active:  # one substitution per prompt, from its own generator
            position = int(torch.randint(len(st.adv), (1,), generator=st.generator))
            token = int(search["vocab"][torch.randint(len(search["vocab"]), (1,), generator=st.generator)])
            proposals.append(st.adv[:position] + [token] + st.adv[position + 1:])
        saved = [st.generator.get_state() for st in active]
        current = self._losses(ctx, search, active, [st.adv for st in active], t)
        for st, state in zip(active, saved, strict=True):  # the same noise for the proposal: a fair comparison
            st.generator.set_state(state)
        proposed = self._losses(ctx, search, active, proposals, t)
        for st, adv, before, after in zip(active, proposals, current, proposed, strict=True):
            if after < before:
                st.adv = adv

    def candidate(self, search: dict[str, Any], st: _State) -> tuple[str, list[int]]:
        text = f"{_text.decode(search['tokenizer'], st.adv)} {st.prompt.text}".strip()
        return text, _text.layout(search["tokenizer"], st.adv + st.content)[0]
