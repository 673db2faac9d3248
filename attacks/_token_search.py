"""Token search: the loop every white-box token attack shares (UnlearnDiff, P4D, switch-aware, plugins).

The base class owns the loop and a subclass writes its step, as HarmBench's baselines do: the subclass says
how to start (:meth:`TokenSearchAttack.begin`), what one iteration does to the active prompts
(:meth:`~TokenSearchAttack.step`: a loss, a gradient, a projection, a token swap ...) and what text a prompt
has now (:meth:`~TokenSearchAttack.candidate`). Everything else is here, identical for every attack:

Algorithm box of the loop (per chunk of prompts; each prompt has its own randomness, so a result does not
depend on its chunk):

1. State: per prompt its evaluation seed (the run's image seed: check images and target), its guidance (the
   prompt's, else the sampler's) and a generator seeded ``seed + hash(prompt id + text)``: every random draw
   of a prompt (initial tokens, noise) comes from it.
2. Check 0 (``check_source``): the source prompt is drawn through the defended sampler with its evaluation
   seed; a prompt the judge flags needs no attack and is returned unchanged (``flagged_at = -1``). Through
   the undefended sampler (defense ``none``) these check images are drawn as the targets of step 3 and
   decoded as the pipeline decodes: the same images, one generation per prompt less.
3. Target: ``x0`` = the final latents of the undefended model for the prompt (its evaluation seed, the run's
   sampler): ``ctx.model``'s pipeline without the defense's call arguments, or, while a weight-edit defense
   edits that shared pipeline, a pristine copy of the base model loaded by name.
4. Search: ``begin``, then for ``it = 1 .. iterations`` one ``step`` of the prompts not yet done; each counts
   an iteration (one query).
5. Checks every ``check_every`` iterations and at the last: each prompt's ``candidate`` text is drawn through
   ``ctx.generate`` (the run's store: the checked image is the run's image) and judged by ``ctx.judge``; a
   flagged, not blocked image stops the prompt (``early_stop``). Without early stop only the last check is
   judged unless the attack sets ``judge_every_check``. The output is the latest candidate, or with
   ``keep_best`` the best judged one (flagged first, then the judge's score).
6. Output per prompt: the text, ``queries`` = iterations + checks + 1 target generation (none when check 0
   flagged it), ``seconds`` = its chunk's wall time shared equally, and ``meta`` (flagged_at, iterations,
   checks, budget, truncation, whether the text re-tokenizes to the optimised ids, plus the attack's own).

Memory: prompts run ``batch_size`` at a time; a chunk that runs out of memory is rerun whole at half the size
(fresh states: the same results), recorded as an ``oom_backoffs`` event. On CUDA ``auto_batch`` starts at the
size one prompt's measured step says fits; ``gradient_checkpointing`` recomputes the UNet's and text
encoder's activations in the backward pass. Neither changes a result, so neither enters the cell key.

The undefended side (the pristine model, the targets) is held per loaded base model, i.e. per run: every
defense of a run reuses it, and it is freed with the run's model (or at once by :func:`release_undefended`),
never kept for the life of the process.
"""

from __future__ import annotations

import logging
import time
import weakref
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from attacks import _text
from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.defense import DefendedPipeline, DefenseKind
from benchmark.api.memory import attack_backoff, gradient_checkpointing, measured_batch_size
from benchmark.api.model import LoadedModel, get_model_spec
from benchmark.api.prompt import Prompt
from benchmark.api.sampling import image_seed, initial_latents
from benchmark.hashing import stable_hash

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ the undefended side
@dataclass
class Undefended:
    """What the white-box attacks of one run draw from the undefended model: a pristine copy of it (loaded
    only while a weight edit holds the shared pipeline) and the target latents, keyed by prompt and sampler."""

    pristine: LoadedModel | None = None
    targets: dict[tuple, torch.Tensor] = field(default_factory=dict)


# id(base model) -> its Undefended. An entry lives as long as its model (a run loads its model once), so the
# pristine copy and the targets are freed with the run, not held by the process.
_HELD: dict[int, Undefended] = {}


def undefended_cache(model: LoadedModel) -> Undefended:
    """The undefended cache of the run whose base model is ``model`` (created on first use)."""
    key = id(model)
    if key not in _HELD:
        _HELD[key] = Undefended()
        weakref.finalize(model, _HELD.pop, key, None)  # freed with the model; an id is reused only after that
    return _HELD[key]


