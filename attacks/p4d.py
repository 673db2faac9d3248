"""P4D, Prompting4Debugging (Chin et al., ICML 2024): hard-prompt optimisation (PEZ-style) so that the
*defended* model's noise prediction for the adversarial prompt matches the *undefended* model's noise
prediction for the source prompt.

Upstream: github.com/joycenerd/P4D, ``prompt_optimization/optimize_n.py`` (P4D-N), ``optimize_k.py`` (P4D-K),
``run_p4dn.py`` / ``run_p4dk.py`` and ``configs/*_optmz_config.json`` (defaults below are read there).

Algorithm box (per batch of prompts, each prompt with its own randomness, so a result does not depend on
its batch):

1. Target image: ``x0`` = the final latents of the undefended model for the source prompt with the prompt's
   evaluation seed and the run's sampler (UnlearnDiff's targets, reused: for a weight-edit defense, which
   edits the shared pipeline while applied, a pristine copy of the base model is loaded). Upstream draws
   the image with SD and VAE-encodes it (the most unsafe of 3 samples); here the one evaluation seed.
2. Check 0 (``check_source``): the source prompt is generated through the defended sampler; a prompt the
   judge already flags needs no attack and is returned unchanged (upstream keeps only such "ideal" prompts
   that SD draws unsafe and the defended model does not, ``process_data.py``). Through the undefended
   sampler (defense ``none``) the check images are drawn as the targets of step 1 (the same images).
3. Learnable tokens: continuous embeddings ``P`` initialised from random vocabulary tokens (special tokens
   excluded), optimised with AdamW (lr 0.1, weight decay 0.1). Every iteration ``P`` is projected to the
   nearest vocabulary tokens by cosine similarity; the forward pass uses the projected (hard) tokens and
   their gradient is applied to ``P`` (PEZ, Wen et al. 2023), so the loss is always that of a real prompt.
   * P4D-N (``variant=n``): the prompt is *replaced* by ``tokens`` = N free tokens (paper N = 16).
   * P4D-K (``variant=k``): a learnable token before the prompt and after every ``every_k`` = K of its
     tokens (paper K = 3; ``floor(L / K) + 1`` learnable tokens for L prompt tokens); the prompt's own
     tokens stay fixed in place. The sequence is laid out (and truncated) as the pipeline lays it out.
4. Loss at iteration i: ``|| eps_defended(x_t, t_i, c(adv)) - eps_undefended(x_t, t_i, c(prompt)) ||^2``
   (mean squared error) with ``x_t`` = ``x0`` noised by fresh noise at ``t_i``.
   * adaptive (default): ``eps_defended`` = ``ctx.defended.noise_prediction(..., guidance_scale=g)``, the
     defended sampler's own step (see UnlearnDiff); the target is the undefended sampler's prediction at the
     same guidance ``g``. Upstream compares the guided prediction of SD-NEGP / SLD with the *conditional*
     one of SD; at equal guidance the loss is zero when the defense does nothing, which upstream's is not.
   * non-adaptive (``adaptive=false``): both sides are bare conditional UNet predictions (guidance 1):
     upstream's setting against ESD.
   * ``t_i``: upstream draws ``t ~ U{0, ..., 999}`` (the training timesteps); here ``t_i`` is drawn uniformly
     from the run's sampler timesteps (25 DDIM steps cover 1..961), so defenses whose step depends on the
     step index (SLD's warm-up, SAFREE) see a step of their own sampler. The sequence is seeded by ``seed``
     and shared by the prompts of a batch.
5. Every ``check_every`` iterations and at the end: the projected tokens are decoded to text, generated
   through ``ctx.defended.generate`` with the prompt's evaluation seed and judged by ``ctx.judge``; a
   flagged (and not blocked) image stops that prompt (``early_stop``). Otherwise the final prompt is the
   checked prompt with the highest judge score. Upstream evaluates every 50 iterations without early stop
   and keeps the prompt whose image has the highest CLIP image similarity (ViT-H-14) to the target image;
   this benchmark uses the run's concept judge, which every check computes anyway and which is the metric.

Budgets (``preset``): ``paper`` = 3000 iterations, a check every 50, N = 16, K = 3, guidance 7.5 and 25
sampler steps (upstream's configs; GPU models). ``mini`` (sd-mini: 148-word vocabulary, 24 positions, 64 px,
25 steps; tiny-random) = 16 iterations, a check every 8, same N and K: an iteration costs a defended
forward + backward and an undefended forward (about 1.3 UnlearnDiff iterations), so one prompt costs
about UnlearnDiff's mini budget (20 iterations, a check every 10). Explicit options override the preset.
Cost per prompt: ``seconds`` (its batch's wall time shared equally), ``queries`` = iterations (each a
forward + backward through the defended model plus a no-gradient undefended prediction) + checks (full
generations) + 1 target generation, bounded by :meth:`P4D.query_budget`.

Steps 1, 2 and 5, the batching and the memory handling are the token-search loop's (:mod:`attacks._token_search`,
shared with UnlearnDiff); this module writes steps 3 and 4 (``begin``, ``step``, ``candidate``) and keeps the
best judged prompt (``keep_best``; every check is judged, ``judge_every_check``).

Memory (the loop's, as UnlearnDiff): prompts are optimised ``batch_size`` at a time, a chunk that runs out of memory is rerun
at half the size (same results; recorded as an ``oom_backoffs`` event naming attack, task and defense), on CUDA
``auto_batch`` starts at the batch one prompt's measured step says fits, and ``gradient_checkpointing``
recomputes the defended UNet's and text encoder's activations in the backward pass. Neither option enters the
cell key.

Every option is checked when the attack is built. The attack has no per-prompt failure (``failures`` is
empty): every prompt gets an adversarial text. A P4D-K prompt too long for the context is truncated at its
end like any prompt (``meta.truncated_tokens``); learnable tokens past the context are never optimised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from attacks import _text
from attacks._token_search import SearchState, TokenSearchAttack, TokenSearchOptions, undefended_model
from benchmark.api.defense import DefendedPipeline
from benchmark.api.presets import MINI_ON_SMALL_MODELS, Presets
from benchmark.api.prompt import Prompt
from benchmark.api.registry import ATTACKS
from benchmark.api.sampling import image_seed

log = logging.getLogger(__name__)

PAPER = {"iterations": 3000, "check_every": 50, "tokens": 16, "every_k": 3}
MINI = {"iterations": 16, "check_every": 8, "tokens": 16, "every_k": 3}


@dataclass
class P4DOptions(TokenSearchOptions):
    variant: Annotated[Literal["n", "k"], Field(
        description="n: N free tokens replace the prompt; k: a token after every K prompt tokens")] = "n"
    tokens: Annotated[int | None, Field(ge=1, description="P4D-N's N learnable tokens; None: the preset's (16)")] = None
    every_k: Annotated[int | None, Field(ge=1, description="P4D-K's K; None: the preset's (3)")] = None
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False, description="AdamW learning rate (upstream configs)")] = 0.1
    weight_decay: Annotated[float, Field(
        ge=0, allow_inf_nan=False, description="AdamW weight decay (upstream configs)")] = 0.1


def interleave(content: list[int], every_k: int) -> list[int | None]:
    """P4D-K's sequence: a learnable slot (None) first and after every ``every_k`` prompt tokens, the prompt's
    tokens kept in order: ``floor(L / K) + 1`` slots for ``L`` tokens (upstream ``optimize_k.py``)."""
    slots = len(content) // every_k + 1
    tokens = iter(content)
    return [None if i % (every_k + 1) == 0 else next(tokens) for i in range(len(content) + slots)]


@dataclass
class _State(SearchState):
    """One prompt under attack: its token sequence with learnable slots and their embeddings."""

    sequence: list[int | None] = field(default_factory=list)  # the prompt's tokens, None at a learnable one
    source_cond: torch.Tensor | None = None  # the undefended encoding of the source prompt (seq, dim)
    embeds: torch.Tensor | None = None  # continuous learnable embeddings (slots, dim)
    adv: list[int] = field(default_factory=list)  # the projected learnable tokens
    initial_text: str = ""

    @property
    def slots(self) -> list[int]:
        return [i for i, token in enumerate(self.sequence) if token is None]

    def filled(self) -> list[int]:
        adv = iter(self.adv)
        return [next(adv) if token is None else token for token in self.sequence]


@dataclass
class _Search:
    """One chunk's search: the vocabulary and its normalised embeddings, the timestep order, the optimiser."""

    vocab: torch.Tensor
    table: torch.Tensor  # (V, dim), detached
    normed: torch.Tensor  # unit rows of table[vocab], for the projection
    scheduler: Any
    order: torch.Tensor
    undefended: DefendedPipeline
    optimizer: torch.optim.Optimizer
    tokenizer: Any


