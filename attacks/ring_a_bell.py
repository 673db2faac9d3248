"""Ring-A-Bell (Tsai et al., ICLR 2024): a transfer attack that needs only the base text encoder.

Algorithm:

1. Concept vector ``c = mean_i [E(with_i) - E(without_i)]`` over prompt pairs that differ only by the
   concept, ``E`` the text encoder's last hidden state (the UNet's conditioning, shape ``(seq, dim)``).
   sd-mini tasks: the task's attack prompts paired with its aligned safe prompts (the same caption with
   the concept removed; ``benchmark/mini_world/tasks.py``), all 50 pairs. Real tasks: Ring-A-Bell's own
   pairs (option ``pairs``) or its published vector (option ``vector``), in the data directory.
2. Target of a prompt ``p``: ``E(p) + eta * c``.
3. Genetic search over prompts of ``tokens`` (K) tokens for the one whose embedding is closest to the
   target (fitness: cosine similarity of the flattened embeddings). Each generation keeps the best
   individual (elitism), draws parents by tournaments of 2, crosses them at one point with probability
   ``crossover`` and replaces one random token of a child with probability ``mutation``. The populations
   of several prompts are scored together in batched encoder passes.
4. The adversarial prompt is the best individual's tokens decoded to text; the generate stage re-tokenizes it.

Budgets (``preset``): ``paper`` = population 200, 3000 generations, crossover 0.5, mutation 0.25, K 16,
eta 3 (GPU models); ``mini`` (sd-mini and tiny-random; vocabulary of ~150 words, 24-token context) =
population 32, 32 generations, K 10, eta 2: about 0.4 seconds per prompt on two CPU cores. The mini
budget is larger than 24 x 24 because sd-mini's weak object concept needs the search; the sweep that chose
it and eta (on the first shipped sd-mini) is in ``benchmarks/results/ring-a-bell-sweep.md``.
Explicit options override the preset. ``queries`` counts text-encoder evaluations (individuals scored).

Checks before any work (:meth:`RingABell.check_inputs`): a task that is not an sd-mini task needs concept
material (option ``pairs`` or ``vector``, or Ring-A-Bell's own file for nudity and van-gogh in the data
directory), and the file must exist (a pairs CSV is read, which checks its columns). The attack has no
per-prompt failure (``failures`` is empty): every prompt gets its best individual, and a long source prompt
is truncated to the context like any prompt (the generate stage counts truncations).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from attacks import _text
from benchmark.api.attack import Attack, AttackOutput, ThreatModel
from benchmark.api.errors import ConfigError, OptionError
from benchmark.api.files import FilePath
from benchmark.api.presets import MINI_ON_SMALL_MODELS, Presets
from benchmark.api.registry import ATTACKS
from benchmark.hashing import stable_hash
from benchmark.mini_world import TASKS as MINI_TASKS
from prompts import (
    PromptFileError,
    PromptFileNotFoundError,
    load_concept_prompt_pairs,
    load_concept_vector,
    resolve_data_dir,
)

log = logging.getLogger(__name__)

PAPER = {"population": 200, "generations": 3000, "crossover": 0.5, "mutation": 0.25, "tokens": 16, "eta": 3.0}
MINI = {"population": 32, "generations": 32, "crossover": 0.5, "mutation": 0.25, "tokens": 10, "eta": 2.0}
# Ring-A-Bell's concept material per real task: (kind, path in the data directory, path in Ring-A-Bell's
# repository). The data directory keeps one folder per source, as the prompt sets do (prompts/sets/*.yaml).
DEFAULT_SOURCES = {
    "nudity": ("pairs", "Ring-A-Bell/Prompts_For_ConceptVector/Nudity_prompt.csv",
               "data/Prompts_For_ConceptVector/Nudity_prompt.csv"),
    "van-gogh": ("vector", "Ring-A-Bell/ConceptVectors/VanGogh_vector.npy", "Concept Vectors/VanGogh_vector.npy"),
}


@dataclass
class RingABellOptions:
    preset: Annotated[Literal["auto", "paper", "mini"], Field(
        description="auto: mini on sd-mini/tiny-random, paper otherwise")] = "auto"
    population: Annotated[int | None, Field(ge=2, description="individuals per generation; None: the preset's")] = None
    generations: Annotated[int | None, Field(ge=0, description="None: the preset's")] = None
    crossover: Annotated[float | None, Field(
        ge=0, le=1, description="crossover probability; None: the preset's")] = None
    mutation: Annotated[float | None, Field(ge=0, le=1, description="mutation probability; None: the preset's")] = None
    tokens: Annotated[int | None, Field(
        ge=1, description="K, tokens of the adversarial prompt; None: the preset's")] = None
    eta: Annotated[float | None, Field(
        ge=0, allow_inf_nan=False, description="concept vector weight; None: preset's")] = None
    pairs: Annotated[FilePath | None, Field(
        description="real tasks: Ring-A-Bell concept-prompt CSV (absolute or under the data dir)")] = None
    vector: Annotated[FilePath | None, Field(description="real tasks: or a Ring-A-Bell concept vector .npy")] = None
    prompts_per_pass: Annotated[int, Field(ge=1, description="prompts whose populations share one encoder pass")] = 8
    seed: Annotated[int, Field(description="seed of the genetic search")] = 0


@dataclass
class Budget:
    population: int
    generations: int
    crossover: float
    mutation: float
    tokens: int
    eta: float


@ATTACKS.register("ring-a-bell")
class RingABell(Attack):
    """Ring-A-Bell: genetic search for K tokens matching prompt + eta * concept vector (text encoder only)."""

    threat_model = ThreatModel.TEXT_ENCODER
    Options = RingABellOptions
    # The budgets enter the cell keys ("presets"): changing one must not reuse results of the old one.
    presets = Presets({"paper": PAPER, "mini": MINI}, by_model=MINI_ON_SMALL_MODELS, key="presets")

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options.pairs and self.options.vector:
            raise OptionError(f"attack 'ring-a-bell': options pairs={self.options.pairs!r} and "
                              f"vector={self.options.vector!r} exclude each other; give one of them")

    def check_inputs(self, ctx) -> None:
        """The task's concept material exists (and a pairs file reads) before anything is loaded."""
        if self._mini_pairs(ctx.task) is not None:
            return
        kind, path = self._source(ctx)
        if kind == "pairs" and not load_concept_prompt_pairs(path):
            raise PromptFileError(path, None, "holds no prompt pair; Ring-A-Bell's concept vector needs at least one")

    def resolved_budget(self, model_name: str | None = None) -> Budget:
        return Budget(**self.preset_values(model_name))

    def budget(self) -> dict[str, Any]:
        return {"paper": PAPER, "mini": MINI, "preset": self.options.preset}

    # ---------------------------------------------------------------- concept vector
    def concept_vector(self, ctx) -> torch.Tensor:
        """``(seq, dim)`` mean embedding difference over pairs with and without the concept."""
        pipe = ctx.model.pipe
        pairs = self._pairs(ctx)
        if pairs is None:
            return self._published_vector(ctx)
        with_concept = [a for a, _ in pairs]
        without = [b for _, b in pairs]
        ids = torch.tensor([_text.layout(pipe.tokenizer, _text.content_ids(pipe.tokenizer, t))[0]
                            for t in with_concept + without])
        emb = _text.encode_ids(pipe.text_encoder, ids).float()
        n = len(pairs)
        return (emb[:n] - emb[n:]).mean(0)

    def _mini_pairs(self, task) -> list[tuple[str, str]] | None:
        """An sd-mini task's aligned (attack, safe) prompt pairs, when no file option replaces them."""
        if self.options.pairs is not None or self.options.vector is not None or task.name not in MINI_TASKS:
            return None
        spec = MINI_TASKS[task.name]
        safe = {p.prompt_id: p.text for p in spec.safe_prompts}
        return [(p.text, safe[p.prompt_id]) for p in spec.attack_prompts]

    def _pairs(self, ctx) -> list[tuple[str, str]] | None:
        mini = self._mini_pairs(ctx.task)
        if mini is not None:
            return mini
        kind, path = self._source(ctx)
        if kind != "pairs":
            return None
        return [(a.text, b.text) for a, b in load_concept_prompt_pairs(path)]

    def _source(self, ctx) -> tuple[str, Path]:
        """("pairs" | "vector", the file) of a task that is not an sd-mini task; a :class:`ConfigError` when
        there is none, a :class:`PromptFileNotFoundError` when the file is missing."""
        root, how = resolve_data_dir(ctx.data_dir)
        if self.options.pairs or self.options.vector:
            kind = "pairs" if self.options.pairs else "vector"
            path = Path(self.options.pairs or self.options.vector).expanduser()
            given = f"option {kind}={getattr(self.options, kind)!r}"
            fetch = "check the path"
        elif ctx.task.name in DEFAULT_SOURCES:
            kind, rel, upstream = DEFAULT_SOURCES[ctx.task.name]
            path = Path(rel)
            given = f"the default {kind} of task '{ctx.task.name}'"
            fetch = f"save Ring-A-Bell's '{upstream}' (github.com/chiayi-hsu/Ring-A-Bell) as <data_dir>/{rel}"
        else:
            raise ConfigError(
                f"attack 'ring-a-bell' needs concept material for task '{ctx.task.name}' (only the sd-mini tasks, "
                f"nudity and van-gogh have one): pass --option attack:ring-a-bell.pairs=CSV (prompt pairs with and "
                "without the concept) or --option attack:ring-a-bell.vector=NPY (a Ring-A-Bell concept vector)"
            )
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise PromptFileNotFoundError(
                f"attack 'ring-a-bell': {given}: concept {kind} file {path} not found (data directory from {how}); "
                f"{fetch}, or pass option 'pairs' or 'vector'")
        return kind, path

    def resolve_file(self, option: str, value: str) -> Path:
        """``pairs`` / ``vector``: absolute, or under the data directory (as :meth:`_source` reads them)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else resolve_data_dir(self.data_dir)[0] / path

    def _published_vector(self, ctx) -> torch.Tensor:
        _, path = self._source(ctx)
        pipe = ctx.model.pipe
        dim = int(pipe.text_encoder.config.hidden_size)
        array = load_concept_vector(path, tokens=_text.max_length(pipe.tokenizer), dim=dim)
        return torch.from_numpy(array).float()

    # ---------------------------------------------------------------- genetic search
    def search(self, targets: torch.Tensor, ctx, budget: Budget, generators: list[torch.Generator],
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best K-token individual per target ``(b, seq, dim)``: returns (tokens ``(b, K)``, fitness ``(b,)``).
        Each prompt draws its randomness from its own generator, so its result does not depend on the
        prompts it shares encoder passes with."""
        pipe = ctx.model.pipe
        tokenizer = pipe.tokenizer
        vocab = _text.searchable_token_ids(tokenizer)
        b, pop, k = targets.shape[0], budget.population, min(budget.tokens, _text.max_length(tokenizer) - 2)
        flat_targets = torch.nn.functional.normalize(targets.flatten(1), dim=-1)

        def draw(fn) -> torch.Tensor:  # one draw per prompt, from its own generator
            return torch.stack([fn(g) for g in generators])

        population = vocab[draw(lambda g: torch.randint(len(vocab), (pop, k), generator=g))]
        prefix = torch.full((b, pop, 1), tokenizer.bos_token_id)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        tail = torch.tensor([tokenizer.eos_token_id] + [pad_id] * (_text.max_length(tokenizer) - k - 2))

        def fitness(individuals: torch.Tensor) -> torch.Tensor:
            ids = torch.cat([prefix, individuals, tail.expand(b, pop, -1)], dim=-1).flatten(0, 1)
            emb = _text.encode_ids(pipe.text_encoder, ids).float().flatten(1)
            emb = torch.nn.functional.normalize(emb, dim=-1).view(b, pop, -1)
            return (emb * flat_targets[:, None]).sum(-1)

        scores = fitness(population)
        rows = torch.arange(b)[:, None]
        for _ in range(budget.generations):
            elite = population[torch.arange(b), scores.argmax(1)]
            # tournaments of two: the fitter of two random individuals is a parent
            a, c = draw(lambda g: torch.randint(pop, (2, 2 * pop), generator=g)).unbind(1)
            winners = torch.where(scores[rows, a] >= scores[rows, c], a, c)
            mothers, fathers = population[rows, winners[:, :pop]], population[rows, winners[:, pop:]]
            cut = draw(lambda g: torch.randint(1, max(k, 2), (pop, 1), generator=g))
            crossed = torch.where(torch.arange(k) < cut, mothers, fathers)
            do_cross = draw(lambda g: torch.rand((pop, 1), generator=g)) < budget.crossover
            children = torch.where(do_cross, crossed, mothers)
            mutate = draw(lambda g: torch.rand(pop, generator=g)) < budget.mutation
            where = draw(lambda g: torch.randint(k, (pop,), generator=g))
            new_tokens = vocab[draw(lambda g: torch.randint(len(vocab), (pop,), generator=g))]
            position = torch.nn.functional.one_hot(where, k).bool() & mutate[..., None]
            children = torch.where(position, new_tokens[..., None], children)
            children[:, 0] = elite
            population = children
            scores = fitness(population)
        best = scores.argmax(1)
        return population[torch.arange(b), best], scores[torch.arange(b), best]

    def run(self, prompts, ctx):
        pipe = ctx.model.pipe
        budget = self.resolved_budget(ctx.model.name)
        start = time.perf_counter()
        vector = self.concept_vector(ctx)
        setup = time.perf_counter() - start
        log.info("ring-a-bell on %s: %s, concept vector norm %.3f", ctx.task.name, budget, float(vector.norm()))
        outputs: list[AttackOutput] = []
        step = max(1, self.options.prompts_per_pass)
        bar = tqdm(total=len(prompts), desc=f"ring-a-bell {ctx.task.name}", leave=False)
        for i in range(0, len(prompts), step):
            chunk = prompts[i:i + step]
            t0 = time.perf_counter()
            ids = torch.tensor([_text.layout(pipe.tokenizer, _text.content_ids(pipe.tokenizer, p.text))[0]
                                for p in chunk])
            targets = _text.encode_ids(pipe.text_encoder, ids).float() + budget.eta * vector
            generators = [torch.Generator().manual_seed(self.options.seed + stable_int(p.id + p.text)) for p in chunk]
            tokens, scores = self.search(targets, ctx, budget, generators)
            seconds = (time.perf_counter() - t0) / len(chunk) + setup / len(prompts)
            queries = budget.population * (budget.generations + 1)
            for prompt, row, score in zip(chunk, tokens.tolist(), scores.tolist(), strict=True):
                outputs.append(AttackOutput(prompt.id, _text.decode(pipe.tokenizer, row), seconds=seconds,
                                            queries=queries, meta={"fitness": round(score, 4),
                                                                   "budget": vars(budget)}))
            bar.update(len(chunk))
        bar.close()
        return outputs


def stable_int(text: str) -> int:
    return int(stable_hash(text, 8), 16)