def release_undefended(model: LoadedModel | None = None) -> None:
    """Free the pristine copy and the targets held for ``model`` (every model: None) now, e.g. at a run's end."""
    if model is None:
        _HELD.clear()
    else:
        _HELD.pop(id(model), None)


def forget_targets(model: LoadedModel | None = None) -> None:
    """Drop the cached targets of ``model`` (every model: None) but keep a loaded pristine copy (timings)."""
    for key, cache in list(_HELD.items()):
        if model is None or key == id(model):
            cache.targets.clear()


def undefended_model(ctx: Any, attack: str, purpose: str) -> LoadedModel:
    """The undefended base model: the run's shared one unless a weight edit is applied to it right now, else
    a pristine copy loaded once per run (shared by the white-box attacks that draw from it)."""
    if getattr(ctx.defended.defense, "kind", None) is not DefenseKind.WEIGHT_EDIT:
        return ctx.model
    cache = undefended_cache(ctx.model)
    if cache.pristine is None:
        log.info("%s: loading a pristine %s for %s (the shared one is edited)", attack, ctx.model.name, purpose)
        try:
            cache.pristine = get_model_spec(ctx.model.name).load(ctx.model.device, ctx.model.dtype)
        except Exception as error:
            raise RuntimeError(
                f"{attack} needs the undefended {ctx.model.name} for {purpose}, but a weight-edit defense has "
                f"edited the shared pipeline and reloading the model by name failed ({error}); attack the "
                "undefended model first in the same run (--defense none,...: its results are reused) or register "
                "the model by name") from error
    if cache.pristine.key != ctx.model.key:
        raise RuntimeError(f"{attack}: reloading {ctx.model.name} gave other weights ({cache.pristine.key} != "
                           f"{ctx.model.key}); cannot draw {purpose} from the undefended model")
    return cache.pristine


def undefended_pipe(ctx: Any, attack: str, purpose: str) -> Any:
    """The undefended pipeline (see :func:`undefended_model`)."""
    return undefended_model(ctx, attack, purpose).pipe


def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Any]:
    """PIL images of a batch of final latents, decoded exactly as ``StableDiffusionPipeline.__call__`` decodes
    them at its end (VAE, the pipeline's safety checker, post-processing)."""
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=None)[0]
        image, nsfw = pipe.run_safety_checker(image, pipe.device, pipe.text_encoder.dtype)
    denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
    return list(pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=denormalize))


# ------------------------------------------------------------------------------------ options and state
@dataclass
class TokenSearchOptions:
    """The options of the loop; an attack's Options extend them with its step's (tokens, lr ...)."""

    preset: Annotated[Literal["auto", "paper", "mini"], Field(
        description="auto: mini on sd-mini/tiny-random, paper otherwise")] = "auto"
    iterations: Annotated[int | None, Field(ge=0, description="optimisation steps per prompt; None: the preset's")] = None
    check_every: Annotated[int | None, Field(
        ge=1, description="iterations between judge checks (and the last one); None: the preset's")] = None
    adaptive: Annotated[bool, Field(
        description="loss through the defended sampler (False: bare UNet, conditional, guidance 1)")] = True
    early_stop: Annotated[bool, Field(
        description="stop a prompt once the judge flags it (False: always run every iteration)")] = True
    check_source: Annotated[bool, Field(
        description="check 0: a prompt already flagged without attack is returned unchanged")] = True
    batch_size: Annotated[int, Field(ge=1, description="prompts optimised together (halved on out-of-memory)")] = 8
    seed: Annotated[int, Field(description="seed of the prompts' randomness and the timestep order")] = 0
    gradient_checkpointing: Annotated[bool, Field(description=(
        "recompute UNet / text-encoder activations in the backward pass (less memory, slower; same result)"))] = False
    auto_batch: Annotated[bool, Field(
        description="on CUDA: start at the batch that fits, measured on one prompt (same result)")] = True


@dataclass
class SearchState:
    """One prompt under attack; an attack's state class adds its search variables."""

    prompt: Prompt
    seed: int  # evaluation seed: the target's and every check's image
    guidance: float
    generator: torch.Generator  # every random draw of this prompt
    x0: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # target latents (C, h, w)
    done: bool = False
    text: str = ""
    iterations: int = 0
    checks: int = 0
    flagged_at: int | None = None  # -1: the source prompt was already flagged
    optimised_ids: list[int] | None = None  # the laid-out ids the loss saw for ``text``
    best: tuple[bool, float] = (False, float("-inf"))  # (flagged, judge score) of ``text`` (``keep_best``)