def _project(embeds: torch.Tensor, normed_vocab: torch.Tensor, vocab: torch.Tensor) -> list[int]:
    """PEZ's projection: the vocabulary token nearest to each embedding by cosine similarity."""
    scores = torch.nn.functional.normalize(embeds.detach().float(), dim=-1) @ normed_vocab.T
    return vocab[scores.argmax(-1)].tolist()


@ATTACKS.register("p4d")
class P4D(TokenSearchAttack):
    """P4D: PEZ hard tokens (N replacing the prompt, or one every K tokens) matching the undefended noise."""

    Options = P4DOptions
    State = _State
    in_all = False  # 3000 iterations per prompt on GPU models: run by name, not in the default job
    keep_best = True  # the checked prompt with the highest judge score (step 5)
    judge_every_check = True
    # The budgets enter the cell keys ("presets"): changing one must not reuse results of the old one.
    presets = Presets({"paper": PAPER, "mini": MINI}, by_model=MINI_ON_SMALL_MODELS, key="presets")

    def budget(self) -> dict[str, Any]:
        return {"paper": PAPER, "mini": MINI, "variant": self.options.variant, "lr": self.options.lr,
                "weight_decay": self.options.weight_decay, "adaptive": self.options.adaptive}

    def query_budget(self, model_name: str | None) -> int | None:
        budget = self.resolved(model_name, "")
        iterations, every = budget["iterations"], budget["check_every"]
        checks = iterations // every + (1 if iterations % every else 0)
        return iterations + checks + 2  # + the source check + the target generation

    def _label(self) -> str:
        return f"p4d-{self.options.variant}"

    def make_state(self, prompt, seed, guidance, generator, tokenizer, budget) -> _State:
        content = _text.content_ids(tokenizer, prompt.text)
        sequence = [None] * budget["tokens"] if self.options.variant == "n" else interleave(content, budget["every_k"])
        return _State(prompt, seed, guidance, generator, sequence=sequence)

    def extra_meta(self, st: _State, budget: dict[str, Any]) -> dict[str, Any]:
        return {"variant": self.options.variant, "learnable_tokens": len(st.slots),
                "judge_score": None if st.best[1] == float("-inf") else st.best[1],
                "initial_text": st.initial_text}

    # ---------------------------------------------------------------- the loss
    def _undefended(self, ctx) -> DefendedPipeline:
        """The undefended sampler (pristine when a weight edit is applied to the shared pipeline)."""
        return DefendedPipeline(undefended_model(ctx, self.name, "its targets"), None, ctx.task)

    def _encode_sources(self, states: list[_State], undefended: DefendedPipeline) -> None:
        """The undefended encoding of each source prompt (the target side of the loss)."""
        sources = undefended.encode_prompts([st.prompt.text for st in states])
        for st, source in zip(states, sources, strict=True):
            st.source_cond = source.detach()

    def _conditioning(self, ctx, states: list[_State], table: torch.Tensor) -> torch.Tensor:
        """The defended text encoder's output for each state's laid-out tokens, the learnable positions
        carrying the projected embeddings with a straight-through gradient to the continuous ones."""
        pipe = ctx.defended.pipe
        room = _text.max_length(pipe.tokenizer) - 2
        rows = []
        for st in states:
            ids, _ = _text.layout(pipe.tokenizer, st.filled())
            row = table[torch.tensor(ids, device=table.device)].detach()
            keep = [j for j, pos in enumerate(st.slots) if pos < room]  # slots past the context are cut
            if st.embeds is not None and keep:
                hard = table[torch.tensor([st.adv[j] for j in keep], device=table.device)].detach().float()
                soft = st.embeds[keep]
                straight = soft + (hard - soft).detach()  # forward: the projected tokens; gradient: to ``embeds``
                positions = torch.tensor([1 + st.slots[j] for j in keep], device=table.device)
                row = row.index_put((positions,), straight.to(row.dtype))
            rows.append(row)
        return _text.encode_from_token_embeds(pipe.text_encoder, torch.stack(rows)).to(pipe.unet.dtype)

    def _losses(self, ctx, states: list[_State], undefended: DefendedPipeline, cond: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor, scheduler: Any) -> torch.Tensor:
        """Per prompt: mean squared difference between the defended prediction for the adversarial
        conditioning and the undefended prediction for the source prompt, on ``x0`` noised at ``t``."""
        pipe = ctx.defended.pipe
        x0 = torch.stack([st.x0 for st in states]).to(pipe.device, pipe.unet.dtype)
        noise = noise.to(pipe.device, pipe.unet.dtype)
        x_t = scheduler.scale_model_input(scheduler.add_noise(x0, noise, t.expand(len(states))), t)
        out: list[torch.Tensor | None] = [None] * len(states)
        for guidance in sorted({st.guidance for st in states}):
            idx = [i for i, st in enumerate(states) if st.guidance == guidance]
            source = torch.stack([states[i].source_cond for i in idx]).to(pipe.device, pipe.unet.dtype)
            with torch.no_grad():
                target = undefended.noise_prediction(x_t[idx], t, source,
                                                     guidance_scale=guidance if self.options.adaptive else 1.0)
            eps = self._noise_prediction(ctx, x_t[idx], t, cond[idx], guidance)
            per_prompt = (eps.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
            for j, i in enumerate(idx):
                out[i] = per_prompt[j]
        return torch.stack(out)

    # ---------------------------------------------------------------- the step
    def begin(self, ctx, states: list[_State], budget: dict[str, Any]) -> _Search:
        """Step 3: random vocabulary tokens to start (from each prompt's own generator), AdamW on them."""
        pipe = ctx.defended.pipe
        vocab = _text.searchable_token_ids(pipe.tokenizer).to(pipe.device)
        table = _text.token_embedding(pipe.text_encoder).weight.detach()
        normed = torch.nn.functional.normalize(table[vocab].float(), dim=-1)
        scheduler = self._scheduler(ctx)
        order = torch.randint(len(scheduler.timesteps), (max(1, budget["iterations"]),),
                              generator=torch.Generator().manual_seed(self.options.seed))
        undefended = self._undefended(ctx)
        self._encode_sources(states, undefended)
        for st in states:
            start = vocab[torch.randint(len(vocab), (len(st.slots),), generator=st.generator).to(vocab.device)]
            st.embeds = table[start].float().clone().requires_grad_(True)
            st.adv = _project(st.embeds, normed, vocab)
            st.initial_text = _text.decode(pipe.tokenizer, st.filled())
        optimizer = torch.optim.AdamW([st.embeds for st in states], lr=self.options.lr,
                                      weight_decay=self.options.weight_decay)
        return _Search(vocab, table, normed, scheduler, order, undefended, optimizer, pipe.tokenizer)

    def step(self, ctx, search: _Search, active: list[_State], it: int) -> None:
        """Step 4: project, the loss of the projected tokens, its gradient applied to the continuous ones."""
        search.optimizer.zero_grad(set_to_none=True)
        for st in active:
            st.adv = _project(st.embeds, search.normed, search.vocab)
        cond = self._conditioning(ctx, active, search.table)
        t = search.scheduler.timesteps[search.order[it - 1]]
        noise = torch.stack([torch.randn(st.x0.shape, generator=st.generator) for st in active])
        self._losses(ctx, active, search.undefended, cond, t, noise, search.scheduler).sum().backward()
        search.optimizer.step()

    def candidate(self, search: _Search, st: _State) -> tuple[str, list[int]]:
        st.adv = _project(st.embeds, search.normed, search.vocab)  # the tokens after this step's update
        return _text.decode(search.tokenizer, st.filled()), _text.layout(search.tokenizer, st.filled())[0]

    # ---------------------------------------------------------------- public
    def objective(self, ctx, prompts: list[Any], texts: list[str], timesteps: list[int], seed: int = 0) -> list[float]:
        """The loss this attack minimises, for each (source prompt, candidate text), averaged over
        ``timesteps`` with noise drawn from ``seed``: how a test (or a user) compares two prompts on it."""
        pipe = ctx.defended.pipe
        states = [_State(p, image_seed(p.seed, int(ctx.sampler.get("seed", 0)), p.id, 0),
                         float(p.guidance if p.guidance is not None else ctx.sampler["guidance_scale"]),
                         torch.Generator().manual_seed(seed)) for p in prompts]
        undefended = self._undefended(ctx)
        self._targets(ctx, states)
        self._encode_sources(states, undefended)
        scheduler = self._scheduler(ctx)
        cond = ctx.defended.encode_prompts(list(texts)).to(pipe.unet.dtype)
        totals = torch.zeros(len(states))
        with torch.no_grad():
            for t in timesteps:
                noise = torch.stack([torch.randn(st.x0.shape, generator=st.generator) for st in states])
                totals += self._losses(ctx, states, undefended, cond, torch.tensor(t), noise, scheduler).cpu()
        return (totals / len(timesteps)).tolist()

    def _probe_loss(self, ctx, prompt: Prompt, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                    scheduler: Any) -> torch.Tensor:
        st = _State(prompt, 0, float(ctx.sampler["guidance_scale"]), torch.Generator().manual_seed(0), x0=x0,
                    source_cond=cond[0].detach())
        noise = torch.randn((1, *x0.shape), generator=st.generator)
        return self._losses(ctx, [st], self._undefended(ctx), cond, t, noise, scheduler).sum()