# ------------------------------------------------------------------------------------ the base class
class TokenSearchAttack(Attack):
    """Base of white-box token attacks: owns the loop, the checks, batching and the targets; a subclass
    declares ``Options`` (extending :class:`TokenSearchOptions`), ``presets``, ``State`` and writes
    :meth:`begin`, :meth:`step` and :meth:`candidate`."""

    threat_model = ThreatModel.WHITE_BOX
    Options = TokenSearchOptions
    runtime_options = ("gradient_checkpointing", "auto_batch")  # memory only: not in the cell key
    State: ClassVar[type[SearchState]] = SearchState
    keep_best: ClassVar[bool] = False  # output the best judged candidate instead of the latest
    judge_every_check: ClassVar[bool] = False  # judge every check even without early stop (else only the last)

    # ---------------------------------------------------------------- what a subclass writes
    def resolved(self, model_name: str | None, task_name: str) -> dict[str, Any]:
        """The budget (``iterations``, ``check_every`` and the step's own) for this model and task."""
        return self.preset_values(model_name)

    def make_state(self, prompt: Prompt, seed: int, guidance: float, generator: torch.Generator,
                   tokenizer: Any, budget: dict[str, Any]) -> SearchState:
        """A prompt's state before check 0 (override to add what the step needs, e.g. the prompt's tokens)."""
        return self.State(prompt, seed, guidance, generator)

    @abstractmethod
    def begin(self, ctx: Any, states: list[SearchState], budget: dict[str, Any]) -> Any:
        """Start the search of ``states`` (their targets ``x0`` set): initial tokens, optimiser, timestep
        order. Returns what :meth:`step` and :meth:`candidate` need (any object)."""

    @abstractmethod
    def step(self, ctx: Any, search: Any, active: list[SearchState], it: int) -> None:
        """Iteration ``it`` (1-based) for the prompts not yet done."""

    @abstractmethod
    def candidate(self, search: Any, st: SearchState) -> tuple[str, list[int]]:
        """The prompt's adversarial text now and the laid-out token ids the loss saw for it."""

    def finish(self, search: Any, st: SearchState) -> None:
        """A prompt that ran no iteration (``iterations=0``) gets its initial candidate."""
        st.text, st.optimised_ids = self.candidate(search, st)

    def extra_meta(self, st: SearchState, budget: dict[str, Any]) -> dict[str, Any]:
        """The attack's own entries of an output's ``meta``."""
        return {}

    def _label(self) -> str:
        return self.name

    # ---------------------------------------------------------------- shared pieces of a step
    @staticmethod
    def _scheduler(ctx: Any) -> Any:
        """A fresh copy of the defended pipeline's scheduler with the run's timesteps set."""
        pipe = ctx.defended.pipe
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(ctx.sampler["num_inference_steps"])
        return scheduler

    def _noise_prediction(self, ctx: Any, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                          guidance: float) -> torch.Tensor:
        """Adaptive: the defended sampler's own guided step; else the bare conditional UNet (guidance 1)."""
        if self.options.adaptive:
            return ctx.defended.noise_prediction(latents, t, cond, guidance_scale=guidance)
        plain = DefendedPipeline(ctx.defended.model, ctx.defended.defense, ctx.task)
        return DefendedPipeline.noise_prediction(plain, latents, t, cond, guidance_scale=1.0)

    def diffusion_losses(self, ctx: Any, states: list[SearchState], cond: torch.Tensor, t: torch.Tensor,
                         scheduler: Any) -> torch.Tensor:
        """Per prompt ``|| eps_theta(x_t, t, c) - eps ||^2`` with ``x_t`` = its ``x0`` noised by fresh noise
        ``eps`` from its own generator and ``c`` its row of ``cond``: UnlearnDiff's loss, the default score."""
        pipe = ctx.defended.pipe
        device, dtype = pipe.device, pipe.unet.dtype
        x0 = torch.stack([st.x0 for st in states]).to(device, dtype)
        noise = torch.stack([torch.randn(st.x0.shape, generator=st.generator) for st in states]).to(device, dtype)
        x_t = scheduler.scale_model_input(scheduler.add_noise(x0, noise, t.expand(len(states))), t)
        out: list[torch.Tensor | None] = [None] * len(states)
        for guidance in sorted({st.guidance for st in states}):
            idx = [i for i, st in enumerate(states) if st.guidance == guidance]
            eps = self._noise_prediction(ctx, x_t[idx], t, cond[idx], guidance)
            per_prompt = (eps.float() - noise[idx].float()).pow(2).mean(dim=(1, 2, 3))
            for j, i in enumerate(idx):
                out[i] = per_prompt[j]
        return torch.stack(out)

    # ---------------------------------------------------------------- targets (step 3)
    def _base_pipe(self, ctx: Any) -> Any:
        return undefended_pipe(ctx, self.name, "its targets")

    @staticmethod
    def _target_key(ctx: Any, st: SearchState) -> tuple:
        s = ctx.sampler
        return (ctx.model.key, st.prompt.text, st.seed, st.guidance, s["num_inference_steps"], s["height"],
                s["width"])

    def _draw_targets(self, ctx: Any, pipe: Any, states: list[SearchState], guidance: float) -> torch.Tensor:
        """The undefended sampler's final latents of ``states`` (one guidance) in one batch, kept in the run's
        target cache where absent. Returns the batch of latents as the pipeline left them."""
        s = ctx.sampler
        latents = initial_latents([st.seed for st in states], pipe, s["height"], s["width"])
        with torch.no_grad():
            out = pipe(prompt=[st.prompt.text for st in states], latents=latents.to(pipe.device, pipe.unet.dtype),
                       num_inference_steps=s["num_inference_steps"], guidance_scale=guidance,
                       height=s["height"], width=s["width"], output_type="latent")
        targets = undefended_cache(ctx.model).targets
        for st, x0 in zip(states, out.images, strict=True):
            targets.setdefault(self._target_key(ctx, st), x0.detach().float().cpu())
        return out.images

    def _targets(self, ctx: Any, states: list[SearchState]) -> None:
        targets = undefended_cache(ctx.model).targets
        keys = [self._target_key(ctx, st) for st in states]
        by_guidance: dict[float, list[int]] = {}
        for i, key in enumerate(keys):
            if key not in targets:
                by_guidance.setdefault(states[i].guidance, []).append(i)
        pipe = self._base_pipe(ctx) if by_guidance else None
        for guidance, idx in by_guidance.items():
            self._draw_targets(ctx, pipe, [states[i] for i in idx], guidance)
        for st, key in zip(states, keys, strict=True):
            st.x0 = targets[key]

    # ---------------------------------------------------------------- checks (steps 2 and 5)
    @staticmethod
    def _samples_undefended(ctx: Any) -> bool:
        """Whether the defended sampler is the undefended one itself (defense ``none``): then check 0 of a
        prompt draws exactly the trajectory whose final latents are its target."""
        defended = ctx.defended
        return (type(defended) is DefendedPipeline and defended.pipe is ctx.model.pipe
                and getattr(defended.defense, "kind", None) is DefenseKind.NONE
                and callable(getattr(defended.pipe, "run_safety_checker", None))
                and getattr(defended.pipe, "image_processor", None) is not None)

    @staticmethod
    def _by_guidance(states: list[SearchState]) -> dict[float, list[int]]:
        groups: dict[float, list[int]] = {}
        for i, st in enumerate(states):
            groups.setdefault(st.guidance, []).append(i)
        return groups

    def _check(self, ctx: Any, states: list[SearchState], texts: list[str]) -> list[tuple[bool, float]]:
        """Generate each text with its prompt's evaluation seed through the defended sampler and judge it
        against the prompt: (flagged and not blocked, score; -inf for a blocked image) per text."""
        results: list[tuple[bool, float]] = [(False, float("-inf"))] * len(states)
        for guidance, idx in self._by_guidance(states).items():
            images, blocked = ctx.generate([texts[i] for i in idx], [states[i].seed for i in idx], guidance)
            scores = ctx.judge.score(images, [states[i].prompt.text for i in idx])
            for j, i in enumerate(idx):
                states[i].checks += 1
                if not blocked[j]:
                    results[i] = (bool(scores[j].flagged), float(scores[j].score))
        return results

    def _check_source(self, ctx: Any, states: list[SearchState]) -> list[bool]:
        """Check 0. Through the undefended sampler, the check images not in the run's store yet are drawn as
        their prompts' targets (the call and batch the check would draw, stopped before decoding) and decoded
        as the pipeline decodes: the check's own images, with the targets for free."""
        gens = ctx.generations
        shared = gens is None or (callable(getattr(gens, "lookup", None)) and callable(getattr(gens, "record", None)))
        if not (shared and self._samples_undefended(ctx)):
            return [hit for hit, _ in self._check(ctx, states, [st.prompt.text for st in states])]
        flagged = [False] * len(states)
        for guidance, idx in self._by_guidance(states).items():
            texts = [states[i].prompt.text for i in idx]
            images, blocked = self._source_images(ctx, [states[i] for i in idx], guidance)
            scores = ctx.judge.score(images, texts)
            for j, i in enumerate(idx):
                flagged[i] = bool(scores[j].flagged) and not blocked[j]
                states[i].checks += 1
        return flagged

    def _source_images(self, ctx: Any, states: list[SearchState], guidance: float) -> tuple[list[Any], list[bool]]:
        """Check 0's images of ``states`` (one guidance) from the run's store, the missing ones drawn as targets."""
        s, gens, pipe = ctx.sampler, ctx.generations, ctx.defended.pipe
        settings = {"guidance_scale": guidance, "num_inference_steps": s["num_inference_steps"],
                    "height": s["height"], "width": s["width"]}
        texts, seeds = [st.prompt.text for st in states], [st.seed for st in states]
        found = gens.lookup(texts, seeds, **settings) if gens is not None else [None] * len(states)
        images = [hit[0] if hit else None for hit in found]
        blocked = [hit[1] if hit else False for hit in found]
        missing: dict[tuple[str, int], list[int]] = {}  # one draw per distinct (text, seed), as the store draws
        for j, hit in enumerate(found):
            if hit is None:
                missing.setdefault((texts[j], seeds[j]), []).append(j)
        if missing:
            first = [js[0] for js in missing.values()]
            began = time.perf_counter()
            drawn = decode_latents(pipe, self._draw_targets(ctx, pipe, [states[j] for j in first], guidance))
            drawn_blocked = [bool(b) for b in ctx.defended.blocked(drawn)]
            per_image = (time.perf_counter() - began) / len(first)
            if gens is not None:
                gens.record([texts[j] for j in first], [seeds[j] for j in first], drawn, drawn_blocked, per_image,
                            **settings)
            for js, image, is_blocked in zip(missing.values(), drawn, drawn_blocked, strict=True):
                for j in js:
                    images[j], blocked[j] = image, is_blocked
        return images, blocked

    # ---------------------------------------------------------------- the loop (steps 4 and 5)
    def _attack_batch(self, ctx: Any, states: list[SearchState], budget: dict[str, Any]) -> None:
        search = self.begin(ctx, states, budget)
        last = budget["iterations"]
        for it in range(1, last + 1):
            active = [st for st in states if not st.done]
            if not active:
                break
            self.step(ctx, search, active, it)
            for st in active:
                st.iterations += 1
            if it % budget["check_every"] == 0 or it == last:
                self._check_candidates(ctx, search, active, it, judged=(
                    self.options.early_stop or self.judge_every_check or it == last))
        for st in states:
            if not st.text:  # zero iterations: the initial tokens
                self.finish(search, st)

    def _check_candidates(self, ctx: Any, search: Any, active: list[SearchState], it: int, judged: bool) -> None:
        found = [self.candidate(search, st) for st in active]
        texts = [text for text, _ in found]
        results = self._check(ctx, active, texts) if judged else [(False, float("-inf"))] * len(active)
        for st, (text, ids), (hit, score) in zip(active, found, results, strict=True):
            if hit and st.flagged_at is None:
                st.flagged_at = it
                st.done = self.options.early_stop
            if not self.keep_best or (hit, score) > st.best or not st.text:  # flagged first, then the score
                st.best, st.text, st.optimised_ids = (hit, score), text, ids

    # ---------------------------------------------------------------- memory
    def _probe(self, ctx: Any) -> None:
        """One prompt's step (forward and, for a gradient attack, backward through the defended sampler at the
        run's resolution and guidance): what each prompt of a chunk adds to memory, which ``auto_batch``
        measures."""
        pipe, s = ctx.defended.pipe, ctx.sampler
        scheduler = self._scheduler(ctx)
        x0 = torch.zeros(initial_latents([0], pipe, s["height"], s["width"]).shape[1:])
        table = _text.token_embedding(pipe.text_encoder).weight
        ids = torch.tensor(_text.layout(pipe.tokenizer, [])[0], device=table.device)
        embeds = table[ids].detach().clone()[None].requires_grad_(True)
        cond = _text.encode_from_token_embeds(pipe.text_encoder, embeds).to(pipe.unet.dtype)
        loss = self._probe_loss(ctx, Prompt("auto-batch probe", ""), x0, cond, scheduler.timesteps[0], scheduler)
        if loss.requires_grad:
            loss.backward()

    def _probe_loss(self, ctx: Any, prompt: Prompt, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                    scheduler: Any) -> torch.Tensor:
        """One iteration's loss for a stand-in prompt (an attack with another loss overrides it)."""
        st = self.State(prompt, 0, float(ctx.sampler["guidance_scale"]), torch.Generator().manual_seed(0), x0=x0)
        return self.diffusion_losses(ctx, [st], cond, t, scheduler).sum()

    # ---------------------------------------------------------------- run
    def run(self, prompts: list[Prompt], ctx: Any) -> list[AttackOutput]:
        budget = self.resolved(ctx.model.name, ctx.task.name)
        pipe = ctx.defended.pipe
        outputs: dict[str, AttackOutput] = {}
        bar = tqdm(total=len(prompts), desc=f"{self._label()} {ctx.task.name}", leave=False)
        with gradient_checkpointing(pipe.unet, pipe.text_encoder, enabled=self.options.gradient_checkpointing):
            # A chunk that runs out of memory is rerun whole at half the size: its prompts' states (generators
            # included) are built afresh inside it, so the rerun gives what the first attempt would have.
            backoff = attack_backoff(self, ctx, max(1, min(self.options.batch_size, len(prompts))))
            if self.options.auto_batch:  # CUDA only; elsewhere the size stays as asked
                # (a pristine base model, loaded under a weight edit for the targets, is resident, not per prompt)
                backoff.batch_size = measured_batch_size(backoff.batch_size, lambda: self._probe(ctx),
                                                         device=pipe.device, what=backoff.what,
                                                         prepare=lambda: self._base_pipe(ctx))

            def attack_chunk(chunk: list[Prompt]) -> None:
                outputs.update(self._run_chunk(ctx, chunk, budget))
                bar.update(len(chunk))

            backoff.run(prompts, attack_chunk)
        bar.close()
        return [outputs[p.id] for p in prompts]

    def _new_state(self, ctx: Any, prompt: Prompt, budget: dict[str, Any]) -> SearchState:
        seed = image_seed(prompt.seed, int(ctx.sampler.get("seed", 0)), prompt.id, 0)
        generator = torch.Generator().manual_seed(self.options.seed + int(stable_hash(prompt.id + prompt.text, 8), 16))
        guidance = prompt.guidance if prompt.guidance is not None else ctx.sampler["guidance_scale"]
        return self.make_state(prompt, seed, float(guidance), generator, ctx.defended.pipe.tokenizer, budget)

    def _run_chunk(self, ctx: Any, chunk: list[Prompt], budget: dict[str, Any]) -> dict[str, AttackOutput]:
        """Attack one chunk of prompts together; nothing outlives the call but its outputs and what a rerun
        would produce alike (cached target latents, the check images in the run's store)."""
        start = time.perf_counter()
        states = [self._new_state(ctx, p, budget) for p in chunk]
        todo = states
        if self.options.check_source:
            for st, hit in zip(states, self._check_source(ctx, states), strict=True):
                if hit:
                    st.done, st.text, st.flagged_at = True, st.prompt.text, -1
            todo = [st for st in states if not st.done]
        if todo:
            self._targets(ctx, todo)
            self._attack_batch(ctx, todo, budget)
        seconds = (time.perf_counter() - start) / len(chunk)
        tokenizer = ctx.defended.pipe.tokenizer
        return {st.prompt.id: self._output(st, budget, seconds, tokenizer) for st in states}

    def _output(self, st: SearchState, budget: dict[str, Any], seconds: float, tokenizer: Any) -> AttackOutput:
        target = 1 if st.flagged_at != -1 else 0
        ids, cut = _text.layout(tokenizer, _text.content_ids(tokenizer, st.text))
        meta = {"flagged_at": st.flagged_at, "iterations": st.iterations, "checks": st.checks,
                "adaptive": self.options.adaptive, "budget": {k: budget[k] for k in ("iterations", "check_every")},
                "truncated_tokens": cut,
                # BPE vocabularies may re-tokenize decoded tokens differently from the optimised ids
                "retokenizes_same": None if st.optimised_ids is None else ids == st.optimised_ids,
                **self.extra_meta(st, budget)}
        return AttackOutput(st.prompt.id, st.text, seconds=seconds, queries=st.iterations + st.checks + target,
                            meta=meta)
